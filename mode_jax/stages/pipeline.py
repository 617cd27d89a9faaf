"""Stage `pipeline`: every stage of the MoDE pipeline in order; re-running resumes.

The order is stages.PIPELINE. `prepare` (the embedded demo corpus) runs only
for configs whose data is that corpus (they have a `prepare` section); a
config that names its own shards starts at `embed`. The training fields, the
shards and the evaluation suite are checked first: a bad config or a missing
input stops before any stage, naming the field or the path.
"""

from mode_jax import distributed
from mode_jax import stages
from mode_jax import workdir as wd
from mode_jax.data.io import loader
from mode_jax.eval import model_refs
from mode_jax.eval import tasks as tasks_lib
from mode_jax.train import trainer


def run(config, workdir: str):
  trainer.check_config(config)
  _check_inputs(config, workdir)
  for name in stages.PIPELINE:
    if name == "prepare" and "prepare" not in config:
      continue
    if distributed.is_primary():
      print(f"==== {name}", flush=True)
    with wd.io_stage(name):
      stages.get(name).run(config, workdir)


def _check_inputs(config, workdir: str) -> None:
  """The researcher's data and evaluation suite, checked before any stage computes: a shard
  pattern that matches nothing, an unreadable suite root, a named task missing from it."""
  if "prepare" in config:   # the demo corpus: prepare makes the shards and the tasks
    return
  try:
    loader.shard_paths(config.input.shards, workdir)
  except (FileNotFoundError, wd.MissingInput):
    raise ValueError(f"config.input.shards={config.input.shards}: no shard matches "
                     f"{loader.describe_shards(config.input.shards, workdir)}") from None
  cfg = model_refs.eval_config(config)
  if not cfg.get("suite"):
    raise ValueError("config.evaluate.suite is empty and this config has no demo corpus to "
                     "evaluate on: set --config.evaluate.suite (mode26, datacomp38, folders or "
                     "a module) and --config.evaluate.root")
  tasks_lib.resolve(cfg, workdir)
