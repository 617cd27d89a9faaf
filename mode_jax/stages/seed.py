"""Stage `seed`: one dense CLIP on all training data until seed_epochs (docs/method.md step 5).

Its last step is a milestone checkpoint that clean-up never deletes: the
experts and the dense baseline fork from it. Writes seed/plan.json (the step
counts of the whole planned run, mode_jax/train/runs.py). Provenance: the
training fields and the training data's content (seed/manifest.json); a seed
made from other inputs moves to stale/ before anything trains. Validation scores are
logged while it trains (eval/validation.py).
"""

from mode_jax import checkpoint as ckpt_lib
from mode_jax.data.io import loader
from mode_jax.eval import validation
from mode_jax.train import runs


def run(config, workdir: str):
  ckpt_lib.check_directory(runs.ckpt_dir(config, workdir, runs.SEED_DIR))   # before any work
  paths = loader.shard_paths(config.input.shards, workdir)
  index = loader.load_index(runs.input_config(config), workdir)
  p = runs.plan(config, len(index))
  decision = runs.decide(config, workdir, runs.SEED_DIR, "seed",
                         {"data": runs.data_input(config, workdir, paths)},
                         final_step=p["seed"])
  return runs.fit_once(config, workdir, runs.SEED_DIR, "seed", decision,
                       f"training the seed to step {p['seed']}", index_fn=lambda: index,
                       files={runs.PLAN: dict(p, num_samples=len(index))},
                       num_steps=p["seed"], schedule_steps=p["total"], milestones=(p["seed"],),
                       **(validation.hooks(config, workdir, p["steps_per_epoch"],
                                           runs.SEED_DIR) if decision.todo else {}))
