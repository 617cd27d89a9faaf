"""Model FLOPs utilisation (MFU): model FLOPs per second over the devices' peak.

Model FLOPs come from XLA's cost analysis of the *plain* train step (forward
and backward of the loss at the global batch: no remat, no scan over blocks,
no accumulation), lowered but never compiled or run. Not from the step that
actually runs, for two reasons: XLA's cost analysis counts a loop body once
(a scanned L/14 would report 1/24 of its FLOPs, an accumulated step 1/k), and
recomputation under remat or GradCache is hardware work, not model FLOPs
(MFU as defined in PaLM, Chowdhery et al. 2022, appendix B).

Peaks are dense bf16 per device (one GPU, one TPU chip). A CPU has no table
entry: its float32 matmul rate is measured once and shared among the local
devices (fake CPU devices split one machine).
"""

from __future__ import annotations

import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mode_jax.models.clip import CLIP, text_features
from mode_jax.train import state as state_lib

# (substring of jax.Device.device_kind, dense bf16 FLOP/s per device, source); first match wins.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12, "NVIDIA H100 datasheet, PCIe"),
    ("H200", 989e12, "NVIDIA H200 datasheet (SXM; the H100's tensor cores)"),
    ("H100", 989e12, "NVIDIA H100 datasheet, SXM (1,979 with sparsity)"),
    ("A100", 312e12, "NVIDIA A100 datasheet"),
    ("TPU v6 lite", 918e12, "Cloud TPU docs, v6e (Trillium)"),
    ("TPU v5p", 459e12, "Cloud TPU docs, v5p"),
    ("TPU v5 lite", 197e12, "Cloud TPU docs, v5e"),
    ("TPU v5e", 197e12, "Cloud TPU docs, v5e"),
    ("TPU v4", 275e12, "Cloud TPU docs, v4"),
)


@functools.lru_cache(maxsize=None)
def _measured_cpu_flops(n: int = 1024, reps: int = 5) -> float:
  """The machine's float32 matmul FLOP/s on one CPU device (best of `reps`)."""
  f = jax.jit(lambda a, b: a @ b)
  a = jnp.ones((n, n), jnp.float32)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def peak_flops(device=None) -> tuple[float | None, str]:
  """(peak FLOP/s of one device, where the figure comes from); None when unknown."""
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    share = _measured_cpu_flops() / jax.local_device_count()
    return share, f"measured f32 matmul / {jax.local_device_count()} local CPU devices"
  for kind, flops, source in PEAK_FLOPS:
    if kind.lower() in device.device_kind.lower():
      return flops, source
  return None, f"no peak known for {device.device_kind!r} (mfu.PEAK_FLOPS)"


def cost_flops(fn, *abstract_args) -> float:
  """FLOPs of fn(*args) from XLA's cost analysis of its lowering (global, unpartitioned)."""
  cost = jax.jit(fn).lower(*abstract_args).cost_analysis()
  if isinstance(cost, (list, tuple)):   # older JAX: one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def plain_model_config(model_cfg):
  """The same model without remat or scan: what the model FLOPs are counted on."""
  cfg = model_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    if "remat" in cfg:
      cfg.remat = "none" if isinstance(cfg.remat, str) else False
    if "scan_layers" in cfg:
      cfg.scan_layers = False
  return cfg


def clip_train_flops(model_cfg, loss_name: str, global_batch: int) -> float:
  """Model FLOPs of one CLIP train step (forward + backward) at `global_batch` (a lowering
  and XLA's cost analysis, once per model, loss and batch in a process: the seed, the
  experts and dense share them)."""
  return _train_flops(plain_model_config(model_cfg).to_json(), loss_name, global_batch)


@functools.lru_cache(maxsize=None)
def _train_flops(model_json: str, loss_name: str, global_batch: int) -> float:
  cfg = ml_collections.ConfigDict(json.loads(model_json))
  graphdef, params = nnx.split(nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  s, features = cfg.image_size, text_features(cfg)
  tokens = (jax.ShapeDtypeStruct((global_batch, features), jnp.float32) if features else
            jax.ShapeDtypeStruct((global_batch, cfg.context_length), jnp.int32))
  batch = {"image": jax.ShapeDtypeStruct((global_batch, s, s, 3), jnp.uint8), "tokens": tokens}
  loss = lambda p, b: state_lib.loss_and_metrics(graphdef, p, b, loss_name)[0]
  return cost_flops(jax.grad(loss), params, batch)


def mfu(flops_per_step: float, steps_per_s: float, n_devices: int, peak: float | None):
  """Fraction of the devices' peak the model FLOPs reach; NaN when the peak is unknown."""
  if not peak:
    return float("nan")
  return flops_per_step * steps_per_s / (n_devices * peak)


def memory_in_use(device=None) -> dict:
  """Bytes in use and peak on one device, as the runtime reports them ({} on CPU)."""
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() or {}
  out = {}
  if "bytes_in_use" in stats:
    out["mem_gib"] = stats["bytes_in_use"] / 2 ** 30
  if "peak_bytes_in_use" in stats:
    out["peak_mem_gib"] = stats["peak_bytes_in_use"] / 2 ** 30
  return out


def compiled_memory(compiled) -> dict:
  """Per-device bytes of a compiled step (arguments, outputs, temporaries), from XLA."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  args, out, alias, temp = (m.argument_size_in_bytes, m.output_size_in_bytes,
                            m.alias_size_in_bytes, m.temp_size_in_bytes)
  return {"argument_gib": args / 2 ** 30, "output_gib": out / 2 ** 30,
          "temp_gib": temp / 2 ** 30, "total_gib": (args + out - alias + temp) / 2 ** 30}

