"""Skip a test, naming the install command, when the demo corpus's packages are absent."""

import pytest


def skip_without(config_arg: str = "runlocal", **prepare_overrides) -> None:
  from configs import demo
  from mode_jax.data.corpus import build as demo_corpus
  cfg = demo.get_config(config_arg).prepare
  cfg.update(prepare_overrides)
  missing = demo_corpus.missing_source(cfg)
  if missing:
    pytest.skip(f"{missing} (or `make apt npm`)")
