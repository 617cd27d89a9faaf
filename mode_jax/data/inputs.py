"""Training inputs chosen by name (`config.input.name`), so the trainer stays generic.

Each entry returns (input_fn, evaluators): input_fn(config, mesh) gives a
checkpointable iterator of per-process batches; evaluators run during training.
"""

from __future__ import annotations


def _tokenizer(config):
  from mode_jax.text.clip_bpe import ClipTokenizer
  return ClipTokenizer(context_length=config.model.context_length)


def fmnist_demo(config):
  """Fashion-MNIST caption stream and a zero-shot evaluator; data loads on first use.

  Nothing is read here: train() validates the config before calling either.
  """
  from mode_jax.data.corpus import fmnist_stream as fm
  tok = _tokenizer(config)

  def input_fn(cfg, mesh):
    train_x, train_y = fm.load_split("train", cfg.input.train_limit)
    return fm.CaptionStream(train_x, train_y, tok, batch_size=cfg.batch_size,
                            seed=cfg.input.seed, context_length=cfg.model.context_length)

  evaluate = []   # built on the first call

  def evaluator(model, step):
    if not evaluate:
      test_x, test_y = fm.load_split("t10k", config.input.test_limit)
      evaluate.append(fm.zeroshot_evaluator(test_x, test_y, tok,
                                            context_length=config.model.context_length))
    return evaluate[0](model, step)

  return input_fn, [evaluator]


INPUTS = {"fmnist_demo": fmnist_demo}


def get(config):
  name = config.input.name
  if name not in INPUTS:
    raise ValueError(f"config.input.name={name!r}: choose from {sorted(INPUTS)}")
  return INPUTS[name](config)
