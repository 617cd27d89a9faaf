"""Paired bootstrap: replicate scores against sklearn on the resampled data, a planted gain,
pairing, reproducibility and the average over tasks."""

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score, top_k_accuracy_score

from mode_jax.eval import retrieval, significance as sig, zeroshot


def one_hot_logits(pred, n_cls=3):
  return np.eye(n_cls, dtype=np.float32)[pred] + 0.01 * np.arange(n_cls, dtype=np.float32)


def planted(n=1000, a_right=500, extra=100):
  """Model B is right on A's images plus `extra` more: B - A = 100 * extra / n points."""
  labels = np.zeros(n, np.int32)
  a = np.where(np.arange(n) < a_right, 0, 1)
  b = np.where(np.arange(n) < a_right + extra, 0, 1)
  return {"A": sig.zeroshot_stats("top1", one_hot_logits(a), labels),
          "B": sig.zeroshot_stats("top1", one_hot_logits(b), labels)}


def test_planted_gain_is_covered_and_reproducible():
  stats = planted()
  out = sig.paired_bootstrap(stats, [("B", "A")], 1000, sig.task_rng(0, "toy"))["B - A"]
  assert out["diff"] == pytest.approx(10.0)
  lo, hi = sig.interval(out["replicates"])
  assert lo < 10 < hi and lo > 0
  se = 100 * np.sqrt(0.1 * 0.9 / 1000)              # per-image differences are 0/1, p = 0.1
  assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
  again = sig.paired_bootstrap(stats, [("B", "A")], 1000, sig.task_rng(0, "toy"))["B - A"]
  np.testing.assert_array_equal(again["replicates"], out["replicates"])
  other = sig.paired_bootstrap(stats, [("B", "A")], 1000, sig.task_rng(1, "toy"))["B - A"]
  assert not np.array_equal(other["replicates"], out["replicates"])


def test_pairing_identical_models_give_zero_width():
  stats = planted()
  stats["A2"] = dict(stats["A"])
  out = sig.paired_bootstrap(stats, [("A2", "A")], 200, sig.task_rng(0, "t"))["A2 - A"]
  assert sig.interval(out["replicates"]) == (0.0, 0.0)
  assert sig.rows({"t": {"A2 - A": out}})[0]["significant"] is False


@pytest.mark.parametrize("metric", ["top1", "top1_top5", "mean_per_class", "roc_auc"])
def test_replicates_match_sklearn_on_the_resample(metric):
  rng = np.random.default_rng(3)
  n_cls = 2 if metric == "roc_auc" else 7
  labels = rng.integers(0, n_cls, 120)
  logits = rng.normal(size=(120, n_cls)) + np.eye(n_cls)[labels]
  if metric == "roc_auc":
    logits = np.round(logits, 1)   # many tied scores
  stats = sig.zeroshot_stats(metric, logits, labels)
  assert sig.full_score(stats) == pytest.approx(zeroshot.task_score(metric, logits, labels))
  idx = next(sig.resamples(rng, 120, 5))
  got = sig.replicate_scores(stats, idx)
  for r, row in enumerate(idx):
    y, s = labels[row], logits[row]
    if metric == "roc_auc":
      want = roc_auc_score(y, s[:, 1] - s[:, 0])
    elif metric == "mean_per_class":
      want = recall_score(y, s.argmax(1), labels=np.unique(y), average="macro")
    else:
      k1 = top_k_accuracy_score(y, s, k=1, labels=np.arange(n_cls))
      k5 = top_k_accuracy_score(y, s, k=5, labels=np.arange(n_cls))
      want = k1 if metric == "top1" else (k1 + k5) / 2
    assert got[r] == pytest.approx(want, abs=1e-12), r


@pytest.mark.parametrize("metric", ["top1", "mean_per_class", "roc_auc"])
def test_unlabelled_images_are_not_resampled(metric):
  """Resamples draw from the labelled images only: the replicate on a resample of them is
  sklearn's score of those rows, and the full score is the labelled rows' task score."""
  rng = np.random.default_rng(7)
  n_cls = 2 if metric == "roc_auc" else 5
  labels = rng.integers(0, n_cls, 150)
  logits = rng.normal(size=(150, n_cls)) + np.eye(n_cls)[labels]
  labels[::6] = -1
  logits[::6, -1] += 4.0   # scored as the last class, these would count as hits
  stats = sig.zeroshot_stats(metric, logits, labels)
  known = labels >= 0
  y, x = labels[known], logits[known]
  assert sig.n_images(stats) == known.sum() == 125
  assert sig.full_score(stats) == pytest.approx(zeroshot.task_score(metric, x, y))
  idx = next(sig.resamples(rng, 125, 4))
  for r, row in enumerate(idx):
    if metric == "roc_auc":
      want = roc_auc_score(y[row], x[row, 1] - x[row, 0])
    elif metric == "mean_per_class":
      want = recall_score(y[row], x[row].argmax(1), labels=np.unique(y[row]), average="macro")
    else:
      want = top_k_accuracy_score(y[row], x[row], k=1, labels=np.arange(n_cls))
    assert sig.replicate_scores(stats, idx)[r] == pytest.approx(want, abs=1e-12)


def test_retrieval_replicates_carry_captions():
  rng = np.random.default_rng(4)
  t2i = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
  logits = rng.normal(size=(6, 10)) + (t2i[None] == np.arange(6)[:, None])
  stats = sig.retrieval_stats(logits, logits.T[::-1].T, t2i)   # t2i scored on other logits
  m = retrieval.recall(logits, t2i, t2i_logits=logits.T[::-1].T)
  assert sig.full_score(stats) == pytest.approx((m["i2t_R@1"] + m["t2i_R@1"]) / 2)
  idx = np.array([[0, 0, 2, 2, 2, 5], [1, 3, 4, 4, 4, 4]])
  i2t = [t2i[np.argmax(logits[i])] == i for i in range(6)]
  t2i_hit = np.argmax(logits.T[::-1].T, 0) == t2i
  for r, row in enumerate(idx):
    caps = np.concatenate([np.flatnonzero(t2i == i) for i in row])   # duplicates kept
    want = (np.mean([i2t[i] for i in row]) + np.mean(t2i_hit[caps])) / 2
    assert sig.replicate_scores(stats, idx[r:r + 1])[0] == pytest.approx(want)


def test_average_row_and_task_streams():
  stats = planted()
  a = sig.paired_bootstrap(stats, pairs := [("B", "A")], 300, sig.task_rng(0, "a"))
  b = sig.paired_bootstrap(planted(extra=30), pairs, 300, sig.task_rng(0, "b"))
  rows = sig.rows({"a": a, "b": b})
  assert [(r["task"], r["comparison"]) for r in rows] == [
      ("a", "B - A"), ("b", "B - A"), ("average", "B - A")]
  avg = rows[-1]
  assert avg["diff"] == pytest.approx((10.0 + 3.0) / 2)
  reps = (a["B - A"]["replicates"] + b["B - A"]["replicates"]) / 2
  assert (avg["lo"], avg["hi"]) == sig.interval(reps)
  assert avg["lo"] < 6.5 < avg["hi"] and avg["significant"]
  assert sig.rows({"a": a})[0] == rows[0]   # the task rows do not depend on the others
  assert not np.array_equal(a["B - A"]["replicates"], b["B - A"]["replicates"])


def test_different_test_sets_are_an_error():
  stats = planted()
  stats["C"] = planted(n=10, a_right=5, extra=1)["A"]
  with pytest.raises(ValueError, match="different test sets"):
    sig.paired_bootstrap(stats, [("C", "A")], 10, sig.task_rng(0, "t"))
