"""When does the device finish each step dispatched to it?

Steps are dispatched asynchronously: the host runs ahead of the device until
something waits on a result (a logging step's device_get, a checkpoint).
Anything measured at dispatch -- a progress bar, "is the device idle while
we wait for input?" -- is then wrong by however far the host ran ahead.
"""

from __future__ import annotations

import queue
import threading
import time

import jax


class DeviceClock:
  """A thread blocks on each dispatched step's output in turn and stamps its end.

  No polling: the GIL is released while it waits. `on_finished(n)` is called
  from that thread with the number of steps that just finished (the trainer
  advances its progress bar with it, progress.StepBar.completed).
  """

  def __init__(self, on_finished=None):
    self._pending: queue.Queue = queue.Queue()
    self._lock = threading.Lock()
    self._on_finished = on_finished
    self._last = self._finished = 0
    self._finished_at = time.perf_counter()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()

  def dispatched(self, output) -> None:
    """Call right after dispatching a step, with one of its outputs."""
    with self._lock:
      self._last += 1
      self._pending.put((self._last, output))

  def idle_since(self) -> float | None:
    """perf_counter() time the last dispatched step finished; None while it runs."""
    with self._lock:
      return self._finished_at if self._finished == self._last else None

  def finished(self) -> int:
    """How many dispatched steps have finished on the device."""
    with self._lock:
      return self._finished

  def _watch(self):
    while True:
      item = self._pending.get()
      if item is None:
        return
      seq, output = item
      try:
        jax.block_until_ready(output)
      except Exception:  # the trainer sees the failure itself
        pass
      with self._lock:
        self._finished, self._finished_at = seq, time.perf_counter()
      if self._on_finished is not None:
        self._on_finished(1)

  def close(self):
    """Waits (up to 5 s) for the watcher to stamp what was dispatched, then stops it."""
    self._pending.put(None)
    self._thread.join(timeout=5)
