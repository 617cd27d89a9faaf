"""The training progress bar: it moves when steps finish on the device, not when dispatched.

Counting dispatched steps made the rate and ETA swing at every logging step
(from ~7 step/s while the host ran ahead to 8 s/step while a device_get
waited for the backlog). The device clock's thread calls `completed` as each
step finishes (device_clock.DeviceClock(on_finished=bar.completed)), so the
count is never ahead of the device.
"""

from __future__ import annotations

import tqdm


class StepBar:
  """A tqdm bar over global steps, starting at the step the run resumed from."""

  def __init__(self, total: int, start: int, desc: str, enabled: bool = True):
    self.bar = tqdm.tqdm(total=total, initial=start, desc=desc, unit="step",
                         disable=not enabled, dynamic_ncols=True)

  def completed(self, n: int = 1) -> None:
    """n more steps finished on the device (called from the clock's thread)."""
    self.bar.update(n)

  def show(self, row: dict) -> None:
    """The latest metrics row beside the bar."""
    self.bar.set_postfix(loss=f"{row['loss']:.3f}", ex_s=f"{row['examples_per_s']:.0f}",
                         mfu=f"{row['mfu']:.1%}", wait=f"{row['data_wait_frac']:.0%}")

  def write(self, line: str) -> None:
    self.bar.write(line)

  def close(self) -> None:
    self.bar.close()
