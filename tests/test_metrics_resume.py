"""metrics.jsonl after a resume: the rows a killed run logged past its last checkpoint go."""

import glob
import json
import os
import struct
import uuid

import pytest

from mode_jax import workdir as wd
from mode_jax.train import metrics as metrics_lib
from mode_jax.train import progress as progress_lib
from mode_jax.train import trainer
from tests.test_trainer import SyntheticData, tiny_config


class _DiesAt(SyntheticData):
  """The stream fails when asked for batch `die_at` (0-based): the run is killed there."""

  def __init__(self, config, mesh=None, die_at=None):
    super().__init__(config, mesh)
    self.die_at = die_at

  def __next__(self):
    if self.pos == self.die_at:
      raise RuntimeError("killed")
    return super().__next__()


class _CountingBar(progress_lib.StepBar):
  """Records what the trainer tells its bar (tqdm itself is disabled in tests)."""
  seen = []

  def __init__(self, total, start, desc, enabled=True):
    super().__init__(total, start, desc, enabled=False)
    self.start, self.count = start, 0
    _CountingBar.seen.append(self)

  def completed(self, n=1):
    self.count += n
    super().completed(n)


def test_resume_drops_rows_logged_after_the_restored_checkpoint(tmp_path, monkeypatch):
  """Regression: killed after logging step 3 with its newest checkpoint at step 2, the
  resumed run logged step 3 again (steps 1, 2, 3, 3, 4)."""
  run = str(tmp_path / "run")
  with pytest.raises(RuntimeError, match="killed"):
    trainer.train(tiny_config(num_steps=4, log_every=1, ckpt_every=2), run,
                  input_fn=lambda c, m: _DiesAt(c, m, die_at=3), progress=False)
  rows = metrics_lib.read_jsonl(os.path.join(run, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3]   # step 3 logged, never checkpointed
  monkeypatch.setattr(progress_lib, "StepBar", _CountingBar)
  _CountingBar.seen.clear()
  res = trainer.train(tiny_config(num_steps=4, log_every=1, ckpt_every=2), run,
                      input_fn=SyntheticData, progress=False)
  assert res.step == 4 and [h["step"] for h in res.history] == [3, 4]
  rows = metrics_lib.read_jsonl(os.path.join(run, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  # the bar resumed at step 2 and was told of exactly the two steps that finished
  (bar,) = _CountingBar.seen
  assert (bar.start, bar.count) == (2, 2)


def _tb_events(folder):
  """Every Event in the TFRecord event files under `folder`, file by file (sorted names)."""
  from tensorboardX.proto import event_pb2
  files = []
  for name in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    events, raw = [], open(name, "rb").read()
    i = 0
    while i < len(raw):   # record: u64 length, u32 crc, data, u32 crc
      (n,) = struct.unpack("<Q", raw[i:i + 8])
      ev = event_pb2.Event()
      ev.ParseFromString(raw[i + 12:i + 12 + n])
      events.append(ev)
      i += 12 + n + 4
    files.append(events)
  return files


def _rows(step_range):
  return "".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in step_range)


@pytest.mark.parametrize("remote", [False, True], ids=["local", "object-store"])
def test_writer_drops_rows_past_start_step(tmp_path, remote):
  """Local and object-store run dirs (memory:// stands in for gs://: staged, then uploaded)."""
  logdir = f"memory://runs-{uuid.uuid4().hex}" if remote else str(tmp_path)
  torn = '{"step": 6, "lo'   # the kill cut the last write short
  wd.write_text(wd.path(logdir, "metrics.jsonl"), _rows(range(1, 6)) + torn)
  w = metrics_lib.MetricWriter(logdir, start_step=3)
  w.write(4, {"loss": 40.0})
  w.close()
  rows = metrics_lib.read_jsonl(wd.path(logdir, "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
  # TensorBoard: the new event file opens with a restart marker at step 4, which tells
  # TensorBoard to discard the earlier files' events from step 4 on
  tb = str(tmp_path / "tb")
  if remote:
    for p in wd.glob(wd.path(logdir, "tb", "events.*")):
      os.makedirs(tb, exist_ok=True)
      open(os.path.join(tb, wd.basename(p)), "wb").write(wd.read_bytes(p))
  (events,) = _tb_events(tb)
  starts = [e.step for e in events if e.HasField("session_log")]
  assert starts == [4] and events[-1].summary.value[0].simple_value == 40.0


def test_rows_up_to_the_start_step_are_left_untouched(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  open(path, "w").write(_rows(range(1, 4)))
  before = os.stat(path).st_mtime_ns, open(path).read()
  assert metrics_lib.drop_rows_after(path, 3) == 0
  assert (os.stat(path).st_mtime_ns, open(path).read()) == before
  assert metrics_lib.drop_rows_after(path, 0) == 3 and open(path).read() == ""
