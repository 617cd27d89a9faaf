"""The probe stage's task logic: holdout split, the concatenated experts, unlabelled rows."""

import numpy as np

from mode_jax.eval import probe
from mode_jax.eval import tasks as tasks_lib


def _task(train=False, metric="top1"):
  return tasks_lib.Task("t", "zeroshot", metric, "x", classnames=["a", "b", "c"],
                        templates=["{c}"], train_pattern="y" if train else None)


def _feats(rng, y, informative):
  """Features where only the columns in `informative` carry the label."""
  x = rng.normal(size=(len(y), 6)).astype(np.float32)
  for j in informative:
    x[:, j] += 4.0 * (y == (j % 3))
  return x


def test_concat_of_experts_sees_what_each_expert_sees():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 40)
  y[:2] = -1   # padding / bad samples never train or score
  # expert_0 sees class 0, expert_1 class 1: alone each confuses the other two classes,
  # side by side they separate all three
  per_model = {"expert_0": {"test": (_feats(rng, y, [0]), y)},
               "expert_1": {"test": (_feats(rng, y, [1]), y)},
               "dense": {"test": (_feats(rng, y, [0, 1, 2]), y)}}
  out = probe.probe_task(_task(), per_model, holdout=0.5)
  assert out["split"] == "holdout" and set(out["models"]) == {"expert_0", "expert_1", "dense",
                                                               "concat"}
  s = {m: r["score"] for m, r in out["models"].items()}
  assert max(s["expert_0"], s["expert_1"]) < 0.8 and s["concat"] > 0.9 and s["dense"] > 0.9
  assert out["n_train"] + out["n_test"] == 118      # the two unlabelled rows left out


def test_a_train_split_is_used_when_present():
  rng = np.random.default_rng(1)
  ytr, yte = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
  per_model = {"dense": {"train": (_feats(rng, ytr, [0, 1, 2]), ytr),
                         "test": (_feats(rng, yte, [0, 1, 2]), yte)}}
  out = probe.probe_task(_task(train=True), per_model, holdout=0.5)
  assert out["split"] == "train" and out["n_train"] == 90 and out["n_test"] == 30
  assert out["models"]["dense"]["score"] > 0.9


def test_a_task_too_small_to_split_is_refused_not_scored_nan():
  """Regression: an empty validation part gave NaN accuracies and an arbitrary l2."""
  import pytest
  y = np.array([0, 1, 2, 0, 1, 2])
  x = np.eye(6, dtype=np.float32)
  with pytest.raises(ValueError, match="too few images"):
    probe.probe_task(_task(), {"dense": {"test": (x, y)}}, holdout=0.5)


def test_the_probe_scores_in_the_task_metric():
  """Regression: the probe scored top-1 for mean-per-class tasks (Pets, Flowers, ...)."""
  rng = np.random.default_rng(2)
  y = np.repeat(np.arange(3), [80, 20, 20])            # imbalanced: the two metrics differ
  x = _feats(rng, y, [0]) * 0.3                          # weak signal: mistakes on rare classes
  out = {m: probe.probe_task(_task(metric=m), {"dense": {"test": (x, y)}}, holdout=0.5)
         for m in ("top1", "mean_per_class")}
  assert out["mean_per_class"]["metric"] == "mean_per_class"
  a, b = (out[m]["models"]["dense"]["score"] for m in ("top1", "mean_per_class"))
  assert a != b
