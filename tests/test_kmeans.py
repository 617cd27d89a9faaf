"""k-means against scikit-learn, across 8 fake devices, empty clusters, spherical mode."""

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from clustering import distributed, kmeans


def _blobs(n=4000, k=8, d=16, seed=0):
  x, y = make_blobs(n, centers=k, n_features=d, random_state=seed, cluster_std=0.6)
  return x.astype(np.float32), y


def test_matches_sklearn_on_blobs():
  x, y = _blobs()
  ours = kmeans.fit(x, 8, init="k-means++", iters=50, seed=3, chunk_size=256)
  sk = SkKMeans(8, n_init=1, random_state=0).fit(x)
  assert adjusted_rand_score(sk.labels_, ours.labels) >= 0.99
  assert adjusted_rand_score(y, ours.labels) >= 0.99
  np.testing.assert_allclose(ours.inertia, sk.inertia_, rtol=1e-3)


def test_same_init_as_sklearn_gives_same_fit():
  x, _ = _blobs(n=3000, k=10, seed=4)
  c0 = x[np.random.default_rng(0).choice(len(x), 10, replace=False)]
  ours = kmeans.fit(x, 10, centers=c0, iters=100, tol=0.0, chunk_size=512)
  sk = SkKMeans(10, init=c0, n_init=1, max_iter=100, tol=0.0, algorithm="lloyd").fit(x)
  assert adjusted_rand_score(sk.labels_, ours.labels) == 1.0
  np.testing.assert_allclose(ours.inertia, sk.inertia_, rtol=1e-4)


def test_random_init_is_seeded():
  x, _ = _blobs(n=2000)
  a, b = (kmeans.fit(x, 8, init="random", iters=5, seed=7) for _ in range(2))
  c = kmeans.fit(x, 8, init="random", iters=5, seed=8)
  np.testing.assert_array_equal(a.centers, b.centers)
  assert not np.array_equal(a.centers, c.centers)


def test_lloyd_step_equals_numpy_transcription():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1000, 8)).astype(np.float32)
  c0 = x[:5].copy()
  ours = kmeans.fit(x, 5, centers=c0, iters=1, tol=0.0, chunk_size=128)
  d = ((x[:, None] - c0[None]) ** 2).sum(-1)
  lab = d.argmin(1)
  want = np.stack([x[lab == j].mean(0) for j in range(5)])
  np.testing.assert_allclose(ours.centers, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours.counts.sum(), 1000)


def test_sharded_equals_single_device():
  assert jax.device_count() == 8
  x, _ = _blobs(n=3001, k=6)   # not a multiple of devices x chunk: exercises padding
  one = distributed.data_mesh(jax.devices()[:1])
  eight = distributed.data_mesh()
  for balanced, init in ((False, "k-means++"), (True, "random")):
    a = kmeans.fit(x, 6, iters=10, tol=0.0, seed=1, chunk_size=128, mesh=one, init=init,
                   balanced=balanced)
    b = kmeans.fit(x, 6, iters=10, tol=0.0, seed=1, chunk_size=128, mesh=eight, init=init,
                   balanced=balanced)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centers, b.centers, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.counts, b.counts)
  pts = distributed.shard_points(x, eight, 128)
  assert pts.x.sharding.spec == jax.sharding.PartitionSpec("data")
  assert pts.n == 3001 and float(pts.w.sum()) == 3001


def test_empty_clusters_are_reseeded_deterministically():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(0, 0.1, (300, 4)), rng.normal(10, 0.1, (300, 4))])
  x = x.astype(np.float32)
  # three centers far away from all data: they get no points in the first step
  c0 = np.array([[0, 0, 0, 0], [100, 100, 100, 100], [101, 100, 100, 100],
                 [-100, 0, 0, 0]], np.float32)
  a = kmeans.fit(x, 4, centers=c0, iters=20, chunk_size=64)
  b = kmeans.fit(x, 4, centers=c0, iters=20, chunk_size=64)
  assert a.reseeded >= 3
  assert (a.counts > 0).all()
  np.testing.assert_array_equal(a.centers, b.centers)
  # both blobs end up covered
  assert {int(v) for v in np.round(a.centers[:, 0] / 10)} == {0, 1}


def test_spherical_on_normalised_data():
  rng = np.random.default_rng(1)
  dirs = kmeans.normalize(rng.standard_normal((5, 32)))
  y = rng.integers(0, 5, 2000)
  x = kmeans.normalize(dirs[y] + 0.15 * rng.standard_normal((2000, 32)))
  res = kmeans.fit(x * 3.0, 5, metric="cosine", init="k-means++", iters=30, seed=0,
                   chunk_size=256)   # scale is ignored: the metric normalises
  assert adjusted_rand_score(y, res.labels) >= 0.99
  np.testing.assert_allclose(np.linalg.norm(res.centers, axis=1), 1.0, rtol=1e-5)
  # spherical inertia: sum of 1 - cos to the assigned center
  cos = (x * res.centers[res.labels]).sum(1)
  np.testing.assert_allclose(res.inertia, (1 - cos).sum(), rtol=1e-3)
  # assignment agrees with the max-cosine rule
  lab, _ = kmeans.assign(x, res.centers, metric="cosine")
  np.testing.assert_array_equal(lab, (x @ res.centers.T).argmax(1))


def test_assign_matches_bruteforce_and_bad_metric():
  rng = np.random.default_rng(2)
  x, c = rng.standard_normal((777, 6)).astype(np.float32), rng.standard_normal((9, 6))
  lab, dist = kmeans.assign(x, c, chunk_size=100)
  d = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(lab, d.argmin(1))
  np.testing.assert_allclose(dist, d.min(1), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="metric"):
    kmeans.assign(x, c, metric="manhattan")


def test_min_argmin_rows_equals_numpy_including_ties():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 5, (300, 37)).astype(np.float32)   # many ties per row
  s[7] = 2.0                                              # a whole row tied
  best, idx = jax.jit(kmeans.min_argmin_rows)(s)
  np.testing.assert_array_equal(np.asarray(idx), s.argmin(1))
  np.testing.assert_array_equal(np.asarray(best), s.min(1))


@pytest.mark.parametrize("balanced", [False, True])
def test_chunks_of_similar_size_share_one_compiled_fit(balanced):
  """Online fitting calls `fit` once per file chunk, each with its own row count: one compiled
  program must serve them all (the row count was a compile-time constant of the balanced
  fit, and small chunks each had their own padded shape, so every chunk recompiled)."""
  from mode_jax import constants
  rng = np.random.default_rng(0)
  kmeans._fit_loop_fn.cache_clear()
  chunks = set()
  for n in (37, 45, 50, 61):   # 80% of the points in one blob: the balanced cap binds
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[: int(0.8 * n)] = 5.0 + 0.01 * x[: int(0.8 * n)]
    chunks.add(distributed.shard_points(x, None, kmeans.auto_chunk(4)).chunk)
    r = kmeans.fit(x, 4, iters=3, balanced=balanced, seed=n)
    assert r.labels.shape == (n,) and r.counts.sum() == n
    if balanced:   # each chunk's own cap, ceil(n / k), up to ties
      assert r.counts.max() <= -(-n // 4) + 1
  assert kmeans._fit_loop_fn.cache_info().currsize == 1 and len(chunks) == 1
  fn = kmeans._fit_loop_fn(distributed.data_mesh(), "euclidean", chunks.pop(), balanced,
                           "prices", 16, None, 3, float(constants.KMEANS_TOL))
  assert kmeans._fit_loop_fn.cache_info().currsize == 1   # the same program, fetched
  assert fn._cache_size() == 1                             # compiled once
