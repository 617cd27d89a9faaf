"""The MoDE training runs of a workdir (DESIGN.md steps 5-6): plan, directories, forks.

  seed/         one dense CLIP on all data for seed_epochs of the planned
                total_epochs (paper: 27 of 32); its last step is a milestone
                checkpoint that clean-up never deletes
  experts/<c>/  expert c resumes the seed's full state (params, Adam moments,
                step) and continues the same cosine schedule on its own stream
                (in-cluster samples + 2% out-of-cluster) for the remaining
                epochs; an expert "epoch" is still a full data set of samples
  dense/        baseline: the seed continued on all data for as many steps as
                one expert (so it costs what an expert costs)

Step counts follow the data: steps_per_epoch = round(N / batch_size); the
seed writes them to seed/plan.json. Every host runs every run: training
splits each global batch over all devices of all hosts. Checkpoints live in
<workdir>/<run>/ckpt, or under config.checkpoint_root (see `ckpt_dir`).
"""

from __future__ import annotations

import functools

import ml_collections

from mode_jax import checkpoint as ckpt_lib
from mode_jax import workdir as wd
from mode_jax.data.io import loader
from mode_jax.train import trainer

SEED_DIR, DENSE_DIR, EXPERTS_DIR = "seed", "dense", "experts"
PLAN = f"{SEED_DIR}/plan.json"


def plan(config, n_samples: int) -> dict:
  """Step counts of the planned run: total (schedule), seed, and per expert."""
  spe = max(1, round(n_samples / config.batch_size))
  total = max(2, round(config.mode.total_epochs * spe))
  seed = min(total - 1, max(1, round(config.mode.seed_epochs * spe)))
  return {"steps_per_epoch": spe, "total": total, "seed": seed, "expert": total - seed}


def input_config(config) -> ml_collections.ConfigDict:
  """config.input with the batch size and image resolution of the model."""
  c = ml_collections.ConfigDict(config.input.to_dict())
  c.batch_size = config.batch_size
  c.resolution = config.model.image_size
  return c


def clip_tokenizer():
  """The CLIP BPE tokenizer; call as tok(texts, context_length=...)."""
  from mode_jax.text.clip_bpe import ClipTokenizer
  return ClipTokenizer()


def ckpt_dir(config, workdir: str, run_rel: str) -> str:
  """Checkpoint directory of a run: <checkpoint_root or workdir>/<run_rel>/ckpt."""
  root = config.get("checkpoint_root", "") or workdir
  return wd.path(root, *run_rel.split("/"), "ckpt")


def expert_rel(c: int) -> str:
  return f"{EXPERTS_DIR}/{c}"


def read_plan(workdir: str) -> dict:
  return wd.read_json(wd.require(workdir, PLAN, "seed"))


def seed_step(config, workdir: str) -> int:
  """The milestone step experts fork from; MissingInput when the seed has not reached it."""
  step = read_plan(workdir)["seed"]
  ck = ckpt_lib.Checkpointer(ckpt_dir(config, workdir, SEED_DIR))
  try:
    steps = ck.all_steps()
  finally:
    ck.close()
  if step not in steps:
    raise wd.MissingInput(wd.path(ck.directory, str(step)), "seed")
  return step


def fork(config, workdir: str, step: int, **extra) -> dict:
  """config.init of a run that starts from the seed's full state at `step`."""
  return {"checkpoint": ckpt_dir(config, workdir, SEED_DIR), "step": step, **extra}


def fit(config, workdir: str, run_rel: str, *, num_steps: int, schedule_steps: int,
        index=None, indices=None, init=None, milestones=(), desc: str = "train"):
  """Trains run_rel until num_steps on all data (or `indices`), resuming if possible."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.update(dict(num_steps=num_steps, schedule_steps=schedule_steps,
                milestones=tuple(milestones), ckpt_dir=ckpt_dir(config, workdir, run_rel)))
  if init:
    c.init.update(init)
  run_dir = wd.path(workdir, *run_rel.split("/"))
  tokenize = functools.partial(clip_tokenizer(), context_length=config.model.context_length)
  in_cfg = input_config(config)

  def input_fn(cfg, mesh):
    return loader.train_iterator(in_cfg, workdir, tokenize, index=index, indices=indices)

  return trainer.train(c, run_dir, input_fn=input_fn, desc=desc)


def expert_ids(config) -> list[int]:
  """config.expert alone (an independent job), or every expert of config.cluster.n."""
  n = config.cluster.n
  if config.expert >= n:
    raise ValueError(f"config.expert={config.expert} but config.cluster.n={n}")
  return [config.expert] if config.expert >= 0 else list(range(n))


def final_step(workdir: str) -> int:
  """The step every finished expert and the dense baseline end at."""
  p = read_plan(workdir)
  return p["seed"] + p["expert"]


def finished_models(config, workdir: str) -> dict[str, tuple[str, int]]:
  """model name -> (checkpoint dir, final step) for the dense baseline and every expert.

  MissingInput (naming the stage that trains it) for a model that has not
  reached the final step.
  """
  want = final_step(workdir)
  runs = {"dense": (DENSE_DIR, "dense")}
  runs.update({f"expert_{c}": (expert_rel(c), "experts") for c in range(config.cluster.n)})
  out = {}
  for name, (rel, stage) in runs.items():
    ck_dir = ckpt_dir(config, workdir, rel)
    step = None
    if wd.isdir(ck_dir):
      ck = ckpt_lib.Checkpointer(ck_dir)
      try:
        step = ck.latest_step()
      finally:
        ck.close()
    if step != want:
      raise wd.MissingInput(wd.path(ck_dir, str(want)), stage)
    out[name] = (ck_dir, want)
  return out
