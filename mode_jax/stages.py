"""Stage functions behind launch.py: each reads and writes the workdir."""

from __future__ import annotations

import os

from mode_jax.data import inputs
from mode_jax.train import trainer


def run_train(config, workdir: str):
  """Trains one CLIP on config.input into workdir/train (resumes if a checkpoint exists)."""
  run_dir = os.path.join(workdir, "train")
  trainer.validate(config, run_dir)   # before loading any data
  input_fn, evaluators = inputs.get(config)
  result = trainer.train(config, run_dir, input_fn=input_fn, evaluators=evaluators)
  finals = {k: v for row in result.history for k, v in row.items() if "zeroshot" in k}
  for k, v in finals.items():
    print(f"{k}: {v:.4f}")
  return result


def run_prepare(config, workdir: str):
  """Builds the embedded demo corpus (training + evaluation shards) into workdir/shards."""
  from mode_jax.data import demo_corpus
  return demo_corpus.run_prepare(config.prepare, workdir)


def run_embed(config, workdir: str):
  from mode_jax.text import embed_stage
  return embed_stage.run_embed(config.embed, workdir)


def run_cluster(config, workdir: str):
  from clustering import stages
  return stages.run_cluster(config.cluster, workdir)


def run_assign(config, workdir: str):
  from clustering import stages
  return stages.run_assign(config.cluster, workdir)


def run_report(config, workdir: str):
  from mode_jax.eval import report
  return report.run_report(config.report, workdir)
