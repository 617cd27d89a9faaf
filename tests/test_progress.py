"""The progress bar counts steps that finished on the device, never dispatched ones."""

import threading

from mode_jax.train import progress as progress_lib
from mode_jax.train.device_clock import DeviceClock


class _Step:
  """A dispatched step's output that is ready once the test releases it."""

  def __init__(self):
    self.done = threading.Event()

  def block_until_ready(self):   # what jax.block_until_ready calls on the leaf
    self.done.wait()
    return self


class _Bar(progress_lib.StepBar):
  """A StepBar that checks, at every advance, that it is not ahead of the finished steps."""

  def __init__(self, released):
    super().__init__(total=10, start=3, desc="t", enabled=False)
    self.released, self.count, self.ahead = released, 0, []
    self.moved = threading.Condition()

  def completed(self, n=1):
    with self.moved:
      self.count += n
      if self.count > len(self.released):
        self.ahead.append(self.count)
      self.moved.notify_all()
    super().completed(n)

  def wait_for(self, count):
    with self.moved:
      assert self.moved.wait_for(lambda: self.count >= count, timeout=60)


def test_bar_advances_as_steps_finish_not_as_they_are_dispatched():
  released = []
  bar = _Bar(released)
  clock = DeviceClock(on_finished=bar.completed)
  steps = [_Step() for _ in range(5)]
  try:
    for s in steps:   # five steps dispatched at once, as the host runs ahead
      clock.dispatched(s)
    assert bar.count == 0 and clock.finished() == 0
    for i, s in enumerate(steps, 1):
      released.append(s)
      s.done.set()
      bar.wait_for(i)
      assert bar.count == clock.finished() == i
  finally:
    clock.close()
  assert bar.count == 5 and bar.ahead == []


def test_close_waits_for_the_dispatched_steps_to_be_counted():
  released = []
  bar = _Bar(released)
  clock = DeviceClock(on_finished=bar.completed)
  steps = [_Step() for _ in range(3)]
  for s in steps:
    clock.dispatched(s)
  for s in steps:
    released.append(s)
    s.done.set()
  clock.close()
  assert bar.count == 3 and bar.ahead == []



def test_trainer_bar_is_never_ahead_of_the_device(tmp_path, monkeypatch):
  """Regression: the bar advanced as each step was dispatched, ahead of the device, so
  its rate and ETA swung at every logging step's wait."""
  import tqdm
  from mode_jax.train import trainer
  from tests.test_trainer import SyntheticData, tiny_config
  clocks, bars = [], []

  class Clock(trainer.DeviceClock):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      clocks.append(self)

  class FakeTqdm:
    """Checks every advance against the steps the trainer's clock saw finish."""

    def __init__(self, total=None, initial=0, **kw):
      self.start = self.n = initial
      self.ahead = []
      bars.append(self)

    def update(self, n=1):
      self.n += n
      finished = clocks[-1]._finished   # stamped by the clock's thread as each step ends
      if self.n - self.start > finished:
        self.ahead.append((self.n - self.start, finished))

    def set_postfix(self, **kw):
      pass

    def write(self, line):
      pass

    def close(self):
      pass

  monkeypatch.setattr(trainer, "DeviceClock", Clock)
  monkeypatch.setattr(tqdm, "tqdm", FakeTqdm)
  trainer.train(tiny_config(num_steps=4, log_every=2), str(tmp_path), input_fn=SyntheticData,
                progress=False)
  (bar,) = bars
  assert bar.n == 4 and bar.ahead == []
