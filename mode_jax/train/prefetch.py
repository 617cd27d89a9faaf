"""Reads and shards the next batches in a thread while the device computes."""

from __future__ import annotations

import queue
import threading
import time

from mode_jax.train import sharding


class Prefetcher:
  """An input iterator read ahead by a thread, its batches already global and sharded.

  The data position saved in checkpoints is the one after the last batch
  the trainer consumed, not after what the thread has read ahead, so a
  resumed run continues exactly where the trained stream stopped.
  """

  def __init__(self, data, mesh, depth: int = 2):
    self.data, self.mesh = data, mesh
    self.state = data.get_state()
    self.queue = queue.Queue(maxsize=depth)
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._produce, daemon=True)
    self.thread.start()

  def _produce(self):
    try:
      while not self.stop.is_set():
        batch = next(self.data)
        item = (sharding.global_batch(batch, self.mesh), self.data.get_state())
        while not self.stop.is_set():
          try:
            self.queue.put(item, timeout=0.1)
            break
          except queue.Full:
            pass
    except BaseException as e:  # surfaced to the trainer by the next get()
      self.queue.put(e)

  def __next__(self):
    return self.next_with_stall()[0]

  def next_with_stall(self, clock=None):
    """(next batch, seconds the device sat idle waiting for it).

    Steps are dispatched asynchronously, so the trainer usually asks for the
    next batch while the device still computes earlier ones; that wait costs
    nothing. Only the part after the device finished its last dispatched step
    (`clock`, a device_clock.DeviceClock) is a stall. Without a clock, all of
    the wait counts.
    """
    t0 = time.perf_counter()
    item = self.queue.get()
    t1 = time.perf_counter()
    if isinstance(item, BaseException):
      raise item
    batch, self.state = item
    if clock is None:
      return batch, t1 - t0
    done = clock.idle_since()
    return batch, 0.0 if done is None else max(0.0, t1 - max(t0, done))

  def get_state(self):
    return self.state

  def close(self):
    self.stop.set()
    self.thread.join(timeout=5)
    if hasattr(self.data, "close"):
      self.data.close()
