"""Training inputs chosen by name (`config.input.name`), so the trainer stays generic.

Each entry returns (input_fn, evaluators): input_fn(config, mesh) gives a
checkpointable iterator of per-process batches; evaluators run during training.
"""

from __future__ import annotations


def _tokenizer(config):
  from mode_jax.text.clip_bpe import ClipTokenizer
  return ClipTokenizer(context_length=config.model.context_length)


def fmnist_demo(config):
  from mode_jax.data import fmnist_demo as fm
  tok = _tokenizer(config)
  train_x, train_y = fm.load_split("train", config.input.train_limit)
  test_x, test_y = fm.load_split("t10k", config.input.test_limit)

  def input_fn(cfg, mesh):
    return fm.CaptionStream(train_x, train_y, tok, batch_size=cfg.batch_size,
                            seed=cfg.input.seed, context_length=cfg.model.context_length)

  evaluator = fm.zeroshot_evaluator(test_x, test_y, tok,
                                    context_length=config.model.context_length)
  return input_fn, [evaluator]


INPUTS = {"fmnist_demo": fmnist_demo}


def get(config):
  name = config.input.name
  if name not in INPUTS:
    raise ValueError(f"config.input.name={name!r}: choose from {sorted(INPUTS)}")
  return INPUTS[name](config)
