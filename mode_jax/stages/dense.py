"""Stage `dense`: the baseline, the seed continued on all data for one expert's steps.

It continues the seed's data stream where the seed stopped (position from
the seed's milestone checkpoint), exactly as one uninterrupted run would: a
fresh stream would replay the seed's first epochs (same order, crops and
captions). It costs what one expert costs. Provenance: the seed's
fingerprint and the training fields (dense/manifest.json).
"""

from mode_jax import distributed
from mode_jax import provenance
from mode_jax.data.io import loader
from mode_jax.train import runs


def run(config, workdir: str):
  step = runs.seed_step(config, workdir)
  p = runs.read_plan(workdir)
  final = step + p["expert"]
  decision = runs.decide(
      config, workdir, runs.DENSE_DIR, "dense",
      {"seed": provenance.upstream(workdir, runs.SEED_DIR, "seed", "seed", ("step",))},
      final_step=final)
  if not decision.todo:
    if distributed.is_primary():
      print(f"dense: up to date (step {final})")
    return None
  if distributed.is_primary():
    print(provenance.say("dense", decision, f"training the dense baseline to step {final}"))
  runs.start(config, workdir, runs.DENSE_DIR, decision)
  index = loader.load_index(runs.input_config(config), workdir)
  result = runs.fit(config, workdir, runs.DENSE_DIR, num_steps=final,
                    schedule_steps=p["total"], index=index,
                    init=runs.fork(config, workdir, step, continue_data=True), desc="dense")
  runs.finish(workdir, runs.DENSE_DIR, decision, step=final)
  return result
