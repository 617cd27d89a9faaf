"""MFU: model FLOPs from XLA's cost analysis against analytic counts, and the peak table."""

import jax
import jax.numpy as jnp
import pytest

from mode_jax.train import mfu


def test_matmul_only_train_step_flops_match_the_analytic_count():
  """A two-matmul model: forward 2B(d0 d1 + d1 d2), backward dW2, dh, dW1 (no dx)."""
  b, d0, d1, d2 = 128, 256, 512, 256

  def loss(w, x, y):
    return jnp.sum((x @ w[0] @ w[1] - y) ** 2)

  w = [jax.ShapeDtypeStruct((d0, d1), jnp.float32), jax.ShapeDtypeStruct((d1, d2), jnp.float32)]
  x = jax.ShapeDtypeStruct((b, d0), jnp.float32)
  y = jax.ShapeDtypeStruct((b, d2), jnp.float32)
  analytic = 2 * b * (d0 * d1 + d1 * d2) + 2 * b * d1 * d2 * 2 + 2 * b * d0 * d1
  counted = mfu.cost_flops(jax.grad(loss), w, x, y)
  assert counted == pytest.approx(analytic, rel=0.05)
  # 10 steps/s of it on 4 devices of 1e9 FLOP/s each.
  assert mfu.mfu(analytic, 10.0, 4, 1e9) == pytest.approx(analytic * 10 / 4e9)
  assert jnp.isnan(mfu.mfu(analytic, 10.0, 4, None))


def test_model_flops_ignore_remat_and_scan():
  """Recomputation is not model FLOPs, and a scanned body would be counted once by XLA."""
  from tests.test_trainer import tiny_config
  c = tiny_config()
  plain = mfu.clip_train_flops(c.model, "softmax", 16)
  c.model.remat = "full" if isinstance(c.model.remat, str) else True
  if "scan_layers" in c.model:
    c.model.scan_layers = True
  assert mfu.clip_train_flops(c.model, "softmax", 16) == plain
  assert mfu.clip_train_flops(c.model, "softmax", 32) == pytest.approx(2 * plain, rel=0.02)


def test_peak_table_matches_device_kinds():
  class Dev:
    platform = "gpu"

    def __init__(self, kind):
      self.device_kind = kind

  assert mfu.peak_flops(Dev("NVIDIA H100 80GB HBM3"))[0] == 989e12
  assert mfu.peak_flops(Dev("NVIDIA H100 PCIe"))[0] == 756e12
  assert mfu.peak_flops(Dev("NVIDIA H200"))[0] == 989e12
  assert mfu.peak_flops(Dev("NVIDIA A100-SXM4-80GB"))[0] == 312e12
  assert mfu.peak_flops(Dev("TPU v5 lite"))[0] == 197e12
  assert mfu.peak_flops(Dev("TPU v4"))[0] == 275e12
  assert mfu.peak_flops(Dev("Some New Chip"))[0] is None
  cpu, source = mfu.peak_flops(jax.devices("cpu")[0])
  assert cpu > 0 and "measured" in source
