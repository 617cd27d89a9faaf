"""Stage functions behind launch.py: each reads and writes the workdir.

Every host runs every stage; each stage splits its own work over hosts
(see mode_jax/distributed.py), and `prepare` builds the demo corpus on
process 0 while the others wait.
"""

from __future__ import annotations

from mode_jax import distributed
from mode_jax import workdir as wd
from mode_jax.data import inputs
from mode_jax.train import trainer


def _shards(config):
  return config.input.shards if "input" in config else wd.TRAIN_SHARDS


def run_train(config, workdir: str):
  """Trains one CLIP on config.input into workdir/train (resumes if a checkpoint exists)."""
  run_dir = wd.path(workdir, "train")
  if config.get("checkpoint_root"):
    from mode_jax import pipeline
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.ckpt_dir = pipeline.ckpt_dir(config, workdir, "train")
  input_fn, evaluators = inputs.get(config)   # lazy: train() validates before any data
  result = trainer.train(config, run_dir, input_fn=input_fn, evaluators=evaluators)
  finals = {k: v for row in result.history for k, v in row.items() if "zeroshot" in k}
  for k, v in finals.items():
    print(f"{k}: {v:.4f}")
  return result


def run_prepare(config, workdir: str):
  """Builds the embedded demo corpus (training + evaluation shards) into workdir/shards."""
  from mode_jax.data.corpus import build as demo_corpus
  return distributed.on_primary("prepare", lambda: demo_corpus.run_prepare(config.prepare,
                                                                           workdir))


def run_embed(config, workdir: str):
  from mode_jax.text import embed_stage
  return embed_stage.run_embed(config.embed, workdir, _shards(config))


def run_cluster(config, workdir: str):
  from clustering import stages
  return stages.run_cluster(config.cluster, workdir)


def run_assign(config, workdir: str):
  from clustering import stages
  return stages.run_assign(config.cluster, workdir, _shards(config))


def run_report(config, workdir: str):
  from mode_jax.eval import report
  return report.run_report(config.report, workdir)
