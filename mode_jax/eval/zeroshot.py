"""Zero-shot classification (docs/method.md step 7): class features, raw cosine logits, accuracy.

Logits are raw cosine similarities, not scaled and not softmaxed, because
the MoDE ensemble (step 8) sums experts' cosines with routing weights; a
per-expert logit scale or softmax would change what is being averaged.
Metrics are fractions in [0, 1]. A prediction's rank is the number of classes
scoring strictly higher than the true class, so exact ties count in favour of
the true class (float ties are vanishingly rare with real features).

A task names the metric it is scored with (eval/tasks/<task>.json "metric",
following CLIP_benchmark): "top1"; "mean_per_class" (per-class top-1 recall,
averaged: Aircraft, Pets, Caltech101, Flowers); "top1_top5" ((top-1 + top-5) / 2,
the Kinetics700 metric); "roc_auc" (binary tasks such as HatefulMemes).

Unlabelled rows: the loader gives a sample without a label UNLABELLED (-1),
and indexing with -1 would score it as the last class. Every score here, the
bootstrap (significance.py) and the probe (linear_probe.py) leave such rows
out through `labelled` / `labelled_rows`; the report counts them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mode_jax.eval import features

class_features = features.class_features   # re-exported: step 7's template averaging

UNLABELLED = -1   # the loader's label of a sample without one (data/io/loader.py)


def labelled(labels, n_classes: int | None = None) -> np.ndarray:
  """Bool mask of the rows that carry a label: the one rule for unlabelled rows.

  A label below UNLABELLED, or (given `n_classes`) at or above it, is an
  error: it cannot be scored and would index another row silently.
  """
  labels = np.asarray(labels)
  bad = labels < UNLABELLED
  if n_classes is not None:
    bad |= labels >= n_classes
  if bad.any():
    raise ValueError(f"labels must be in [0, {n_classes}) or {UNLABELLED} (unlabelled); got "
                     f"{sorted(set(labels[bad].tolist()))[:5]}")
  return labels != UNLABELLED


def n_unlabelled(labels) -> int:
  return int(np.sum(~labelled(labels)))


def labelled_rows(logits, labels):
  """(logits, labels) of the labelled rows only (the inputs themselves when all are)."""
  labels = np.asarray(labels)
  keep = labelled(labels, np.shape(logits)[1])
  if not keep.any():
    raise ValueError(f"no labelled rows among {len(labels)} (all {UNLABELLED}): nothing to score")
  if keep.all():
    return logits, labels
  rows = np.flatnonzero(keep)
  return logits[rows], labels[rows]


def zeroshot_logits(embed_images: Callable, class_features,
                    batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
  """(logits float32 [N_img, N_cls] raw cosines, labels int32 [N_img]) over all batches.

  `batches` yields (images uint8 [B, H, W, 3] as loader.eval_batches gives, labels int [B]).
  """
  return features.image_logits(embed_images, class_features, batches, desc="zero-shot")


@jax.jit
def true_class_rank(logits, labels):
  """Per image, how many classes score strictly above the true class (0 = top-1 correct).
  Labelled rows only (`labelled_rows`): a -1 label would take the last class."""
  true = jnp.take_along_axis(logits, labels[:, None], axis=1)
  return jnp.sum(logits > true, axis=1)


def accuracy(logits, labels, k: int = 1) -> float:
  """Top-k accuracy over the labelled rows."""
  logits, labels = labelled_rows(logits, labels)
  return float(np.mean(np.asarray(true_class_rank(logits, labels)) < k))


def mean_per_class_accuracy(logits, labels) -> float:
  """Top-1 recall of each class present in `labels`, averaged over those classes."""
  logits, labels = labelled_rows(logits, labels)
  hit = np.asarray(true_class_rank(logits, labels)) == 0
  classes = np.unique(labels)
  return float(np.mean([hit[labels == c].mean() for c in classes]))


METRICS = ("top1", "mean_per_class", "top1_top5", "roc_auc")


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f"unknown zero-shot metric {metric!r}: expected one of {METRICS}")
  return metric


def binary_score(logits) -> np.ndarray:
  """logits[:, 1] - logits[:, 0]: ranks images exactly like the softmax probability of class 1
  (CLIP_benchmark's HatefulMemes score), since softmax over two logits is monotone in it."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[1] != 2:
    raise ValueError(f"roc_auc needs binary logits [N, 2], got {logits.shape}")
  return logits[:, 1] - logits[:, 0]


def average_ranks(x) -> np.ndarray:
  """1-based ranks of x, tied values sharing the mean of their ranks (as scipy's rankdata)."""
  _, inv, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
  last = np.cumsum(counts)
  return (last - (counts - 1) / 2.0)[inv]


def roc_auc(scores, positive) -> float:
  """Area under the ROC curve: P(a positive outscores a negative), ties counting one half
  (the Mann-Whitney U statistic from average ranks; equals sklearn's roc_auc_score)."""
  positive = np.asarray(positive, bool)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    raise ValueError(f"roc_auc needs both classes, got {n_pos} positives and {n_neg} negatives")
  rank_sum = average_ranks(scores)[positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def task_score(metric: str, logits, labels) -> float:
  """One task's score (fraction in [0, 1]) under its metric (one of METRICS), on the labelled
  rows."""
  check_metric(metric)
  logits, labels = labelled_rows(logits, labels)
  if metric == "roc_auc":
    return roc_auc(binary_score(logits), np.asarray(labels) == 1)
  m = metrics(logits, labels)
  return (m["top1"] + m["top5"]) / 2 if metric == "top1_top5" else m[metric]


def metrics(logits, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """{'top1', 'top5', 'mean_per_class'} of one task's logits, on the labelled rows."""
  logits, labels = labelled_rows(logits, labels)
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  rank = np.asarray(true_class_rank(logits, labels))
  out = {f"top{k}": float(np.mean(rank < k)) for k in ks}
  y = np.asarray(labels)
  out["mean_per_class"] = float(np.mean([(rank[y == c] == 0).mean() for c in np.unique(y)]))
  return out
