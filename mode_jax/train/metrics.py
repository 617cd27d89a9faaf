"""One metrics writer: JSONL (for scripts and reports) and TensorBoard (for people).

Only process 0 writes. Each JSONL line is {"step": s, name: value, ...}.
On an object-store run directory (gs://, s3://), where files cannot be
appended to, both go to a local staging folder and `flush()` uploads them
(the trainer flushes at every checkpoint and at the end); a resumed run
first downloads the metrics.jsonl it continues.
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

  def __init__(self, logdir: str, *, tensorboard: bool = True):
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
    self.jsonl = open(os.path.join(local, "metrics.jsonl"), "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(local, "tb"))

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


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in wd.read_text(path).splitlines() if line.strip()]
