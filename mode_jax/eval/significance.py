"""Paired bootstrap 95% intervals of MoDE's gains over its baselines (the report, issue 12).

A gain of half a point on a 2,000-image task may be luck of the test set.
The bootstrap resamples the test images with replacement, B times; both
models of a pair are scored on the SAME resample (paired), so the interval
measures how much the difference depends on which images were drawn, and
the two models' shared easy/hard images cancel. Retrieval resamples images,
each image taking its captions along. Intervals are the 2.5 / 97.5
percentiles of the replicate differences; a difference is significant when
its interval excludes 0.

Speed: each model's per-image outcome is computed once on the full test set
(`zeroshot_stats`, `retrieval_stats`: hits, classes, score groups); a
replicate is then a sum over the drawn images (a resample is a multinomial
count vector over images), done for a block of replicates at once with an
index matrix [b, N]. 1000 replicates of 50k images take seconds.

Streams: each task draws from its own generator, seeded by (seed, crc32 of
the task name), so adding a task leaves the other tasks' intervals as they
were. The average over tasks averages, per replicate, the tasks' differences.
"""

from __future__ import annotations

import zlib
from typing import Iterator, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from mode_jax.eval import zeroshot

COMPARISONS = (("MoDE", "dense"), ("MoDE", "uniform"), ("MoDE", "best_single"))
BLOCK = 1 << 22   # index-matrix entries per block of replicates (32 MiB of int64)


def label(a: str, b: str) -> str:
  return f"{a} - {b}"


# ------------------------------------------------------- per-image outcomes ----
def zeroshot_stats(metric: str, logits, labels) -> dict:
  """What a replicate needs of one model's zero-shot logits, per labelled image (resamples
  draw from those: an unlabelled row has no outcome)."""
  zeroshot.check_metric(metric)
  logits, labels = zeroshot.labelled_rows(logits, labels)
  if metric == "roc_auc":
    _, group = np.unique(zeroshot.binary_score(logits), return_inverse=True)
    return {"metric": metric, "group": group.ravel(), "n_groups": int(group.max()) + 1,
            "positive": labels == 1}
  rank = np.asarray(zeroshot.true_class_rank(jnp.asarray(logits, jnp.float32),
                                             jnp.asarray(labels, jnp.int32)))
  hit = (rank == 0).astype(np.float64)
  if metric == "top1_top5":
    hit = (hit + (rank < 5)) / 2
  out = {"metric": metric, "hit": hit}
  if metric == "mean_per_class":
    classes, out["cls"] = np.unique(labels, return_inverse=True)
    out["n_cls"] = len(classes)
  return out


def retrieval_stats(i2t_logits, t2i_logits, txt_to_img) -> dict:
  """Per image: its image->text R@1 hit, how many captions it has and how many of those
  are text->image R@1 hits. Ties favour the positive, as in eval/retrieval.py."""
  t = jnp.asarray(txt_to_img, jnp.int32)
  cols = jnp.arange(t.shape[0])
  i2t = jnp.asarray(i2t_logits, jnp.float32)
  n_img = i2t.shape[0]
  best = jnp.full((n_img,), -jnp.inf).at[t].max(i2t[t, cols])   # best own caption per image
  i2t_hit = np.asarray(best >= i2t.max(1))
  t2i = jnp.asarray(t2i_logits, jnp.float32)
  t2i_hit = np.asarray(t2i[t, cols] >= t2i.max(0), np.float64)
  t = np.asarray(t)
  n_caps = np.bincount(t, minlength=n_img).astype(np.float64)
  return {"metric": "retrieval", "i2t_hit": (i2t_hit & (n_caps > 0)).astype(np.float64),
          "has_caption": (n_caps > 0).astype(np.float64), "n_caps": n_caps,
          "t2i_hits": np.bincount(t, weights=t2i_hit, minlength=n_img)}


def n_images(stats: dict) -> int:
  key = {"roc_auc": "group", "retrieval": "n_caps"}.get(stats["metric"], "hit")
  return len(stats[key])


# --------------------------------------------------------------- replicates ----
def replicate_scores(stats: dict, idx: np.ndarray) -> np.ndarray:
  """Score (fraction) of each resample; idx [b, N] holds the drawn image indices."""
  metric = stats["metric"]
  if metric in ("top1", "top1_top5"):
    return stats["hit"][idx].mean(1)
  if metric == "mean_per_class":
    return _mean_per_class(stats["hit"], stats["cls"], stats["n_cls"], idx)
  if metric == "roc_auc":
    return _roc_auc(stats["group"], stats["positive"], stats["n_groups"], idx)
  take = lambda k: stats[k][idx].sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (take("i2t_hit") / take("has_caption") + take("t2i_hits") / take("n_caps")) / 2


def full_score(stats: dict) -> float:
  """The score on the test set as it is (the identity resample)."""
  return float(replicate_scores(stats, np.arange(n_images(stats))[None])[0])


def _per_row_bincount(keys, n_keys, weights=None):
  """bincount of each row of keys [b, N] -> [b, n_keys], as one flat bincount."""
  b = len(keys)
  flat = (keys + n_keys * np.arange(b)[:, None]).ravel()
  w = None if weights is None else weights.ravel()
  return np.bincount(flat, weights=w, minlength=b * n_keys).reshape(b, n_keys)


def _mean_per_class(hit, cls, n_cls, idx):
  """Per-class recall over the classes drawn, averaged (classes not drawn drop out)."""
  n = _per_row_bincount(cls[idx], n_cls)
  h = _per_row_bincount(cls[idx], n_cls, hit[idx])
  drawn = n > 0
  return np.where(drawn, h / np.maximum(n, 1), 0.0).sum(1) / drawn.sum(1)


def _roc_auc(group, positive, n_groups, idx):
  """Weighted Mann-Whitney AUC: each drawn positive earns the drawn negatives scoring below
  it plus half those tied with it. group = the rank of an image's score among the distinct
  scores, computed once on the full set; NaN for a resample missing a class."""
  pos = positive[idx]
  neg = _per_row_bincount(group[idx], n_groups, (~pos).astype(np.float64))
  credit = np.cumsum(neg, 1) - neg / 2                        # below + half the ties
  rows = np.arange(len(idx))[:, None]
  earned = np.where(pos, credit[rows, group[idx]], 0.0).sum(1)
  n_pos = pos.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return earned / (n_pos * (idx.shape[1] - n_pos))


def task_rng(seed: int, task: str) -> np.random.Generator:
  """The task's own stream: adding or removing a task leaves the others' draws unchanged."""
  return np.random.default_rng([int(seed), zlib.crc32(task.encode())])


def resamples(rng: np.random.Generator, n: int, samples: int) -> Iterator[np.ndarray]:
  """Blocks of bootstrap resamples, index matrices [b, n], `samples` rows in all."""
  block = max(1, BLOCK // max(n, 1))
  for start in range(0, samples, block):
    yield rng.integers(0, n, (min(block, samples - start), n))


# ------------------------------------------------------------------ results ----
def paired_bootstrap(stats: Mapping[str, dict], pairs: Sequence[tuple[str, str]],
                     samples: int, rng: np.random.Generator) -> dict[str, dict]:
  """{'A - B': {'diff': points on the test set, 'replicates': [samples] points}}; every
  model is scored on the same resamples."""
  sizes = {m: n_images(s) for m, s in stats.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"models scored on different test sets: {sizes}")
  n = next(iter(sizes.values()))
  models = sorted({m for p in pairs for m in p})
  reps = {m: [] for m in models}
  for idx in resamples(rng, n, samples):
    for m in models:
      reps[m].append(replicate_scores(stats[m], idx))
  reps = {m: 100.0 * np.concatenate(v) if v else np.zeros(0) for m, v in reps.items()}
  return {label(a, b): {"diff": 100.0 * (full_score(stats[a]) - full_score(stats[b])),
                        "replicates": reps[a] - reps[b]} for a, b in pairs}


def interval(replicates, level: float = 0.95) -> tuple[float, float]:
  """Percentile interval; resamples without a defined score (NaN) are left out."""
  tail = 100.0 * (1 - level) / 2
  lo, hi = np.nanpercentile(replicates, [tail, 100.0 - tail])
  return float(lo), float(hi)


def rows(per_task: Mapping[str, Mapping[str, dict]]) -> list[dict]:
  """Rows (task, comparison, diff, lo, hi, significant), the tasks then their average: per
  replicate, the mean over tasks of their differences."""
  out = []
  tasks = list(per_task)
  comparisons = list(per_task[tasks[0]]) if tasks else []
  for task in tasks + (["average"] if tasks else []):
    for c in comparisons:
      if task == "average":
        diff = float(np.mean([per_task[t][c]["diff"] for t in tasks]))
        reps = np.mean([per_task[t][c]["replicates"] for t in tasks], axis=0)
      else:
        diff, reps = per_task[task][c]["diff"], per_task[task][c]["replicates"]
      lo, hi = interval(reps)
      out.append({"task": task, "comparison": c, "diff": diff, "lo": lo, "hi": hi,
                  "significant": bool(lo > 0 or hi < 0)})
  return out
