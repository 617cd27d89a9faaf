"""MoDE stages from the seed on (DESIGN.md steps 5-8), and the whole pipeline.

  seed      one dense CLIP on all data for seed_epochs of the planned
            total_epochs (paper: 27 of 32); its last step is a milestone
            checkpoint that clean-up never deletes.
  experts   each expert resumes the seed's full state (params, Adam moments,
            step) and continues the same cosine schedule on its own stream
            (in-cluster samples + 2% out-of-cluster) for the remaining epochs,
            where an expert "epoch" is still a full data set of samples.
            `expert=c` trains only expert c (independent jobs; adding an
            expert later trains only that one).
  dense     baseline: the seed continued on all data for as many steps as one
            expert (so it costs what an expert costs).
  evaluate  every finished model on every evaluation task of shards/eval/ ->
            eval/<model>/<task>.npz (raw cosine logits), plus the task
            metadata embeddings eval/meta_emb/<task>.npy with the clustering's
            sentence encoder; skipped per (model, task) when up to date.

Step counts follow the data: steps_per_epoch = round(N / batch_size).

Every host runs every stage (the same command everywhere): training and
evaluation split each global batch over all devices of all hosts; shared
files (plan.json, eval/) are written by process 0. Checkpoints live in
<workdir>/<run>/ckpt, or under config.checkpoint_root when the workdir is on
a store Orbax cannot write (s3://, see train/checkpoint.py).
"""

from __future__ import annotations

import functools

import ml_collections
from flax import nnx

from mode_jax import distributed
from mode_jax import workdir as wd
from mode_jax.data import expert_stream as expert_lib
from mode_jax.data.io import loader
from mode_jax.train import checkpoint as ckpt_lib
from mode_jax.train import sharding
from mode_jax.train import state as state_lib
from mode_jax.train import trainer

SEED_DIR, DENSE_DIR, EXPERTS_DIR = "seed", "dense", "experts"


# ---- plan -----------------------------------------------------------------------------

def plan(config, n_samples: int) -> dict:
  """Step counts of the planned run: total (schedule), seed, and per expert."""
  spe = max(1, round(n_samples / config.batch_size))
  total = max(2, round(config.mode.total_epochs * spe))
  seed = min(total - 1, max(1, round(config.mode.seed_epochs * spe)))
  return {"steps_per_epoch": spe, "total": total, "seed": seed, "expert": total - seed}


def _input_cfg(config):
  c = ml_collections.ConfigDict(config.input.to_dict())
  c.batch_size = config.batch_size
  c.resolution = config.model.image_size
  return c


def clip_tokenizer():
  """The CLIP BPE tokenizer; call as tok(texts, context_length=...)."""
  from mode_jax.text.clip_bpe import ClipTokenizer
  return ClipTokenizer()


def _run_config(config, **fields):
  c = ml_collections.ConfigDict(config.to_dict())
  c.update(fields)
  return c


def ckpt_dir(config, workdir: str, run_rel: str) -> str:
  """Checkpoint directory of a run: <checkpoint_root or workdir>/<run_rel>/ckpt."""
  root = config.get("checkpoint_root", "") or workdir
  return wd.path(root, *run_rel.split("/"), "ckpt")


def _seed_step(config, workdir) -> int:
  """The milestone step experts fork from; MissingInput when the seed has not reached it."""
  meta = wd.require(workdir, wd.path(SEED_DIR, "plan.json"), "seed")
  step = wd.read_json(meta)["seed"]
  ck = ckpt_lib.Checkpointer(ckpt_dir(config, workdir, SEED_DIR))
  steps = ck.all_steps()
  ck.close()
  if step not in steps:
    raise wd.MissingInput(wd.path(ck.directory, str(step)), "seed")
  return step


def _fit(config, workdir, run_rel, *, num_steps, schedule_steps, indices=None, index=None,
         init=None, milestones=(), desc="train"):
  """Trains run_rel until num_steps on all data (or `indices`), resuming if possible."""
  c = _run_config(config, num_steps=num_steps, schedule_steps=schedule_steps,
                  milestones=tuple(milestones), ckpt_dir=ckpt_dir(config, workdir, run_rel))
  if init:
    c.init.update(init)
  run_dir = wd.path(workdir, *run_rel.split("/"))
  tokenize = functools.partial(clip_tokenizer(), context_length=config.model.context_length)
  in_cfg = _input_cfg(config)

  def input_fn(cfg, mesh):
    return loader.train_iterator(in_cfg, workdir, tokenize, index=index, indices=indices)

  return trainer.train(c, run_dir, input_fn=input_fn, desc=desc)


# ---- stages ---------------------------------------------------------------------------

def run_seed(config, workdir: str):
  """Dense seed on all training data until seed_epochs; the fork step is kept forever."""
  ckpt_lib.check_directory(ckpt_dir(config, workdir, SEED_DIR))   # before any work
  index = loader.load_index(_input_cfg(config), workdir)
  p = plan(config, len(index))
  distributed.on_primary("seed plan", lambda: wd.write_json(
      wd.path(workdir, SEED_DIR, "plan.json"), dict(p, num_samples=len(index))))
  return _fit(config, workdir, SEED_DIR, num_steps=p["seed"], schedule_steps=p["total"],
              index=index, milestones=(p["seed"],), desc="seed")


def expert_ids(config) -> list[int]:
  n = config.cluster.n
  if config.expert >= n:
    raise ValueError(f"config.expert={config.expert} but config.cluster.n={n}")
  return [config.expert] if config.expert >= 0 else list(range(n))


def _fork(config, workdir, seed_step, **extra) -> dict:
  return {"checkpoint": ckpt_dir(config, workdir, SEED_DIR), "step": seed_step, **extra}


def run_experts(config, workdir: str):
  """Forks each expert (or only config.expert) from the seed and trains it on its stream."""
  seed_step = _seed_step(config, workdir)
  index = loader.load_index(_input_cfg(config), workdir)
  p = wd.read_json(wd.path(workdir, SEED_DIR, "plan.json"))
  results = {}
  for c in expert_ids(config):
    es = ml_collections.ConfigDict(config.expert_stream.to_dict())
    es.expert = c
    stream = expert_lib.expert_stream(es, workdir, index)
    print(f"[expert {c}] {stream.num_in_cluster} in-cluster + {stream.num_ooc} out-of-cluster "
          f"samples; one expert epoch = {stream.passes_per_epoch:.1f} passes over them")
    results[c] = _fit(config, workdir, f"{EXPERTS_DIR}/{c}",
                      num_steps=seed_step + p["expert"], schedule_steps=p["total"],
                      index=index, indices=stream.indices,
                      init=_fork(config, workdir, seed_step), desc=f"expert {c}")
  return results


def run_dense(config, workdir: str):
  """The dense baseline: the seed continued on all data for one expert's steps.

  It continues the seed's data stream where the seed stopped (position from
  the seed's milestone checkpoint), exactly as one uninterrupted run would:
  a fresh stream would replay the seed's first epochs (same order, crops
  and captions).
  """
  seed_step = _seed_step(config, workdir)
  index = loader.load_index(_input_cfg(config), workdir)
  p = wd.read_json(wd.path(workdir, SEED_DIR, "plan.json"))
  return _fit(config, workdir, DENSE_DIR, num_steps=seed_step + p["expert"],
              schedule_steps=p["total"], index=index,
              init=_fork(config, workdir, seed_step, continue_data=True), desc="dense")


# ---- evaluation -----------------------------------------------------------------------

def finished_models(config, workdir: str) -> dict[str, tuple[str, int]]:
  """model name -> (checkpoint dir, final step) for the dense baseline and every expert."""
  p = wd.read_json(wd.require(workdir, wd.path(SEED_DIR, "plan.json"), "seed"))
  want = p["seed"] + p["expert"]
  runs = {"dense": (DENSE_DIR, "dense")}
  runs.update({f"expert_{c}": (f"{EXPERTS_DIR}/{c}", "experts")
               for c in range(config.cluster.n)})
  out = {}
  for name, (rel, stage) in runs.items():
    ck_dir = ckpt_dir(config, workdir, rel)
    step = ckpt_lib.Checkpointer(ck_dir).latest_step() if wd.isdir(ck_dir) else None
    if step != want:
      raise wd.MissingInput(wd.path(ck_dir, str(want)), stage)
    out[name] = (ck_dir, want)
  return out


def eval_mesh():
  """Every device of every host on one axis: evaluation splits its batches over all."""
  return sharding.make_mesh({"data": -1, "fsdp": 1})


def load_model(config, ck_dir: str, step: int, mesh=None):
  """The CLIP of checkpoint dir `ck_dir` at `step`, parameters only, replicated on `mesh`."""
  mesh = mesh or eval_mesh()
  graphdef, _, abstract, shardings, _ = state_lib.build(
      config.model, config.optim, schedule_steps=2, mesh=mesh, rules=[(".*", "replicate")])
  ck = ckpt_lib.Checkpointer(ck_dir)
  params = ck.restore_params(ckpt_lib.abstract_with_shardings(abstract, shardings), step)
  ck.close()
  return nnx.merge(graphdef, params)


def eval_tasks(workdir: str) -> dict[str, dict]:
  """shards/eval/<task>.json of the workdir's own evaluation tasks."""
  from mode_jax.eval import tasks
  return {n: t.spec() for n, t in tasks.workdir_tasks(workdir).items()}


def run_evaluate(config, workdir: str):
  """Every model on every task of config.evaluate (mode_jax/eval/evaluate_stage.py)."""
  from mode_jax.eval import evaluate_stage
  return evaluate_stage.run_evaluate(config, workdir)


# ---- everything -----------------------------------------------------------------------

def run_pipeline(config, workdir: str):
  """Every stage in order; each skips what is already done, so re-running resumes.

  The training fields are checked first: a bad config stops before prepare.
  """
  from mode_jax import stages
  trainer.check_config(config)
  order = [("prepare", stages.run_prepare), ("embed", stages.run_embed),
           ("cluster", stages.run_cluster), ("assign", stages.run_assign),
           ("seed", run_seed), ("experts", run_experts), ("dense", run_dense),
           ("evaluate", run_evaluate), ("report", stages.run_report)]
  for name, fn in order:
    if distributed.is_primary():
      print(f"==== {name}", flush=True)
    with wd.io_stage(name):
      fn(config, workdir)
