"""Stage `pipeline`: every stage of the MoDE pipeline in order; re-running resumes.

The order is stages.PIPELINE. `prepare` (the embedded demo corpus) runs only
for configs whose data is that corpus (they have a `prepare` section); a
config that names its own shards starts at `embed`. The training fields are
checked first: a bad config stops before any stage.
"""

from mode_jax import distributed
from mode_jax import stages
from mode_jax import workdir as wd
from mode_jax.train import trainer


def run(config, workdir: str):
  trainer.check_config(config)
  for name in stages.PIPELINE:
    if name == "prepare" and "prepare" not in config:
      continue
    if distributed.is_primary():
      print(f"==== {name}", flush=True)
    with wd.io_stage(name):
      stages.get(name).run(config, workdir)
