"""Fine clusters -> coarse experts (docs/method.md step 3), and the cluster/ files that hold them.

The m fine centers are clustered into n experts by balanced k-means
(constants.COARSE_ITERS iterations, reference prep_hrchy.cluster_coarse);
fine_to_expert is then the plain nearest coarse center, as the reference's
final `predict`. The nearest map can leave an expert with no fine center; we
then hand that expert the fine center its balanced assignment gave it that
sits closest to its coarse center (taken from an expert that keeps at least
one), so every expert has data. Experts are ranked by spread (mean distance
of their fine centers to their coarse center, unsquared L2 or 1 - cos),
widest first (paper Sec. 4.4, progressive experts).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from clustering import kmeans
from mode_jax import constants, workdir as wd


@dataclasses.dataclass
class Hierarchy:
  fine_centers: np.ndarray     # float32[m, D]   (mu_s)
  coarse_centers: np.ndarray   # float32[n, D]
  fine_to_expert: np.ndarray   # int32[m]        (pi)
  expert_order: list[int]      # widest spread first
  meta: dict

  @property
  def m(self) -> int:
    return len(self.fine_centers)

  @property
  def n(self) -> int:
    return len(self.coarse_centers)


def distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
  """[len(a), len(b)] unsquared L2 (euclidean) or 1 - cos (cosine) distances."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if metric == "cosine":
    return 1.0 - kmeans.normalize(a).astype(np.float64) @ kmeans.normalize(b).T
  d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
  return np.sqrt(np.maximum(d2, 0.0))


def fill_empty_experts(fine_to_expert, balanced_labels, dist) -> np.ndarray:
  """Gives every expert left empty by the nearest map one fine center (see module doc)."""
  pi = np.asarray(fine_to_expert, np.int32).copy()
  n = dist.shape[1]
  for e in range(n):
    if np.any(pi == e):
      continue
    sizes = np.bincount(pi, minlength=n)
    donors = sizes[pi] > 1
    pool = np.flatnonzero(donors & (balanced_labels == e))
    if pool.size == 0:
      pool = np.flatnonzero(donors)
    pi[pool[np.argmin(dist[pool, e])]] = e
  return pi


def spread(fine_centers, coarse_centers, fine_to_expert, metric) -> np.ndarray:
  """float64[n]: mean distance of each expert's fine centers to its coarse center."""
  d = distances(fine_centers, coarse_centers, metric)
  pi = np.asarray(fine_to_expert)
  n = len(coarse_centers)
  own = d[np.arange(len(pi)), pi]
  return np.bincount(pi, own, n) / np.maximum(np.bincount(pi, minlength=n), 1)


def expert_order(spreads) -> list[int]:
  """Expert ids, widest spread first (ties: lower id first)."""
  return [int(i) for i in np.argsort(-np.asarray(spreads), kind="stable")]


def build(fine_centers: np.ndarray, n: int, *, metric: str = "euclidean",
          iters: int = constants.COARSE_ITERS, init: str = "random", seed: int = 0,
          balanced: bool = True, mesh=None, meta: dict | None = None) -> Hierarchy:
  """Coarse-clusters the fine centers into n experts and ranks them."""
  fine = np.asarray(fine_centers, np.float32)
  if not 1 <= n <= len(fine):
    raise ValueError(f"need 1 <= n <= m, got n={n}, m={len(fine)}")
  res = kmeans.fit(fine, n, metric=metric, iters=iters, init=init, seed=seed,
                   balanced=balanced, candidates=n, mesh=mesh)
  coarse = res.centers
  d = distances(fine, coarse, metric)
  pi = fill_empty_experts(np.argmin(d, axis=1), res.labels, d)
  spreads = spread(fine, coarse, pi, metric)
  info = dict(meta or {})
  info.update(m=len(fine), n=int(n), metric=metric, coarse_balanced=bool(balanced),
              expert_spread=[float(v) for v in spreads],
              fine_per_expert=[int(v) for v in np.bincount(pi, minlength=n)])
  return Hierarchy(fine, coarse, pi, expert_order(spreads), info)


def save(h: Hierarchy, workdir: str) -> None:
  """Writes cluster/*.npy, expert_order.json, then meta.json (its presence marks completion)."""
  root = wd.path(workdir, "cluster")
  wd.save_npy(wd.path(root, "fine_centers.npy"), h.fine_centers.astype(np.float32))
  wd.save_npy(wd.path(root, "coarse_centers.npy"), h.coarse_centers.astype(np.float32))
  wd.save_npy(wd.path(root, "fine_to_expert.npy"), h.fine_to_expert.astype(np.int32))
  wd.write_json(wd.path(root, "expert_order.json"), list(h.expert_order))
  wd.write_json(wd.path(root, "meta.json"), h.meta)


def load(workdir: str) -> Hierarchy:
  """Reads cluster/ (MissingInput -> stage 'cluster')."""
  get = lambda name: wd.require(workdir, f"cluster/{name}", "cluster")
  meta = wd.read_json(get("meta.json"))
  return Hierarchy(wd.load_npy(get("fine_centers.npy")), wd.load_npy(get("coarse_centers.npy")),
                   wd.load_npy(get("fine_to_expert.npy")).astype(np.int32),
                   [int(i) for i in wd.read_json(get("expert_order.json"))], meta)
