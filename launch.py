"""mode_jax's one entry point: a sub-command per pipeline stage.

  python launch.py <stage> --config configs/x.py[:key=val,runlocal] --workdir W [--config.f=v]

Stages (each reads and writes the workdir; see mode_jax/workdir.py):
  train   train one CLIP from config.input (e.g. configs/fmnist_clip.py)

A stage whose inputs are missing stops with one line naming the file and the
stage that makes it; a bad config stops before any compute.
"""

import importlib
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, optionally with :args.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory every stage reads and writes.")

# stage -> "module:function"; each function takes (config, workdir).
STAGES = {
    "train": "mode_jax.stages:run_train",
}


def main(argv):
  if len(argv) != 2 or argv[1] not in STAGES:
    sys.exit(f"usage: launch.py <stage> --config FILE --workdir DIR\n"
             f"stages: {', '.join(STAGES)}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config is None or not workdir:
    sys.exit("error: --config and --workdir are required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  from mode_jax.workdir import MissingInput, write_json
  module, fn = STAGES[argv[1]].split(":")
  try:
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    getattr(importlib.import_module(module), fn)(config, workdir)
  except (MissingInput, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
