"""The commands of the README and the guides are real: every `python launch.py` line names a
stage and a config that loads with its arguments and overrides and passes validation.

The laptop command of docs/own-data.md is also run to a report (tests/test_own_data.py),
the demo's by `make demo`; the pod commands are checked here as a pod would check them
before any compute (256 devices for the paper's batch of 32,768).
"""

import glob
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def commands() -> list[tuple[str, list[str]]]:
  out = []
  for path in DOCS:
    text = open(path).read().replace("\\\n", " ")
    for line in re.findall(r"^\s*(python launch\.py .*)$", text, re.M):
      line = line.split("  #")[0]
      out.append((f"{os.path.basename(path)}: {line[:60]}", shlex.split(line)[2:]))
  return out


COMMANDS = commands()


def test_the_docs_have_commands():
  assert len(COMMANDS) >= 15
  assert any("mode_b16.py" in " ".join(words) for _, words in COMMANDS)


def _set(config, dotted: str, value: str):
  node = config
  *path, last = dotted.split(".")
  for p in path:
    node = node[p]
  old = node[last]
  node[last] = value if isinstance(old, str) or old is None else type(old)(
      value.lower() in ("1", "true") if isinstance(old, bool) else value)


@pytest.mark.parametrize("where,words", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_loads_and_validates(where, words):
  from mode_jax import stages
  from mode_jax.train import trainer
  stage, flags = words[0], words[1:]
  if stage == "<stage>":   # the generic form: every stage takes it
    stage = "seed"
  assert stage in stages.PIPELINE + stages.OTHERS + ("classify",), where
  if stage == "classify":
    assert {"--bundle", "--images", "--classes"} <= {f.split("=")[0] for f in flags}, where
    return
  assert "--workdir" in flags and "--config" in flags, where
  spec = flags[flags.index("--config") + 1]
  path, _, arg = spec.partition(":")
  config = importlib.import_module(path[:-3].replace("/", ".")).get_config(arg or None)
  for f in flags:
    if f.startswith("--config."):
      key, _, value = f[len("--config."):].partition("=")
      _set(config, key, value)
  if "num_steps" in config:
    config.num_steps = config.schedule_steps = 10
    trainer.check_config(config, n_devices=256 if config.batch_size >= 1024 else 8)
