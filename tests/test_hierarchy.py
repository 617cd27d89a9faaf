"""Hierarchy invariants: every fine center mapped, no empty expert, spread ranking."""

import numpy as np

from clustering import hierarchy, streaming, kmeans


def test_build_invariants_and_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  fine = kmeans.normalize(rng.standard_normal((64, 16)))
  h = hierarchy.build(fine, 4, iters=30, meta={"encoder": "test", "fingerprint": "abc"})
  assert h.fine_to_expert.shape == (64,) and h.fine_to_expert.dtype == np.int32
  assert set(h.fine_to_expert.tolist()) == {0, 1, 2, 3}
  # plain nearest coarse center (no expert needed filling on this data)
  d = hierarchy.distances(fine, h.coarse_centers, "euclidean")
  np.testing.assert_array_equal(h.fine_to_expert, d.argmin(1))
  assert sorted(h.expert_order) == [0, 1, 2, 3]
  hierarchy.save(h, str(tmp_path))
  g = hierarchy.load(str(tmp_path))
  np.testing.assert_array_equal(g.fine_to_expert, h.fine_to_expert)
  np.testing.assert_array_equal(g.fine_centers, h.fine_centers)
  assert g.expert_order == h.expert_order
  assert g.meta["m"] == 64 and g.meta["n"] == 4 and g.meta["metric"] == "euclidean"
  assert g.meta["encoder"] == "test" and g.meta["fingerprint"] == "abc"


def test_spread_ranking_on_constructed_case():
  # expert 0: fine centers at distance 1 from its coarse center; expert 1: 3; expert 2: 2
  coarse = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
  offsets = np.array([[1, 0], [-1, 0], [0, 1]], np.float32)
  fine = np.concatenate([coarse[0] + offsets, coarse[1] + 3 * offsets, coarse[2] + 2 * offsets])
  pi = np.repeat(np.arange(3), 3)
  s = hierarchy.spread(fine, coarse, pi, "euclidean")
  np.testing.assert_allclose(s, [1, 3, 2])
  assert hierarchy.expert_order(s) == [1, 2, 0]


def test_empty_expert_is_filled_from_its_balanced_share():
  # nearest map sends everything to expert 0; expert 1 must still get a fine center
  d = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.5], [0.1, 0.7]])
  balanced = np.array([0, 0, 1, 1])
  pi = hierarchy.fill_empty_experts(d.argmin(1), balanced, d)
  np.testing.assert_array_equal(pi, [0, 0, 1, 0])   # closest of its balanced share


def test_build_never_leaves_an_expert_empty():
  # one tight group and a far outlier group: nearest maps can starve an expert
  rng = np.random.default_rng(3)
  fine = np.concatenate([rng.normal(0, 0.01, (30, 4)), rng.normal(5, 0.01, (2, 4))])
  h = hierarchy.build(fine.astype(np.float32), 8, iters=20)
  assert (np.bincount(h.fine_to_expert, minlength=8) > 0).all()


def test_streaming_warm_start_continues_from_previous_chunk():
  rng = np.random.default_rng(1)
  true = 20.0 * np.eye(6, 8)
  chunks = [(true[rng.integers(0, 6, 1500)] + rng.normal(0, 0.3, (1500, 8))).astype(np.float32)
            for _ in range(3)]
  seen = []
  res = streaming.fit_stream(chunks, 6, iters_per_chunk=20, init="k-means++", seed=0,
                             chunk_size=256, progress=False,
                             on_chunk=lambda i, c: seen.append(c.copy()))
  # chunk 2 starting from chunk 1's centers equals a direct warm-started fit
  direct = kmeans.fit(chunks[1], 6, centers=seen[0], iters=20, chunk_size=256)
  np.testing.assert_allclose(seen[1], direct.centers, rtol=1e-5, atol=1e-5)
  # a warm-started chunk starts at its converged inertia; a cold start does not
  first = kmeans.fit(chunks[2], 6, centers=seen[1], iters=1, tol=0.0, chunk_size=256)
  cold = kmeans.fit(chunks[2], 6, init="random", seed=5, iters=1, tol=0.0, chunk_size=256)
  assert first.inertia <= 1.01 * res.inertia[-1] < cold.inertia
  err = np.linalg.norm(res.centers[:, None] - true[None], axis=-1).min(0)
  assert err.max() < 0.1
  assert res.n_seen == 4500
