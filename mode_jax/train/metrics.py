"""One metrics writer: JSONL (for scripts and reports) and TensorBoard (for people).

Only process 0 writes. Each JSONL line is {"step": s, name: value, ...}.
On an object-store run directory (gs://, s3://), where files cannot be
appended to, both go to a local staging folder and `flush()` uploads them
(the trainer flushes at every checkpoint and at the end); a resumed run
first downloads the metrics.jsonl it continues.

A run resumed at step s (its newest checkpoint) recomputes the steps after
s, so the writer first drops the rows past s that the killed run logged
(`start_step`); otherwise metrics.jsonl repeats them. TensorBoard event
files cannot be rewritten: the new event file begins with a session-start
marker at step s + 1 (tensorboardX `purge_step`), which TensorBoard's Python
loader takes as "discard earlier events from step s + 1 on"; its Rust loader
(the default) drops them anyway, since a point preempts those of its series
at the same or later steps. The old files themselves stay as they are.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import jax

from mode_jax import workdir as wd


class MetricWriter:
  """Appends metrics rows under `logdir`, dropping any logged past `start_step` first."""

  def __init__(self, logdir: str, *, start_step: int = 0, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.logdir, self.jsonl, self.tb, self.staging = logdir, None, None, None
    if not self.enabled:
      return
    local = logdir
    if wd.is_remote(logdir):
      self.staging = local = tempfile.mkdtemp(prefix="mode_jax_metrics_")
      remote_jsonl = wd.path(logdir, "metrics.jsonl")
      if wd.exists(remote_jsonl):
        with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
          f.write(wd.read_bytes(remote_jsonl))
    os.makedirs(local, exist_ok=True)
    self.local = local
    path = os.path.join(local, "metrics.jsonl")
    dropped = drop_rows_after(path, start_step)
    if dropped:
      print(f"[metrics] {path if self.staging is None else logdir}: dropped {dropped} rows "
            f"past step {start_step}, the step this run resumes from")
    self.jsonl = open(path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(local, "tb"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self.jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in clean.items():
        if math.isfinite(v):
          self.tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    """Makes everything written so far visible in the run directory."""
    if not self.enabled:
      return
    self.jsonl.flush()
    if self.tb is not None:
      self.tb.flush()
    self._upload()

  def _upload(self) -> None:
    if self.staging is not None:
      wd.upload_tree(self.staging, self.logdir)

  def close(self) -> None:
    if not self.enabled:
      return
    if self.tb is not None:
      self.tb.close()
    self.jsonl.close()
    self._upload()
    if self.staging is not None:
      shutil.rmtree(self.staging, ignore_errors=True)


def drop_rows_after(path: str, step: int) -> int:
  """Rewrites the local JSONL file at `path` without rows whose step is past `step`.

  A line that does not parse can only be the last one, torn by the kill;
  it goes too, and a last row without its newline gets one back. Returns
  how many lines were dropped; the file is replaced atomically, and left
  untouched when it needs no change.
  """
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    text = f.read()
  lines = [line for line in text.splitlines() if line.strip()]
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line + "\n")
    except (ValueError, KeyError, TypeError):
      pass
  if len(keep) == len(lines) and (not text or text.endswith("\n")):
    return 0
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return len(lines) - len(keep)


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in wd.read_text(path).splitlines() if line.strip()]
