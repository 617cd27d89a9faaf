"""Stage `dense`: the baseline, the seed continued on all data for one expert's steps.

It continues the seed's data stream where the seed stopped (position from
the seed's milestone checkpoint), exactly as one uninterrupted run would: a
fresh stream would replay the seed's first epochs (same order, crops and
captions). It costs what one expert costs.
"""

from mode_jax.data.io import loader
from mode_jax.train import runs


def run(config, workdir: str):
  step = runs.seed_step(config, workdir)
  index = loader.load_index(runs.input_config(config), workdir)
  p = runs.read_plan(workdir)
  return runs.fit(config, workdir, runs.DENSE_DIR, num_steps=step + p["expert"],
                  schedule_steps=p["total"], index=index,
                  init=runs.fork(config, workdir, step, continue_data=True), desc="dense")
