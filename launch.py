"""mode_jax's one entry point: a sub-command per pipeline stage.

  python launch.py <stage> --config configs/x.py[:key=val,runlocal] --workdir W [--config.f=v]
  python launch.py classify --bundle B --images DIR --classes "a,b,c"
                            [--templates openai|FILE] [--top 3] [--out F.json|F.csv]

The stages and what each reads and writes: mode_jax/stages/__init__.py (one
module each, `run(config, workdir)`); `pipeline` runs them in order and
re-running resumes, re-doing only what a change touched (docs/design.md).
`classify` needs no config or workdir: a bundle made by `export` alone.

jax.distributed starts first, for every stage, when the environment or the
config says the job has several processes (mode_jax/distributed.py). A stage
whose inputs are missing stops with one line naming the file and the stage
that makes it; a bad config stops before any compute.
"""

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, optionally with :args.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory every stage reads and writes.")
flags.DEFINE_string("bundle", None, "classify: a bundle folder (made by `export`).")
flags.DEFINE_string("images", None, "classify: a folder of jpg/png/webp images.")
flags.DEFINE_string("classes", None, "classify: comma-separated class names (a|b: synonyms), "
                    "or a file with one class per line.")
flags.DEFINE_string("templates", "openai", "classify: 'openai' (the bundle's 80) or a file, "
                    "one template per line or a JSON list.")
flags.DEFINE_integer("top", 3, "classify: classes printed per image.")
flags.DEFINE_string("out", None, "classify: also write the results to this .json or .csv.")

# Commands that only read the workdir: its config.json stays the last stage's.
READ_ONLY = ("export",)


def parse_flags(argv):
  """absl's parser, but a mistyped --config.field stops with one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError) as e:
    text = str(e)
    refused = re.findall(r"^(?:ValueError|KeyError): (.+)$", text, re.M)
    if refused:   # a config file refused its arguments: its message, not ml_collections' traceback
      where = re.search(r"--config=(\S+?):?\s", text)
      sys.exit(f"error: {where.group(1) + ': ' if where else ''}{refused[-1]}")
    sys.exit(f"error: {text}")
  except (AttributeError, KeyError) as e:   # ml_collections: an override of a missing field
    text = str(e).replace("\\'", "'").replace("\\n", "\n")
    key = re.search(r"'([^']+)'", text)
    key = key.group(1) if key else text
    hint = re.search(r"Did you mean [^?]*\?", text)
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
           and key in a.split("=")[0].split(".")]
    sys.exit(f"error: {bad[0] if bad else key}: no such field in the config"
             + (f" ({hint.group(0)})" if hint else ""))


def classify_main():
  """`classify`: a bundle, images and class names; no config, workdir or pod."""
  f = flags.FLAGS
  if not (f.bundle and f.images and f.classes):
    sys.exit("error: classify needs --bundle, --images and --classes")
  logging.set_verbosity(logging.WARNING)
  from mode_jax.stages import classify
  try:
    classify.run(f.bundle, f.images, f.classes, templates=f.templates, top=f.top, out=f.out)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


def main(argv):
  from mode_jax import stages
  if len(argv) == 2 and argv[1] == "classify":
    return classify_main()
  names = stages.PIPELINE + stages.OTHERS
  if len(argv) != 2 or argv[1] not in names:
    sys.exit(f"usage: launch.py <stage> --config FILE --workdir DIR\n"
             f"       launch.py classify --bundle B --images DIR --classes a,b,c\n"
             f"stages: {', '.join(names)}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config is None or not workdir:
    sys.exit("error: --config and --workdir are required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  # Distributed first: jax.distributed.initialize() must precede every JAX call.
  from mode_jax import distributed
  try:
    distributed.initialize(config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  import jax
  # Experts, dense and seed share shapes: a persistent cache compiles the step once.
  jax.config.update("jax_compilation_cache_dir",
                    os.path.expanduser(os.environ.get("MODE_JAX_CACHE", "~/.cache/mode_jax/xla")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from mode_jax import workdir as wd
  stage = argv[1]
  workdir = wd.resolve(workdir)
  try:
    if stage not in READ_ONLY:
      wd.makedirs(workdir)
      distributed.on_primary("config.json", lambda: wd.write_json(
          wd.path(workdir, "config.json"), json.loads(config.to_json_best_effort())))
    with wd.io_stage(stage):
      stages.get(stage).run(config, workdir)
  except (wd.MissingInput, ValueError, FileNotFoundError) as e:
    distributed.abort(f"error: {e}")
  except Exception:   # noqa: BLE001  on a pod, one host's crash must stop every host
    if distributed.process_count() == 1:
      raise
    import traceback
    traceback.print_exc()
    distributed.abort(f"error: process {distributed.process_index()} failed (traceback above)")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
