"""The steps since the last log line, turned into one metrics row; the NaN policy.

One device_get per window, not per step, so logging never serialises the
host with the device between log lines.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from mode_jax.train import mfu as mfu_lib


class NonFiniteLoss(RuntimeError):
  pass


def check_finite(fetched: list, step: int, ck) -> None:
  """The NaN policy: stop at the first window with a non-finite loss or gradient.

  The step itself already refused such an update on the device (state.py),
  so the state is the last good one; the run stops instead of skipping on,
  and the newest checkpoint (never saved unchecked: a checkpoint step is a
  logging step) is where to resume from with a lower LR or other data.
  """
  bad = next((x for x in fetched if not bool(x["finite"])), None)
  if bad is not None:
    raise NonFiniteLoss(
        f"non-finite loss ({float(bad['loss'])}) or gradient at or before step {step}; "
        f"stopped, last good checkpoint kept in {ck.directory} (step {ck.latest_step()})")


class MetricsWindow:
  """Loss, throughput, MFU, input stall and memory over the steps since the last row.

  Throughput excludes compilation (the step is compiled before the first
  window starts). MFU = model FLOPs per step (mfu.clip_train_flops) x steps/s
  over the devices' peak; memory is what the runtime reports for this host's
  first device (GPU/TPU) and XLA's static analysis of the step.
  """

  def __init__(self, config, step_memory: dict):
    self.batch_size = config.batch_size
    self.n_devices = jax.device_count()
    self.flops = mfu_lib.clip_train_flops(config.model, config.loss, config.batch_size)
    self.peak, _ = mfu_lib.peak_flops()
    self.static = {"step_mem_gib": step_memory["total_gib"]} if step_memory else {}
    self.metrics, self.wait_s, self.t0 = [], 0.0, time.perf_counter()

  def add(self, metrics, stall: float) -> None:
    """One dispatched step's metrics (device arrays, not fetched) and its input stall."""
    self.metrics.append(metrics)
    self.wait_s += stall

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` of host work (an evaluation) out of the window's wall time."""
    self.t0 += seconds

  def row(self, step: int, ck) -> dict:
    """Fetches the window's metrics and starts the next window; NonFiniteLoss per check_finite."""
    fetched = jax.device_get(self.metrics)
    dt = time.perf_counter() - self.t0
    check_finite(fetched, step, ck)
    n = len(fetched)
    row = {k: float(np.mean([x[k] for x in fetched])) for k in fetched[-1] if k != "finite"}
    row.update(steps_per_s=n / dt, examples_per_s=n * self.batch_size / dt,
               examples_per_s_per_device=n * self.batch_size / dt / self.n_devices,
               data_wait_frac=self.wait_s / dt,
               mfu=mfu_lib.mfu(self.flops, n / dt, self.n_devices, self.peak),
               **self.static, **mfu_lib.memory_in_use())
    self.metrics, self.wait_s, self.t0 = [], 0.0, time.perf_counter()
    return row
