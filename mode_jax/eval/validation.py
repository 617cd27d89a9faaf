"""Validation while training: the seed, every expert and dense scored on the validation tasks
as they train (issue 23: the learning shown, not just scored); eval/curves.py reads them back.

The seed, experts and dense stages pass `hooks` to runs.fit: every
config.val_every_epochs epochs of the global schedule, and at a run's last
step, each workdir task with "split": "validation" (shards/eval/, never a
held-out task; within config.evaluate.tasks when it names some) is scored
as the report scores it, with the model being trained, on the training mesh
(every host runs it; images and prompts are split as in the evaluate stage).
The scores go to the run's metrics (metrics.jsonl and TensorBoard) as
`val/<task>`; the epoch axis is global, so an expert's points continue the
seed's from the step it forked at. <run>/validation.json records which task
data they were scored on (each task's fingerprint, as the evaluate stage
keys it): the report shows a curve only while its task is the one evaluated.

Scoring does not touch the training state or its data stream, so a run with
curves trains bit for bit as one without; the cadence and the tasks are how
a run reports, not what it computes, and are not part of its fingerprint (a
finished run is not retrained to draw a curve it lacks).
"""

from __future__ import annotations

import jax
from flax import nnx

from mode_jax import distributed
from mode_jax import workdir as wd
from mode_jax.eval import curves
from mode_jax.eval import evaluate as ev
from mode_jax.eval import model_refs
from mode_jax.eval import tasks as tasks_lib
from mode_jax.models import embedders
from mode_jax.train import runs, text_inputs


def validation_tasks(config, workdir: str) -> dict:
  """{name: Task} of the tasks the evaluate stage scores (config.evaluate) that are on the
  validation split; {} when there are none (a CLIP_benchmark suite has no validation
  split; no shards/eval/ yet)."""
  cfg = model_refs.eval_config(config)
  if cfg.get("suite"):
    return {}
  try:
    tasks, _ = tasks_lib.resolve(cfg, workdir)
  except wd.MissingInput:
    return {}
  return {n: t for n, t in tasks.items() if t.split == wd.VALIDATION}


def every(config, steps_per_epoch: int) -> int:
  """Steps between curve points (0 = none): config.val_every_epochs of the plan's epochs."""
  epochs = float(config.get("val_every_epochs", 0) or 0)
  if epochs < 0:
    raise ValueError(f"config.val_every_epochs={epochs} must be >= 0 (0 = no curves)")
  return max(1, round(epochs * steps_per_epoch)) if epochs else 0


def hooks(config, workdir: str, steps_per_epoch: int, run_rel: str) -> dict:
  """runs.fit's evaluators and eval_every for the MoDE training run run_rel (call it when
  the run trains): {} when the config asks for no curves or no validation task is evaluated."""
  step_every = every(config, steps_per_epoch)
  tasks = validation_tasks(config, workdir) if step_every else {}
  if not tasks:
    if step_every and distributed.is_primary():
      print(f"[{run_rel}] no validation task to score while training (no curves)")
    return {}
  return {"evaluators": (make_evaluator(config, workdir, tasks, run_rel, step_every),),
          "eval_every": step_every}


def _mesh_of(model):
  """The mesh the model's parameters live on (the training mesh), None off a mesh."""
  leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
  return getattr(leaf.sharding, "mesh", None)


def make_evaluator(config, workdir: str, tasks: dict, run_rel: str, step_every: int):
  """evaluator(model, step) -> {val/<task>: score in %} for trainer.train; its first call
  (on process 0) writes <run>/validation.json (curves.RECORD): the task data it scores."""
  captions = {n: tasks_lib.captions_per_image(t, workdir) for n, t in tasks.items()
              if t.kind == "retrieval"}
  in_cfg = model_refs.input_config(config, config.model.image_size)
  recorded = False

  def evaluator(model, step):
    nonlocal recorded
    if not recorded and distributed.is_primary():
      wd.write_json(wd.path(runs.run_dir(workdir, run_rel), curves.RECORD),
                    {"tasks": {n: tasks_lib.fingerprint(t, workdir) for n, t in tasks.items()},
                     "every": step_every})
    recorded = True
    embed_images, embed_texts = embedders.make_embedders(
        model, text_inputs.eval_tokenizer(config, config.model),
        context_length=config.model.context_length, batch_size=config.eval_batch_size,
        mesh=_mesh_of(model))
    out = {}
    for name, task in tasks.items():
      data = model_refs.batches(in_cfg, workdir, task.pattern, config.eval_batch_size)
      arrays = ev.evaluate_task(embed_images, embed_texts, name, task.spec(), data,
                                captions.get(name))
      out[curves.PREFIX + name] = ev.task_score(task.spec(), arrays)
    return out

  return evaluator
