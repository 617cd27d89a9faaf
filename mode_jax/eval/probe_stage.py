"""The probe stage (paper Table 9): logistic regression on frozen image features.

  python launch.py probe --config configs/demo.py --workdir W

Per zero-shot task of config.evaluate and per model (the dense baseline,
each expert, any public CLIP of config.evaluate.models) plus `concat` (the
experts' features side by side, the paper's MoDE probe), a multinomial
logistic regression (eval/linear_probe.py) with its L2 penalty chosen on a
validation split of the training images. A task's training images are its
`train` split when the folder has one (CLIP_benchmark layout); otherwise a
seeded stratified `config.evaluate.probe_holdout` share of the test images
is held out for scoring and the rest fits the probe (split "holdout" in
the results; the demo's tasks have no train split). The penalty is chosen
and the probe scored in the task's metric (mean per-class accuracy for
Pets, ...). Writes probe/<task>.json, which the report tabulates; skipped
when the models, the task and the split are unchanged. Features of every
model and task are held in host memory at once (about 2.6 GB for ImageNet's
train split per B/16-sized model): fine for the demo and mid-size tasks.
"""

from __future__ import annotations

import functools

import numpy as np
from tqdm import tqdm

from mode_jax import distributed
from mode_jax import workdir as wd
from mode_jax.eval import evaluate_stage as es
from mode_jax.eval import features
from mode_jax.eval import files
from mode_jax.eval import linear_probe
from mode_jax.eval import tasks as tasks_lib
from mode_jax.eval import zeroshot

SEED = 0


def probe_rel(task: str) -> str:
  return f"probe/{task}.json"


def image_features(embed_images, batches, desc="features") -> tuple[np.ndarray, np.ndarray]:
  """(float32 [N, E] L2-normalised image features, int32 labels [N]) of a whole split,
  every host's rows gathered in index order."""
  feats, labels, index = [], [], []
  for images, y, idx in tqdm(batches, desc=desc, leave=False):
    feats.append(np.asarray(embed_images(np.asarray(images)), np.float32))
    labels.append(np.asarray(y, np.int32))
    index.append(np.asarray(idx, np.int64))
  if not feats:
    raise ValueError("no image batches")
  _, x, y = features.gather_rows(np.concatenate(index), np.concatenate(feats),
                                 np.concatenate(labels))
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), features.EPS)
  return x.astype(np.float32), y


def splits(task, labels_test, holdout: float):
  """'train' when the task has a train split, else (train_idx, test_idx) of a holdout."""
  if task.train_pattern:
    return "train", None
  return "holdout", linear_probe.holdout_split(labels_test, holdout, SEED)


def run_probe(config, workdir: str):
  cfg = es.eval_config(config)
  tasks, _ = tasks_lib.resolve(cfg, workdir)
  tasks = {n: t for n, t in tasks.items() if t.kind == "zeroshot"}
  if not tasks:
    raise ValueError("the probe needs zero-shot tasks; config.evaluate has none")
  models = es.eval_models(config, workdir)
  fps = {n: tasks_lib.fingerprint(t, workdir) for n, t in tasks.items()}
  # what the results depend on: the models, the task, and the split
  idents = {"models": {n: m.ident for n, m in models.items()}, "seed": SEED,
            "holdout": float(cfg.probe_holdout)}
  todo = [n for n in tasks if not _up_to_date(workdir, n, idents, fps[n])]
  if not todo:
    return {}
  from mode_jax import pipeline
  mesh = pipeline.eval_mesh()
  feats = {n: {} for n in todo}   # task -> model -> {"train": (x, y), "test": (x, y)}
  for name, ref in models.items():
    embed_images, _, res, _ = es.make_embedders(config, ref, mesh)
    in_cfg = es.input_config(config, res)
    for n in todo:
      t = tasks[n]
      got = {"test": image_features(embed_images, es.batches(
          in_cfg, workdir, t.pattern, config.eval_batch_size), desc=f"{name} {n}")}
      if t.train_pattern:
        got["train"] = image_features(embed_images, es.batches(
            in_cfg, workdir, t.train_pattern, config.eval_batch_size), desc=f"{name} {n} train")
      feats[n][name] = got
  results = {}
  for n in todo:
    try:
      results[n] = probe_task(tasks[n], feats.pop(n), float(cfg.probe_holdout))
    except ValueError as e:   # a task too small to split: skipped, the others go on
      if distributed.is_primary():
        print(f"[probe] skipped {n}: {e}")
      continue
    results[n]["idents"], results[n]["fingerprint"] = idents, fps[n]
    distributed.on_primary(f"probe {n}", lambda n=n: wd.write_json(
        wd.path(workdir, probe_rel(n)), results[n]))
    if distributed.is_primary():
      print(f"[probe] {n}: " + ", ".join(f"{m} {100 * r['score']:.1f}"
                                         for m, r in results[n]["models"].items()))
  return results


def _up_to_date(workdir, task, idents, fp) -> bool:
  p = wd.path(workdir, probe_rel(task))
  if not wd.exists(p):
    return False
  old = wd.read_json(p)
  return old.get("idents") == idents and old.get("fingerprint") == fp


def probe_task(task, per_model: dict, holdout: float) -> dict:
  """Fits and scores every model's probe (and `concat` of the experts) on one task."""
  experts = files.expert_names(per_model)
  if len(experts) > 1:
    per_model["concat"] = {s: (np.concatenate([per_model[m][s][0] for m in experts], axis=1),
                               per_model[experts[0]][s][1]) for s in per_model[experts[0]]}
  first = next(iter(per_model.values()))
  split, idx = splits(task, first["test"][1], holdout)
  out = {"task": task.name, "metric": task.metric, "split": split, "models": {}}
  score = functools.partial(zeroshot.task_score, task.metric)
  for m, got in per_model.items():
    if split == "train":
      (xtr, ytr), (xte, yte) = got["train"], got["test"]
    else:
      x, y = got["test"]
      (xtr, ytr), (xte, yte) = (x[idx[0]], y[idx[0]]), (x[idx[1]], y[idx[1]])
    keep_tr, keep_te = ytr >= 0, yte >= 0    # unlabelled rows cannot train or score
    r = linear_probe.select_and_fit(xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te],
                                    n_classes=len(task.classnames), seed=SEED, score=score)
    out["models"][m] = {"score": float(r["score"]), "l2": float(r["l2"])}
    out.update(n_train=int(r["n_train"]), n_val=int(r["n_val"]), n_test=int(r["n_test"]))
  return out
