"""Linear probe: fit against sklearn's LogisticRegression, the stratified split, and l2 selection.

Every problem has the same shape (240 train samples, D=64, 4 classes), so the
jitted L-BFGS compiles once for the whole file.
"""
import numpy as np
import jax
import pytest
from sklearn.linear_model import LogisticRegression

from mode_jax.eval import linear_probe

N, D, C, N_TEST = 240, 64, 4, 400


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _gaussian_classes(rng, n, means, noise=1.0):
  """Balanced classes around `means`, isotropic noise, L2-normalised like CLIP embeddings."""
  y = np.arange(n) % len(means)
  return _unit(means[y] + noise * rng.normal(size=(n, means.shape[1]))), y


def _linear_labels(rng, n, w):
  """Noise-free labels argmax(x @ w): nothing to overfit, so weak regularisation should win."""
  x = _unit(rng.normal(size=(n, w.shape[0])))
  return x, np.argmax(x @ w, axis=1)


def _sklearn(x, y, l2):
  """sklearn minimises sum CE + ||W||^2 / (2C); ours is that divided by N, so C = 1 / (l2 N)."""
  return LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(
      x.astype(np.float64), y)


def _noisy_problem(seed, scale=0.3):
  """(x_train, y_train, x_test, y_test) of overlapping classes: few samples for D=64, weak l2 fits noise."""
  rng = np.random.default_rng(seed)
  means = scale * rng.normal(size=(C, D))
  return (*_gaussian_classes(rng, N, means), *_gaussian_classes(rng, N_TEST, means))


def _assert_best_validation_then_larger_l2(out):
  best = max(out["val_scores"].values())
  assert out["l2"] == max(l2 for l2, s in out["val_scores"].items() if s == best), out["val_scores"]


def test_separable_features_are_classified_perfectly():
  rng = np.random.default_rng(0)
  means = 3.0 * np.eye(C, D)
  x_train, y_train = _gaussian_classes(rng, N, means, noise=0.1)
  x_test, y_test = _gaussian_classes(rng, N_TEST, means, noise=0.1)
  out = linear_probe.select_and_fit(x_train, y_train, x_test, y_test, n_classes=C)
  assert out["score"] == 1.0
  assert (out["n_train"], out["n_val"], out["n_test"]) == (N, N // 5, N_TEST)
  assert out["n_fit"] + out["n_val"] == N


@pytest.mark.parametrize("l2", [1e-1, 1e-3, 1e-5])
def test_fit_matches_sklearn(l2):
  x, y, _, _ = _noisy_problem(1, scale=0.5)   # separable at l2 -> 0: the penalty alone bounds W
  params = linear_probe.fit(x, y, C, l2, tol=1e-7)
  sk = _sklearn(x, y, l2)
  probs = np.asarray(jax.nn.softmax(linear_probe.predict(params, x)))
  np.testing.assert_allclose(probs, sk.predict_proba(x), atol=1e-4)
  np.testing.assert_allclose(np.asarray(params.W), sk.coef_.T, atol=1e-3 * max(1, np.abs(sk.coef_).max()))
  # The bias is unpenalised, so only its differences between classes are identified.
  b, sk_b = np.asarray(params.b), sk.intercept_
  np.testing.assert_allclose(b - b.mean(), sk_b - sk_b.mean(), atol=1e-3)
  assert linear_probe.accuracy(params, x, y) == pytest.approx(sk.score(x, y))


def test_unlabelled_rows_neither_fit_nor_score_a_probe():
  """Rows labelled -1 are left out: the probe equals the one fitted on the labelled rows, and
  the holdout split never places them (unlabelled rows tilt towards the last class here)."""
  rng = np.random.default_rng(11)
  means = 0.6 * rng.normal(size=(3, 6))
  x, y = _gaussian_classes(rng, 90, means)
  xt, yt = _gaussian_classes(rng, 45, means)
  y, yt = y.copy(), yt.copy()
  y[::5], yt[::4] = -1, -1
  x[::5], xt[::4] = _unit(np.tile(means[2], (18, 1))), _unit(np.tile(means[2], (12, 1)))
  grid = (1e-1, 1e-3)
  got = linear_probe.select_and_fit(x, y, xt, yt, n_classes=3, l2_grid=grid, seed=2)
  want = linear_probe.select_and_fit(x[y >= 0], y[y >= 0], xt[yt >= 0], yt[yt >= 0],
                                     n_classes=3, l2_grid=grid, seed=2)
  assert got == want and got["n_train"] == 72 and got["n_test"] == 33
  train, test = linear_probe.holdout_split(y, 0.5, seed=0)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.flatnonzero(y >= 0))
  again = linear_probe.holdout_split(y[y >= 0], 0.5, seed=0)   # the same draws per class
  np.testing.assert_array_equal(np.flatnonzero(y >= 0)[again[0]], train)


def test_holdout_split_is_stratified_disjoint_and_seeded():
  sizes = {0: 1, 1: 2, 2: 3, 3: 4, 4: 10, 5: 57}
  labels = np.random.default_rng(0).permutation(np.repeat(list(sizes), list(sizes.values())))
  train, test = linear_probe.holdout_split(labels, 0.25, seed=3)
  assert np.intersect1d(train, test).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
  n_test = {c: int(np.sum(labels[test] == c)) for c in sizes}
  # round(n * 0.25), clipped so both sides keep min(2, n // 2) of a class.
  assert n_test == {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 14}
  again = linear_probe.holdout_split(labels, 0.25, seed=3)
  np.testing.assert_array_equal(again[0], train)
  np.testing.assert_array_equal(again[1], test)
  other = linear_probe.holdout_split(labels, 0.25, seed=4)
  assert not np.array_equal(other[1], test)
  with pytest.raises(ValueError):
    linear_probe.holdout_split(labels, 1.0, seed=0)


def test_selection_prefers_strong_l2_on_noisy_and_weak_l2_on_clean_problems():
  rng = np.random.default_rng(7)
  w = rng.normal(size=(D, C))
  clean = [*_linear_labels(rng, N, w), *_linear_labels(rng, N_TEST, w)]
  on_noisy = linear_probe.select_and_fit(*_noisy_problem(1), n_classes=C, seed=1)
  on_clean = linear_probe.select_and_fit(*clean, n_classes=C, seed=1)
  assert on_noisy["l2"] >= 1e-1, on_noisy["val_scores"]   # weak l2 fits the noise
  assert on_clean["l2"] <= 1e-3, on_clean["val_scores"]   # strong l2 shrinks W until the bias decides
  for out in (on_noisy, on_clean):
    assert set(out["val_scores"]) == set(linear_probe.L2_GRID)
    _assert_best_validation_then_larger_l2(out)


def test_selection_matches_brute_force_sklearn_on_the_same_split():
  x, y, x_test, y_test = _noisy_problem(2)
  grid = (1e0, 1e-1, 1e-2, 1e-3, 1e-4)
  out = linear_probe.select_and_fit(x, y, x_test, y_test, n_classes=C, l2_grid=grid, seed=5,
                                    tol=1e-7)
  fit_idx, val_idx = linear_probe.holdout_split(y, 0.2, seed=5)
  expected = {l2: _sklearn(x[fit_idx], y[fit_idx], l2).score(x[val_idx], y[val_idx]) for l2 in grid}
  for l2 in grid:   # at most one validation sample flips on a float32-vs-float64 boundary case
    assert abs(out["val_scores"][l2] - expected[l2]) <= 1.01 / len(val_idx)
  _assert_best_validation_then_larger_l2(out)
  assert out["score"] == pytest.approx(_sklearn(x, y, out["l2"]).score(x_test, y_test),
                                       abs=1.01 / len(y_test))


def test_fit_on_features_sharded_over_a_mesh_matches_unsharded():
  x, y, _, _ = _noisy_problem(1, scale=0.5)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = linear_probe.fit(jax.device_put(x, rows), jax.device_put(y, rows), C, 1e-3)
  plain = linear_probe.fit(x, y, C, 1e-3)
  assert sharded.W.sharding.is_fully_replicated
  np.testing.assert_allclose(np.asarray(sharded.W), np.asarray(plain.W), atol=1e-4)
