"""The linear probe of one task (paper Table 9): features, split, one probe per model + concat.

Per model (the dense baseline, each expert, any public CLIP) and `concat` (the
experts' features side by side, the paper's MoDE probe), a multinomial
logistic regression (linear_probe.py) with its L2 penalty chosen on a
validation split of the fitting images. A task's fitting images are its
`train` split when it has one; otherwise a seeded stratified `holdout`
share of the test images scores the probe and the rest fits it. The penalty
is chosen and the probe scored in the task's metric.
"""

from __future__ import annotations

import functools

import numpy as np
from tqdm import tqdm

from mode_jax.eval import features
from mode_jax.eval import files
from mode_jax.eval import zeroshot
from mode_jax.eval.linear_probe import holdout_split, select_and_fit

SEED = 0


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


def probe_splits(task, labels_test, holdout: float):
  """'train' when the task has a train split, else (train_idx, test_idx) of a holdout."""
  if task.train_pattern:
    return "train", None
  return "holdout", holdout_split(labels_test, holdout, SEED)


def probe_task(task, per_model: dict, holdout: float) -> dict:
  """Fits and scores every model's probe (and `concat` of the experts) on one task."""
  experts = files.expert_names(per_model)
  if len(experts) > 1:
    per_model["concat"] = {s: (np.concatenate([per_model[m][s][0] for m in experts], axis=1),
                               per_model[experts[0]][s][1]) for s in per_model[experts[0]]}
  first = next(iter(per_model.values()))
  split, idx = probe_splits(task, first["test"][1], holdout)
  out = {"task": task.name, "metric": task.metric, "split": split, "models": {}}
  score = functools.partial(zeroshot.task_score, task.metric)
  for m, got in per_model.items():
    if split == "train":
      (xtr, ytr), (xte, yte) = got["train"], got["test"]
    else:
      x, y = got["test"]
      (xtr, ytr), (xte, yte) = (x[idx[0]], y[idx[0]]), (x[idx[1]], y[idx[1]])
    r = select_and_fit(xtr, ytr, xte, yte, n_classes=len(task.classnames), seed=SEED,
                       score=score)   # unlabelled rows are left out there
    out["models"][m] = {"score": float(r["score"]), "l2": float(r["l2"])}
    out.update(n_train=int(r["n_train"]), n_val=int(r["n_val"]), n_test=int(r["n_test"]))
  return out
