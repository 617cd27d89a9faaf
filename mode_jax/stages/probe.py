"""Stage `probe` (paper Table 9): logistic regression on frozen image features.

  python launch.py probe --config configs/demo.py --workdir W

Per zero-shot task of config.evaluate and per model (the dense baseline,
each expert, any public CLIP of config.evaluate.models) plus `concat` (the
experts' features side by side, the paper's MoDE probe), a multinomial
logistic regression (eval/probe.py, eval/linear_probe.py) with its L2 penalty chosen on a
validation split of the training images. A task's training images are its
`train` split when the folder has one (CLIP_benchmark layout); otherwise a
seeded stratified `config.evaluate.probe_holdout` share of the test images
is held out for scoring and the rest fits the probe (split "holdout" in
the results; the demo's tasks have no train split). The penalty is chosen
and the probe scored in the task's metric (mean per-class accuracy for
Pets, ...). Writes probe/<task>.json, which the report tabulates; skipped
when the models, the task (its test and train shards) and the split are
unchanged; results of tasks no longer probed move to stale/. Features of every
model and task are held in host memory at once (about 2.6 GB for ImageNet's
train split per B/16-sized model): fine for the demo and mid-size tasks.
"""

from __future__ import annotations

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import digests, loader
from mode_jax.eval import model_refs as es
from mode_jax.eval import probe
from mode_jax.eval import tasks as tasks_lib


def _probe_rel(task: str) -> str:
  return f"probe/{task}.json"


def run(config, workdir: str):
  cfg = es.eval_config(config)
  tasks, _ = tasks_lib.resolve(cfg, workdir)
  tasks = {n: t for n, t in tasks.items() if t.kind == "zeroshot"}
  if not tasks:
    raise ValueError("the probe needs zero-shot tasks; config.evaluate has none")
  models = es.eval_models(config, workdir)
  fps = {n: _fingerprint(t, workdir) for n, t in tasks.items()}
  distributed.on_primary("probe stale", lambda: _move_orphans(workdir, tasks))
  # what the results depend on: the models, the task, and the split
  idents = {"models": {n: m.fingerprint for n, m in models.items()}, "seed": probe.SEED,
            "holdout": float(cfg.probe_holdout)}
  todo = [n for n in tasks if not _up_to_date(workdir, n, idents, fps[n])]
  if not todo:
    return {}
  mesh = es.eval_mesh()
  feats = {n: {} for n in todo}   # task -> model -> {"train": (x, y), "test": (x, y)}
  for name, ref in models.items():
    embed_images, _, res, _ = es.make_embedders(config, ref, mesh)
    in_cfg = es.input_config(config, res)
    for n in todo:
      t = tasks[n]
      got = {"test": probe.image_features(embed_images, es.batches(
          in_cfg, workdir, t.pattern, config.eval_batch_size), desc=f"{name} {n}")}
      if t.train_pattern:
        got["train"] = probe.image_features(embed_images, es.batches(
            in_cfg, workdir, t.train_pattern, config.eval_batch_size), desc=f"{name} {n} train")
      feats[n][name] = got
  results = {}
  for n in todo:
    try:
      results[n] = probe.probe_task(tasks[n], feats.pop(n), float(cfg.probe_holdout))
    except ValueError as e:   # a task too small to split: skipped, the others go on
      if distributed.is_primary():
        print(f"[probe] skipped {n}: {e}")
      continue
    results[n]["idents"], results[n]["fingerprint"] = idents, fps[n]
    distributed.on_primary(f"probe {n}", lambda n=n: wd.write_json(
        wd.path(workdir, _probe_rel(n)), results[n]))
    if distributed.is_primary():
      print(f"[probe] {n}: " + ", ".join(f"{m} {100 * r['score']:.1f}"
                                         for m, r in results[n]["models"].items()))
  return results


def _fingerprint(task, workdir: str) -> str:
  """The task as evaluate keys it, and its train split's shards when the probe fits on them."""
  train = (digests.fingerprint(loader.shard_paths(task.train_pattern, workdir), workdir)
           if task.train_pattern else None)
  return provenance.digest([tasks_lib.fingerprint(task, workdir), train])


def _move_orphans(workdir: str, tasks: dict) -> None:
  """probe/<task>.json of tasks no longer probed go to stale/ (the report never reads them)."""
  for f in wd.listdir(wd.path(workdir, "probe")):
    if f.endswith(".json") and f[:-5] not in tasks:
      old = wd.read_json(wd.path(workdir, "probe", f)).get("fingerprint")
      where = provenance.move_aside(wd.path(workdir, "probe", f), workdir, old)
      print(f"[probe] {f[:-5]} is no longer probed: moved to {where}")


def _up_to_date(workdir, task, idents, fp) -> bool:
  p = wd.path(workdir, _probe_rel(task))
  if not wd.exists(p):
    return False
  old = wd.read_json(p)
  return old.get("idents") == idents and old.get("fingerprint") == fp
