"""One process of a multi-process training job on localhost CPU (used by test_distributed).

Environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (read
by mode_jax.distributed.initialize, called first, as launch.py does), plus
argv: run_dir out.npz.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ.get("LOCAL_DEVICES", "2")))

import numpy as np  # noqa: E402

from mode_jax import distributed  # noqa: E402
from mode_jax.train import config as config_lib  # noqa: E402
from mode_jax.train import trainer  # noqa: E402


class GlobalSynthetic:
  """The same global batch in every process; each process keeps its own rows."""

  def __init__(self, config, mesh=None):
    self.cfg, self.pos = config, 0

  def __next__(self):
    c = self.cfg
    rng = np.random.default_rng(7 + self.pos)
    s, L, V = c.model.image_size, c.model.context_length, c.model.vocab_size
    img = rng.normal(size=(c.batch_size, s, s, 3)).astype(np.float32)
    tok = rng.integers(1, V - 1, size=(c.batch_size, L)).astype(np.int32)
    tok[:, -1] = V - 1
    self.pos += 1
    n = c.batch_size // jax.process_count()
    rows = slice(jax.process_index() * n, (jax.process_index() + 1) * n)
    return {"image": img[rows], "tokens": tok[rows]}

  def get_state(self):
    return {"pos": self.pos}

  def set_state(self, s):
    self.pos = s["pos"]


def config():
  c = config_lib.train_config()
  c.model.variant, c.model.image_size = "mu/8", 16
  c.model.vocab_size, c.model.context_length = 64, 8
  c.model.vision.update(width=32, depth=1, heads=2)
  c.model.text.update(width=32, depth=1, heads=2)
  c.model.embed_dim = 16
  # Adam eps 1e-3: the attention key bias has an exactly-zero true gradient, and a
  # tiny eps turns float noise there into +-lr updates on any device layout.
  c.optim.lr, c.optim.warmup_steps, c.optim.eps = 1e-3, 1, 1e-3
  c.batch_size, c.schedule_steps, c.num_steps = 16, 10, 3
  c.log_every, c.ckpt_every = 1, 3
  c.sharding_rules = [(".*", "fsdp")]
  c.mesh.update(data=-1, fsdp=2)
  return c


def main():
  distributed.initialize(None)
  run_dir, out = sys.argv[1], sys.argv[2]
  res = trainer.train(config(), run_dir, input_fn=GlobalSynthetic, progress=False)
  losses = [r["loss"] for r in res.history]
  gathered = jax.experimental.multihost_utils.process_allgather(res.state["params"], tiled=True)
  if jax.process_index() == 0:
    leaves = [np.asarray(x) for x in jax.tree.leaves(gathered)]
    np.savez(out, losses=np.asarray(losses), *leaves)


if __name__ == "__main__":
  import jax.experimental.multihost_utils  # noqa: F401
  main()
