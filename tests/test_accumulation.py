"""Exact gradient accumulation: k micro-batches give the full-batch step, on 8 devices."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mode_jax.train import optimizer, sharding
from mode_jax.train import state as state_lib
from tests.test_trainer import SyntheticData, tiny_config


@functools.cache
def _setup(loss, fsdp):
  c = tiny_config(loss=loss, batch_size=32)
  c.model.vision.depth = 1   # compile time is most of this file's run time
  c.model.logit_bias = loss == "sigmoid"
  if loss == "sigmoid":   # remat inside the micro-batch scans (nnx.remat and outer Variables)
    c.model.remat = "full" if isinstance(c.model.remat, str) else True
  c.optim.eps = 1e-3   # the attention key bias has a zero true gradient (see test_trainer)
  c.mesh.update(data=8 // fsdp, fsdp=fsdp)
  c.sharding_rules = [(".*", "fsdp" if fsdp > 1 else "replicate")]
  mesh = sharding.make_mesh(c.mesh)
  graphdef, tx, _, shardings, init_fn = state_lib.build(
      c.model, c.optim, schedule_steps=10, mesh=mesh, rules=c.sharding_rules, seed=0)
  batch = next(SyntheticData(c))
  batch["image"] = np.random.default_rng(3).integers(0, 256, batch["image"].shape, np.uint8)
  batch = sharding.global_batch(batch, mesh)

  def step(k):
    fn = state_lib.make_train_step(graphdef, tx, optimizer.lr_schedule(c.optim, 10), shardings,
                                   mesh, loss, accum_steps=k)
    return fn(init_fn(), batch)

  return step


@pytest.mark.parametrize("loss,fsdp", [("softmax", 1), ("sigmoid", 2)])
def test_accumulated_step_equals_full_batch(loss, fsdp):
  step = _setup(loss, fsdp)
  ref, m_ref = step(1)
  assert set(ref) == {"params", "opt", "step"}
  for k in (2, 4):
    new, m = step(k)
    assert set(m) == set(m_ref)
    for key in ("loss", "grad_norm", "logit_scale", "batch_acc"):
      np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 new["params"], ref["params"])


def test_micro_batches_stay_on_their_devices():
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  x = jax.device_put(jnp.arange(64.0), sharding.batch_sharding(mesh))
  micro = jax.jit(lambda x: state_lib.to_micro(x, 4, mesh))(x)
  assert micro.shape == (4, 16)
  # device j holds rows [8 j, 8 j + 8); micro-batch i takes its rows 8 j + 2 i, +1
  np.testing.assert_array_equal(micro[1, :4], [2, 3, 10, 11])
  rows = {s.device: set(np.asarray(s.data).ravel()) for s in x.addressable_shards}
  for s in micro.addressable_shards:   # every device keeps exactly its own rows
    assert set(np.asarray(s.data).ravel()) == rows[s.device]
  back = jax.jit(lambda m: state_lib.from_micro(m, mesh))(micro)
  np.testing.assert_array_equal(back, x)
  hlo = jax.jit(lambda x: state_lib.to_micro(x, 4, mesh)).lower(x).compile().as_text()
  assert not re.search(r"all-to-all|all-gather|collective-permute", hlo)


def test_indivisible_batch_is_refused():
  step = _setup("softmax", 1)
  with pytest.raises(ValueError, match="accum_steps=3"):
    step(3)
