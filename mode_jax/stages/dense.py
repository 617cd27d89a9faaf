"""Stage `dense`: the baseline, the seed continued on all data for one expert's steps.

It continues the seed's data stream where the seed stopped (position from
the seed's milestone checkpoint), exactly as one uninterrupted run would: a
fresh stream would replay the seed's first epochs (same order, crops and
captions). It costs what one expert costs. Provenance: the seed's
fingerprint and the training fields (dense/manifest.json).
"""

from mode_jax.data.io import loader
from mode_jax.eval import validation
from mode_jax.train import runs


def run(config, workdir: str):
  step = runs.seed_step(config, workdir)
  p = runs.read_plan(workdir)
  final = step + p["expert"]
  decision = runs.decide(
      config, workdir, runs.DENSE_DIR, "dense",
      {"seed": runs.current_seed(config, workdir)},
      final_step=final)
  return runs.fit_once(
      config, workdir, runs.DENSE_DIR, "dense", decision,
      f"training the dense baseline to step {final}",
      index_fn=lambda: loader.load_index(runs.input_config(config), workdir),
      num_steps=final, schedule_steps=p["total"],
      init=runs.fork(config, workdir, step, continue_data=True),
      **(validation.hooks(config, workdir, p["steps_per_epoch"], runs.DENSE_DIR)
         if decision.todo else {}))
