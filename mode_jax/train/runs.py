"""The MoDE training runs of a workdir (docs/method.md steps 5-6): plan, directories, forks.

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
<workdir>/<run>/ckpt, or under config.checkpoint_root/<workdir namespace>
(see `ckpt_dir`).

Provenance (mode_jax/provenance.py): each run keeps <run>/manifest.json with
the fingerprint of its training fields and inputs (the data's content for
the seed; the seed's and the assignment's manifests for an expert; the
seed's for dense). A run made from other inputs is moved to stale/ with its
checkpoints before training starts, so a checkpoint is only ever resumed by
the run that made it.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from mode_jax import checkpoint as ckpt_lib
from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import digests, loader
from mode_jax.models.clip import text_features
from mode_jax.text import encoders
from mode_jax.train import text_inputs, trainer

SEED_DIR, DENSE_DIR, EXPERTS_DIR = "seed", "dense", "experts"
PLAN = f"{SEED_DIR}/plan.json"

# The config fields that decide what a training run computes (its provenance): model,
# optimiser, loss, batch, seed, schedule, input stream and augmentation.
TRAINING_FIELDS = ("model", "optim", "loss", "batch_size", "seed", "mode", "input")
# ... less the ones that change how it runs, not what it computes: kernels and memory
# policy (same maths), the data's location (its content is an input of its own), workers
# and buffers. accum_steps is exact accumulation (state.make_train_step): how, too. Public
# weights (init.pretrained) are an input by content (decide), not by path.
HOW_FIELDS = ("model.attention", "model.remat", "input.shards", "input.num_workers",
              "input.read_threads", "input.prefetch", "input.worker_buffer", "input.index_dir",
              "input.index_threads", "input.batch_size", "input.resolution")


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


def training_fields(config) -> dict:
  """The config fields a training run is keyed by. A locked text tower adds the caption
  encoder's fields (its evaluation encodes prompts with it); a token tower leaves
  model.text.features out, as manifests made before the field existed do."""
  fields = provenance.select(config, TRAINING_FIELDS, HOW_FIELDS)
  text = (fields.get("model") or {}).get("text") or {}
  if "features" in text and not text["features"]:
    del text["features"]
  elif "model" in config and text_features(config.model):
    fields["embed"] = encoders.what_fields(encoders.resolve_config(config.get("embed")))
  return fields


def workdir_namespace(workdir: str) -> str:
  """<workdir name>-<hash of its full path>: this workdir's folder under a shared
  checkpoint_root, so two experiments sharing one root never see each other's runs."""
  resolved = wd.resolve(workdir)
  return f"{wd.basename(resolved)}-{provenance.digest(resolved, 8)}"


def ckpt_root(config, workdir: str) -> str:
  """The workdir, or <checkpoint_root>/<workdir namespace> when checkpoint_root is set."""
  root = config.get("checkpoint_root", "")
  return wd.path(root, workdir_namespace(workdir)) if root else workdir


def ckpt_dir(config, workdir: str, run_rel: str) -> str:
  """Checkpoint directory of a run: <ckpt_root>/<run_rel>/ckpt."""
  return wd.path(ckpt_root(config, workdir), *run_rel.split("/"), "ckpt")


def run_dir(workdir: str, run_rel: str) -> str:
  return wd.path(workdir, *run_rel.split("/"))


def data_input(config, workdir: str, paths=None) -> provenance.Input:
  """The training shards as an input of a run: their names and contents."""
  paths = paths if paths is not None else loader.shard_paths(config.input.shards, workdir)
  return provenance.Input(digests.fingerprint(paths, workdir), {"shards": len(paths)},
                          "training data")


def decide(config, workdir: str, run_rel: str, stage: str, inputs: dict, *,
           extra_fields: dict | None = None, final_step: int | None = None
           ) -> provenance.Decision:
  """The provenance decision of one training run (seed, an expert, dense): its training
  fields (+ extra_fields) and inputs; `final_step`: the checkpoint a done run must hold."""
  ck = ckpt_dir(config, workdir, run_rel)
  complete = final_step is None or wd.exists(wd.path(ck, str(final_step)))
  if config.get("init") and config.init.get("pretrained"):
    inputs = dict(inputs, pretrained=provenance.Input(provenance.tree_digest(
        config.init.pretrained, digests.memo_dir(workdir)), {}, "pretrained weights"))
  if "model" in config and text_features(config.model):   # a locked text tower reads embed/
    inputs = dict(inputs, **text_inputs.features_input(workdir))
  return provenance.decide(
      workdir, run_rel, stage, dict(training_fields(config), **(extra_fields or {})), inputs,
      outputs_exist=wd.exists(run_dir(workdir, run_rel)) or wd.exists(ck), complete=complete)


def start(config, workdir: str, run_rel: str, decision: provenance.Decision) -> None:
  """On process 0: a run made from other inputs (run dir and checkpoints) moves to
  stale/, then the running manifest is written."""
  distributed.on_primary(f"{run_rel} start", lambda: provenance.start(
      workdir, run_rel, decision,
      stale=[(run_dir(workdir, run_rel), workdir),
             (ckpt_dir(config, workdir, run_rel), ckpt_root(config, workdir))]))


def finish(workdir: str, run_rel: str, decision: provenance.Decision, **facts) -> None:
  distributed.on_primary(f"{run_rel} finish",
                         lambda: provenance.finish(workdir, run_rel, decision, **facts))


def begin(config, workdir: str, run_rel: str, stage: str, decision: provenance.Decision,
          doing: str, num_steps: int) -> bool:
  """A training run's one line (up to date, or why it trains) and, when it trains, its
  stale outputs moved aside and its running manifest; False when there is nothing to do."""
  if not decision.todo:
    if distributed.is_primary():
      print(f"{stage}: up to date (step {num_steps}, fingerprint {decision.fingerprint})")
    return False
  if distributed.is_primary():
    print(provenance.say(stage, decision, doing))
  start(config, workdir, run_rel, decision)
  return True


def fit_once(config, workdir: str, run_rel: str, stage: str, decision: provenance.Decision,
             doing: str, *, index_fn, files=None, **fit_kw):
  """One run of a training stage under its provenance decision: up to date -> one line and
  None; else the one line of why, stale outputs aside, `files` ({rel: json} the run writes
  beside its outputs, e.g. the seed's plan), training (`index_fn()` gives the sample
  index), the done manifest; returns the trainer's result."""
  if not begin(config, workdir, run_rel, stage, decision, doing, fit_kw["num_steps"]):
    return None
  if files:
    distributed.on_primary(f"{run_rel} files", lambda: [
        wd.write_json(wd.path(workdir, rel), obj) for rel, obj in files.items()])
  result = fit(config, workdir, run_rel, index=index_fn(), desc=stage, **fit_kw)
  finish(workdir, run_rel, decision, step=fit_kw["num_steps"])
  return result


def expert_rel(c: int) -> str:
  return f"{EXPERTS_DIR}/{c}"


def read_plan(workdir: str) -> dict:
  return wd.read_json(wd.require(workdir, PLAN, "seed"))


def current_seed(config, workdir: str) -> provenance.Input:
  """The finished seed as an input of a run forked from it; StaleInput when the seed was made
  from other training data or training fields than `config` names (run `seed` again)."""
  got = provenance.upstream(workdir, SEED_DIR, "seed", "seed", ("step",))
  now = decide(config, workdir, SEED_DIR, "seed", {"data": data_input(config, workdir)})
  if now.fingerprint != got.fingerprint:
    raise wd.StaleInput(provenance.manifest_path(workdir, SEED_DIR), "seed",
                        provenance.explain(provenance.read(workdir, SEED_DIR), now.manifest))
  return got


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
        index=None, indices=None, init=None, milestones=(), desc: str = "train",
        evaluators=(), eval_every: int = 0):
  """Trains run_rel until num_steps on all data (or `indices`), resuming if possible;
  `evaluators` (trainer.train's) run every `eval_every` global steps and at the last."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.update(dict(num_steps=num_steps, schedule_steps=schedule_steps,
                milestones=tuple(milestones), ckpt_dir=ckpt_dir(config, workdir, run_rel),
                eval_every=eval_every if evaluators else 0))
  if init:
    c.init.update(init)
  in_cfg = input_config(config)
  if index is None:
    index = loader.load_index(in_cfg, workdir)
  tokenize = text_inputs.training_tokenize(config, workdir, index)

  def input_fn(cfg, mesh):
    return loader.train_iterator(in_cfg, workdir, tokenize, index=index, indices=indices)

  return trainer.train(c, run_dir(workdir, run_rel), input_fn=input_fn, desc=desc,
                       evaluators=evaluators)


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


class FinishedModel(NamedTuple):
  ckpt_dir: str
  step: int
  fingerprint: str   # its run's manifest: what evaluation results are keyed by


def finished_models(config, workdir: str) -> dict[str, FinishedModel]:
  """model name -> FinishedModel for the dense baseline and every expert.

  MissingInput (naming the stage that trains it) for a model whose run has
  not finished (no done manifest, or no checkpoint at the final step);
  StaleInput for one trained with other training fields than `config`'s.
  """
  want = final_step(workdir)
  runs = {"dense": (DENSE_DIR, "dense")}
  runs.update({f"expert_{c}": (expert_rel(c), "experts") for c in range(config.cluster.n)})
  now = provenance.as_stored(training_fields(config))
  out = {}
  for name, (rel, stage) in runs.items():
    ck_dir = ckpt_dir(config, workdir, rel)
    fp = provenance.upstream(workdir, rel, stage, name).fingerprint
    made = provenance.read(workdir, rel)
    was = {k: made.get("fields", {}).get(k) for k in now}
    if was != now:   # trained with another recipe than config names: not this config's model
      raise wd.StaleInput(provenance.manifest_path(workdir, rel), stage, provenance.explain(
          {"fields": was}, {"stage": stage, "inputs": {}, "fields": now}))
    if not wd.exists(wd.path(ck_dir, str(want))):
      raise wd.MissingInput(wd.path(ck_dir, str(want)), stage)
    out[name] = FinishedModel(ck_dir, want, fp)
  return out
