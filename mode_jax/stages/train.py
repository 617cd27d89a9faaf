"""Stage `train`: one CLIP on config.input into workdir/train (e.g. configs/fmnist_clip.py).

Inputs are chosen by name (`config.input.name`), so the trainer stays
generic: each entry gives (input_fn, evaluators); input_fn(config, mesh) is a
checkpointable iterator of per-process batches, evaluators run during
training. Provenance (train/manifest.json): the training fields, the step
counts, the init fields and the input's data files by content; a re-run of
the same finishes a killed run from its newest checkpoint or says it is up to
date, a changed one moves the old run to stale/ and trains afresh.
"""

from __future__ import annotations

import numpy as np

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.corpus import fmnist_stream
from mode_jax.eval import zeroshot
from mode_jax.models import embedders
from mode_jax.models.clip import text_features
from mode_jax.text.clip_bpe import ClipTokenizer
from mode_jax.train import runs, trainer


RUN = "train"
# The config fields of a single run beyond runs.TRAINING_FIELDS.
RUN_FIELDS = ("num_steps", "schedule_steps", "init.checkpoint", "init.step",
              "init.continue_data")


def run(config, workdir: str):
  if text_features(config.model):
    raise ValueError("config.model.text.features: the train stage's caption stream has no "
                     "sentence features (a locked text tower trains in the pipeline, from embed/)")
  run_dir = wd.path(workdir, RUN)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.ckpt_dir = runs.ckpt_dir(config, workdir, RUN)
  input_fn, evaluators = _inputs(config)   # lazy: train() validates before any data
  data = provenance.Input(provenance.tree_digest(_DATA[config.input.name],
                                                 provenance.MACHINE_MEMO),
                          {}, f"{config.input.name} data")
  decision = runs.decide(config, workdir, RUN, RUN, {"data": data},
                         extra_fields=provenance.select(config, RUN_FIELDS),
                         final_step=config.num_steps)
  if not runs.begin(config, workdir, RUN, RUN, decision, f"training to step {config.num_steps}",
                    config.num_steps):
    return None
  result = trainer.train(config, run_dir, input_fn=input_fn, evaluators=evaluators)
  runs.finish(workdir, RUN, decision, step=config.num_steps)
  finals = {k: v for row in result.history for k, v in row.items() if "zeroshot" in k}
  for k, v in finals.items():
    print(f"{k}: {v:.4f}")
  return result


def _fmnist_demo(config):
  """Fashion-MNIST caption stream and a zero-shot evaluator with templates never trained on;
  nothing is read until first use (train() validates the config before either)."""
  tok = ClipTokenizer(context_length=config.model.context_length)

  def input_fn(cfg, mesh):
    train_x, train_y = fmnist_stream.load_split("train", cfg.input.train_limit)
    return fmnist_stream.CaptionStream(train_x, train_y, tok, batch_size=cfg.batch_size,
                                       seed=cfg.input.seed,
                                       context_length=cfg.model.context_length)

  test = []   # (images, labels), read on the first evaluation
  canonical = [[names[0]] for names in fmnist_stream.CLASSNAMES]

  def evaluator(model, step):
    if not test:
      x, y = fmnist_stream.load_split("t10k", config.input.test_limit)
      test.append((fmnist_stream.preprocess(x), y))
    x, y = test[0]
    embed_images, embed_texts = embedders.make_embedders(
        model, tok, context_length=config.model.context_length)
    feats = zeroshot.class_features(embed_texts, canonical, fmnist_stream.EVAL_TEMPLATES)
    logits = embed_images(x) @ np.asarray(feats).T
    return {"fmnist_zeroshot_top1": float(np.mean(logits.argmax(1) == y))}

  return input_fn, [evaluator]


_INPUTS = {"fmnist_demo": _fmnist_demo}
_DATA = {"fmnist_demo": fmnist_stream.FMNIST_DIR}   # what each input reads, keyed by content


def _inputs(config):
  name = config.input.name
  if name not in _INPUTS:
    raise ValueError(f"config.input.name={name!r}: choose from {sorted(_INPUTS)}")
  return _INPUTS[name](config)
