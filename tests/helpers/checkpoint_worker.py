"""One process of a multi-process checkpoint job on localhost CPU (used by test_object_store).

Saves a state of N_ARRAYS arrays (sharded across every process's devices, and
replicated) at steps 1..N_SAVES with mode_jax's Checkpointer (asynchronous
saves, as training does), then restores the last two steps on another layout
and checks every value this process holds against numpy. Prints "restored"
when all matched; a CheckpointError ends the job as launch.py does
(distributed.abort with `error: ...`).

Environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID and the
object-store variables of tests/helpers/stores.py; argv: checkpoint directory.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from mode_jax import distributed  # noqa: E402
from mode_jax import checkpoint as ckpt_lib  # noqa: E402

N_ARRAYS = 40   # well over the handful a failing emulator lets through
N_SAVES = 3


def expected(step: int) -> dict:
  """The state at `step`: arrays of a few shapes, each value unique to (array, step)."""
  out = {}
  for i in range(N_ARRAYS):
    shape = [(8, 6), (16,), (4, 4, 2)][i % 3]
    out[f"a{i:02d}"] = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
                        + 1000 * i + 0.5 * step)
  return {"params": out, "step": np.int32(step)}


def layout(mesh, sharded_axis: str):
  """Shardings: the first axis split over `sharded_axis` where it divides, else replicated."""
  def one(x):
    if np.ndim(x) and x.shape[0] % mesh.shape[sharded_axis] == 0:
      return NamedSharding(mesh, P(sharded_axis))
    return NamedSharding(mesh, P())
  return one


def main():
  distributed.initialize(None)
  directory = sys.argv[1]
  devices = np.asarray(jax.devices())
  save_mesh = jax.sharding.Mesh(devices.reshape(-1), ("d",))          # 4 shards
  load_mesh = jax.sharding.Mesh(devices.reshape(2, -1), ("x", "y"))   # another layout
  ck = ckpt_lib.Checkpointer(directory, keep=2)
  try:
    for step in range(1, N_SAVES + 1):
      host = expected(step)
      shard = layout(save_mesh, "d")
      state = jax.tree.map(lambda x: jax.make_array_from_callback(
          np.shape(x), shard(x), lambda idx, x=x: np.asarray(x)[idx]), host)
      ck.save(step, state, {"step": step}, force=True)
    ck.close()
  except ckpt_lib.CheckpointError as e:
    distributed.abort(f"error: {e}")

  ck = ckpt_lib.Checkpointer(directory)
  assert ck.all_steps() == [N_SAVES - 1, N_SAVES], ck.all_steps()
  for step in ck.all_steps():
    host = expected(step)
    shard = layout(load_mesh, "x")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                           sharding=shard(x)), host)
    state, meta = ck.restore(abstract, step)
    assert meta == {"step": step}, meta
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(host)):
      for s in got.addressable_shards:
        np.testing.assert_array_equal(np.asarray(s.data), np.asarray(want)[s.index])
  ck.close()
  print("restored", flush=True)


if __name__ == "__main__":
  main()
