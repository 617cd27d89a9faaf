"""Data-parallel k-means in JAX: chunked distances with a fused argmin, psum'd center sums.

Points are sharded over the "data" mesh axis (all devices of all hosts, or
one host's), centers replicated; a whole fit is one device program (a
while loop over iterations, no host round-trip). Each device
scans its rows chunk by chunk: one [chunk, K] score block (||c||^2 - 2 x.c,
or -x.c for the spherical metric), its argmin, and a segment sum into
[K, D] center sums, so memory is bounded by chunk x K, never N x K. Sums and
counts are psum'd across devices. Empty clusters are re-seeded from the
points farthest from their centers (deterministic). Balanced k-means swaps
the argmin for `balanced.price_balance` on each point's T nearest centers
(or the reference's dense auction).

Metrics: "euclidean" (squared L2; reference default on normalised features)
and "cosine" (spherical k-means, paper App. E: points and centers are unit
vectors, distance 1 - cos). The reference keeps raw means as cosine centers;
we normalise them, which leaves every cosine assignment unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from clustering import balanced as balanced_lib
from clustering.distributed import AXIS, ShardedPoints, shard_points, spans_processes
from mode_jax import constants

METRICS = ("euclidean", "cosine")
INITS = ("random", "k-means++")
BALANCED_METHODS = ("prices", "auction")
# k-means++ runs on a seeded subsample of this many points per cluster: its K
# sequential steps are too slow on all N, and a subsample seeds as well.
KMEANS_PP_POINTS_PER_CLUSTER = 32


def auto_chunk(k: int) -> int:
  """Rows per distance chunk so the [chunk, K] float32 score block is ~2 MiB.

  Measured on 2 CPU cores (N=200k, D=256, K=1024, one Lloyd iteration):
  chunk 256 / 512 / 1024 took 0.72 / 0.63-0.68 / 0.72 s; the block and its
  min/argmin passes have to stay in cache.
  """
  return int(np.clip(2 ** 19 // max(k, 1), 256, 8192))


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  return metric


def normalize(x: np.ndarray) -> np.ndarray:
  """Row-wise L2 normalisation (float32), leaving all-zero rows at zero."""
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norm, 1e-12)


# ---------------------------------------------------------------- chunk math --

def _scores(xc, centers, c2, metric):
  """[chunk, K] ranking scores: distance minus a per-point constant (argmin = nearest)."""
  dot = lax.dot_general(xc, centers, (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)
  return c2[None, :] - 2.0 * dot if metric == "euclidean" else -dot


def min_argmin_rows(s):
  """Row-wise (min, argmin) (first index on ties, as jnp.argmin), in two plain reductions.

  XLA:CPU lowers argmin to a variadic (value, index) reduce that does not
  vectorise; a float min, then the smallest column index holding it, does.
  Measured on 2 cores (N=200k, D=256, K=1024): one Lloyd iteration 1.06 s ->
  0.77 s. A NaN row (no column equals its min) maps to the last column.
  Routing's nearest fine center (mode_jax/ensemble/routing.py) uses it too.
  """
  k = s.shape[-1]
  m = jnp.min(s, axis=-1, keepdims=True)
  col = lax.broadcasted_iota(jnp.int32, s.shape, s.ndim - 1)
  idx = jnp.minimum(jnp.min(jnp.where(s == m, col, k), axis=-1), k - 1)
  return m[..., 0], idx


def _to_distance(score, xc, metric):
  if metric == "euclidean":
    return jnp.maximum(score + jnp.sum(xc * xc, axis=1, keepdims=score.ndim > 1), 0.0)
  return 1.0 + score


def _chunks(x, w, chunk):
  return x.reshape(-1, chunk, x.shape[1]), w.reshape(-1, chunk)


def _center_terms(centers, metric):
  c = centers.astype(jnp.float32)
  return c, jnp.sum(c * c, axis=1) if metric == "euclidean" else jnp.zeros(c.shape[:1])


def _local_nearest(x, w, centers, *, metric, chunk, with_stats):
  """Per device: nearest center of every row (+ psum'd sums/counts/inertia)."""
  c, c2 = _center_terms(centers, metric)
  k, d = c.shape

  def body(carry, inp):
    xc, wc = inp
    xc = xc.astype(jnp.float32)
    s = _scores(xc, c, c2, metric)
    best, label = min_argmin_rows(s)
    dist = _to_distance(best, xc, metric)
    if with_stats:
      sums, counts, inertia = carry
      carry = (sums.at[label].add(xc * wc[:, None]), counts.at[label].add(wc),
               inertia + jnp.sum(dist * wc))
    return carry, (label, dist)

  init = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.float32(0))
  init = jax.tree.map(lambda v: lax.pcast(v, (AXIS,), to="varying"), init)  # per-device sums
  carry, (labels, dists) = lax.scan(body, init if with_stats else (), _chunks(x, w, chunk))
  labels, dists = labels.reshape(-1), dists.reshape(-1)
  if not with_stats:
    return labels, dists
  sums, counts, inertia = (lax.psum(v, AXIS) for v in carry)
  return sums, counts, inertia, labels, dists


def _local_candidates(x, w, centers, *, metric, chunk, t):
  """Per device: each row's t nearest centers and their distances."""
  c, c2 = _center_terms(centers, metric)

  def body(_, inp):
    xc, _ = inp
    xc = xc.astype(jnp.float32)
    neg, ids = lax.top_k(-_scores(xc, c, c2, metric), t)
    return (), (ids.astype(jnp.int32), _to_distance(-neg, xc, metric))

  _, (ids, dists) = lax.scan(body, (), _chunks(x, w, chunk))
  return ids.reshape(-1, t), dists.reshape(-1, t)


def _local_label_stats(x, w, labels, dists, k):
  """Per device: psum'd center sums, counts and inertia for given labels."""
  xf = x.astype(jnp.float32) * w[:, None]
  sums = jnp.zeros((k, x.shape[1]), jnp.float32).at[labels].add(xf)
  counts = jnp.zeros((k,), jnp.float32).at[labels].add(w)
  inertia = jnp.sum(dists * w)
  return tuple(lax.psum(v, AXIS) for v in (sums, counts, inertia))


# ----------------------------------------------------- jitted, sharded passes --

@functools.lru_cache(maxsize=None)
def _nearest_fn(mesh, metric, chunk, with_stats):
  f = functools.partial(_local_nearest, metric=metric, chunk=chunk, with_stats=with_stats)
  rows = (P(AXIS), P(AXIS))
  out = ((P(), P(), P()) if with_stats else ()) + rows
  return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()),
                               out_specs=out))


@functools.lru_cache(maxsize=None)
def _candidates_fn(mesh, metric, chunk, t):
  f = functools.partial(_local_candidates, metric=metric, chunk=chunk, t=t)
  return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()),
                               out_specs=(P(AXIS), P(AXIS))))


@functools.lru_cache(maxsize=None)
def _label_stats_fn(mesh, k):
  f = functools.partial(_local_label_stats, k=k)
  return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(AXIS),) * 4,
                               out_specs=(P(), P(), P())))


@functools.partial(jax.jit, static_argnames=("metric",))
def _update_centers(centers, sums, counts, metric):
  new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centers)
  if metric == "cosine":
    new = new / jnp.maximum(jnp.linalg.norm(new, axis=1, keepdims=True), 1e-12)
  shift = jnp.sum(jnp.linalg.norm(new - centers, axis=1))
  return new, shift


def _replicated(mesh):
  return NamedSharding(mesh, P())


@functools.lru_cache(maxsize=None)
def _gather_fn(mesh):
  return jax.jit(lambda x, idx: x[idx].astype(jnp.float32), out_shardings=_replicated(mesh))


# -------------------------------------------------------------------- init --

def _kmeans_pp(sample, k, key, metric):
  """k-means++ (Arthur & Vassilvitskii 2007) on a replicated sample, in one jit."""
  n = sample.shape[0]

  def dist_to(c):
    return (jnp.sum((sample - c) ** 2, axis=1) if metric == "euclidean"
            else 1.0 - sample @ c)

  def body(i, state):
    centers, d = state
    logits = jnp.log(jnp.maximum(d, 0.0))
    logits = jnp.where(jnp.all(d <= 0), 0.0, logits)   # all covered: pick uniformly
    j = jax.random.categorical(jax.random.fold_in(key, i), logits)
    centers = centers.at[i].set(sample[j])
    return centers, jnp.minimum(d, dist_to(sample[j]))

  j0 = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)
  centers = jnp.zeros((k, sample.shape[1]), jnp.float32).at[0].set(sample[j0])
  centers, _ = lax.fori_loop(1, k, body, (centers, dist_to(sample[j0])))
  return centers


_kmeans_pp_jit = jax.jit(_kmeans_pp, static_argnames=("k", "metric"))


def init_centers(points: ShardedPoints, k: int, *, method: str = "random", seed: int = 0,
                 metric: str = "euclidean") -> np.ndarray:
  """Initial centers: k distinct random points (reference) or k-means++; seeded."""
  if method not in INITS:
    raise ValueError(f"init must be one of {INITS}, got {method!r}")
  if points.n < k:
    raise ValueError(f"cannot initialise {k} centers from {points.n} points")
  rng = np.random.default_rng(seed)
  gather = _gather_fn(points.mesh)
  if method == "random":
    idx = np.sort(rng.choice(points.n, k, replace=False))
    centers = gather(points.x, jnp.asarray(points.global_rows(idx)))
  else:
    m = min(points.n, KMEANS_PP_POINTS_PER_CLUSTER * k)
    idx = np.sort(rng.choice(points.n, m, replace=False))
    sample = gather(points.x, jnp.asarray(points.global_rows(idx)))
    centers = _kmeans_pp_jit(sample, k=k, key=jax.random.key(seed), metric=metric)
  centers = np.asarray(centers, np.float32)
  return normalize(centers) if metric == "cosine" else centers


# --------------------------------------------------------------- iterations --

@dataclasses.dataclass
class FitResult:
  centers: np.ndarray            # float32[K, D]
  labels: np.ndarray | None      # int32[n_local] for this process's rows (final centers)
  counts: np.ndarray             # int64[K] points per cluster in the last assignment
  inertia: float                 # sum of distances in the last assignment
  n_iter: int
  reseeded: int                  # empty clusters re-seeded over the whole fit


def _balanced_labels(x, w, centers, *, mesh, metric, chunk, k, method, candidates, n_real):
  """Balanced labels and distances for all (padded) rows, traced inside the fit loop."""
  if method == "auction":   # the reference's dense auction: single process, all N x K
    ids, dists = _candidates_fn(mesh, metric, chunk, k)(x, w, centers)
    order = jnp.argsort(ids, axis=1)   # back to cluster order: dense [N, K]
    dense = jnp.take_along_axis(dists, order, axis=1)
    labels, _ = balanced_lib.reference_auction(dense[:n_real])
    labels = jnp.concatenate([labels, jnp.zeros((dense.shape[0] - n_real,), jnp.int32)])
    labels = lax.with_sharding_constraint(labels, NamedSharding(mesh, P(AXIS)))
    return labels, jnp.take_along_axis(dense, labels[:, None], axis=1)[:, 0]
  t = min(int(candidates), k)
  ids, dists = _candidates_fn(mesh, metric, chunk, t)(x, w, centers)
  # From the data, not a constant: one compiled fit serves every chunk of one padded shape.
  n = jnp.sum(w > 0).astype(jnp.int32)
  cap = (n + k - 1) // k
  labels, _, _, _ = balanced_lib.price_balance(ids, dists, w, k=k, cap=cap)
  pick = jnp.argmax(ids == labels[:, None], axis=1)
  return labels, jnp.take_along_axis(dists, pick[:, None], axis=1)[:, 0]


def _assign_stats(x, w, centers, *, mesh, metric, chunk, balanced, method, candidates, n_real):
  """(center sums, counts, inertia, labels, distances) of one assignment, traced."""
  k = centers.shape[0]
  if not balanced:
    return _nearest_fn(mesh, metric, chunk, True)(x, w, centers)
  labels, dists = _balanced_labels(x, w, centers, mesh=mesh, metric=metric, chunk=chunk, k=k,
                                   method=method, candidates=candidates, n_real=n_real)
  sums, counts, inertia = _label_stats_fn(mesh, k)(x, w, labels, dists)
  return sums, counts, inertia, labels, dists


def _reseed(x, w, centers, dists, empty, metric):
  """Empty cluster j (ascending) takes the j-th farthest point from its center."""
  kk = min(x.shape[0], centers.shape[0])
  far = lax.top_k(jnp.where(w > 0, dists, -jnp.inf), kk)[1]
  rank = jnp.clip(jnp.cumsum(empty) - 1, 0, kk - 1)
  rows = x[far[rank]].astype(jnp.float32)
  if metric == "cosine":
    rows = rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
  return jnp.where(empty[:, None], rows, centers)


@functools.lru_cache(maxsize=None)
def _fit_loop_fn(mesh, metric, chunk, balanced, method, candidates, n_real, iters, tol):
  """All iterations in one device program: no host round-trip per iteration.

  Each iteration: assignment and psum'd statistics, the mean update, empty
  clusters re-seeded, stop when (sum_k ||shift_k||)^2 < tol with none empty.
  Returns (centers, counts, inertia of the last assignment, iterations, re-seeded).
  """
  kw = dict(mesh=mesh, metric=metric, chunk=chunk, balanced=balanced, method=method,
            candidates=candidates, n_real=n_real)

  def run(x, w, centers):
    def body(s):
      i, c, _, _, _, reseeded = s
      sums, counts, inertia, _, dists = _assign_stats(x, w, c, **kw)
      new, shift = _update_centers(c, sums, counts, metric)
      empty = counts == 0
      n_empty = jnp.sum(empty).astype(jnp.int32)
      new = lax.cond(n_empty > 0, lambda: _reseed(x, w, new, dists, empty, metric),
                     lambda: new)
      done = (shift ** 2 < tol) & (n_empty == 0)
      return i + 1, new, done, counts, inertia, reseeded + n_empty

    k = centers.shape[0]
    init = (jnp.int32(0), centers, jnp.bool_(False), jnp.zeros((k,), jnp.float32),
            jnp.float32(0), jnp.int32(0))
    i, c, _, counts, inertia, reseeded = lax.while_loop(
        lambda s: (s[0] < iters) & ~s[2], body, init)
    return c, counts, inertia, i, reseeded

  rep = _replicated(mesh)
  return jax.jit(run, out_shardings=(rep, rep, rep, rep, rep))


@functools.lru_cache(maxsize=None)
def _assign_fn(mesh, metric, chunk, balanced, method, candidates, n_real):
  kw = dict(mesh=mesh, metric=metric, chunk=chunk, balanced=balanced, method=method,
            candidates=candidates, n_real=n_real)
  return jax.jit(lambda x, w, c: _assign_stats(x, w, c, **kw))


def fit(points, k: int, *, metric: str = "euclidean", iters: int = 50,
        tol: float = constants.KMEANS_TOL, init: str = "random", seed: int = 0,
        centers: np.ndarray | None = None, balanced: bool = False,
        balanced_method: str = "prices", candidates: int = 16,
        chunk_size: int | None = None, mesh=None, return_labels: bool = True,
        progress: bool = False) -> FitResult:
  """Lloyd (or balanced) k-means on this process's rows `points` (or a ShardedPoints).

  `centers` warm-starts the fit (online fitting); otherwise `init` seeds it.
  Stops after `iters` iterations or when (sum_k ||shift_k||)^2 < tol
  (reference criterion; tol=0 always runs `iters`). All iterations run in one
  device program (`_fit_loop_fn`). The returned labels come from one more
  assignment with the final centers (as scikit-learn does). chunk_size
  None/0 picks `auto_chunk(k)`. `progress` prints the fit's summary line.
  """
  check_metric(metric)
  if balanced and balanced_method not in BALANCED_METHODS:
    raise ValueError(f"balanced_method must be one of {BALANCED_METHODS}")
  if not isinstance(points, ShardedPoints):
    x = np.asarray(points)
    if metric == "cosine":
      x = normalize(x)
    points = shard_points(x, mesh, chunk_size or auto_chunk(k))
  if balanced and balanced_method == "auction" and spans_processes(points.mesh):
    raise ValueError("balanced_method='auction' is the dense single-process reference")
  if centers is None:
    centers = init_centers(points, k, method=init, seed=seed, metric=metric)
  centers = np.asarray(centers, np.float32)
  if metric == "cosine":
    centers = normalize(centers)
  if centers.shape != (k, points.dim):
    raise ValueError(f"centers must be [{k}, {points.dim}], got {centers.shape}")
  centers = jax.device_put(centers, _replicated(points.mesh))
  # The dense auction slices the real rows (a shape); prices count them on the device.
  n_real = points.n if balanced and balanced_method == "auction" else None
  static = (points.mesh, metric, points.chunk, bool(balanced), balanced_method,
            int(candidates), n_real)
  centers, counts, inertia, n_iter, reseeded = _fit_loop_fn(*static, int(iters), float(tol))(
      points.x, points.w, centers)
  labels = None
  if return_labels:
    _, counts, inertia, labels, _ = _assign_fn(*static)(points.x, points.w, centers)
    labels = points.local(labels)
  if progress:
    print(f"k-means K={k}: {int(n_iter)} iterations, inertia {float(inertia):.6g}, "
          f"{int(reseeded)} empty clusters re-seeded")
  return FitResult(np.asarray(centers, np.float32), labels,
                   np.rint(np.asarray(counts)).astype(np.int64), float(inertia), int(n_iter),
                   int(reseeded))


def assign(points, centers: np.ndarray, *, metric: str = "euclidean",
           chunk_size: int | None = None, mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """Nearest center of each of this process's rows -> (int32 labels, float32 distances)."""
  check_metric(metric)
  if not isinstance(points, ShardedPoints):
    x = np.asarray(points)
    points = shard_points(normalize(x) if metric == "cosine" else x, mesh,
                          chunk_size or auto_chunk(len(centers)))
  centers = np.asarray(centers, np.float32)
  if metric == "cosine":
    centers = normalize(centers)
  labels, dists = _nearest_fn(points.mesh, metric, points.chunk, False)(
      points.x, points.w, jax.device_put(centers, _replicated(points.mesh)))
  return points.local(labels), points.local(dists)
