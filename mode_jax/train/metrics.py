"""One metrics writer: JSONL (for scripts and reports) and TensorBoard (for people).

Only process 0 writes. Each JSONL line is {"step": s, name: value, ...}.
"""

from __future__ import annotations

import json
import math
import os

import jax


class MetricWriter:

  def __init__(self, logdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.jsonl = None
    self.tb = None
    if not self.enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    self.jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(logdir, "tb"))

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

  def close(self) -> None:
    if self.jsonl:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
