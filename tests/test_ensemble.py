"""Ensembled logits vs numpy: routed sums, uniform mean, subsets, per-query retrieval."""

import numpy as np
import pytest

from mode_jax.ensemble import ensemble


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.fixture
def logits():
  return np.random.default_rng(0).uniform(-1, 1, size=(4, 7, 5)).astype(np.float32)


def test_one_hot_weight_gives_that_expert_exactly(logits):
  for c in range(4):
    w = np.eye(4, dtype=np.float32)[c]
    np.testing.assert_array_equal(np.asarray(ensemble.combine(logits, w)), logits[c])
  one = logits[:1]
  np.testing.assert_array_equal(np.asarray(ensemble.combine(one, np.ones(1, np.float32))),
                                logits[0])


def test_equal_weights_give_mean(logits):
  np.testing.assert_allclose(np.asarray(ensemble.uniform(logits)), logits.mean(0), rtol=1e-6,
                             atol=1e-7)
  w = np.full(4, 0.25, np.float32)
  np.testing.assert_allclose(np.asarray(ensemble.combine(logits, w)), logits.mean(0),
                             rtol=1e-6, atol=1e-7)


def test_weighted_sum_matches_einsum(logits):
  w = softmax(np.random.default_rng(1).normal(size=4)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(ensemble.combine(logits, w)),
                             np.einsum("c,cij->ij", w, logits), rtol=1e-5, atol=1e-6)


def test_per_query_weights(logits):
  q = softmax(np.random.default_rng(2).normal(size=(5, 4))).astype(np.float32)
  want = np.zeros((7, 5))
  for t in range(5):
    for c in range(4):
      want[:, t] += q[t, c] * logits[c, :, t]
  np.testing.assert_allclose(np.asarray(ensemble.combine_per_query(logits, q)), want,
                             rtol=1e-5, atol=1e-6)
  i2t, t2i = ensemble.retrieval_ensemble(logits, q[0], q)
  np.testing.assert_allclose(np.asarray(i2t), np.einsum("c,cij->ij", q[0], logits), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(t2i), want, rtol=1e-5, atol=1e-6)


def test_restrict_is_softmax_over_subset():
  u = np.array([0.3, 2.0, 0.0, 1.1])
  w = softmax(u / 8)
  got = ensemble.restrict(w, [3, 1])
  want = np.zeros(4)
  want[[1, 3]] = softmax(u[[1, 3]] / 8)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  rows = ensemble.restrict(np.stack([w, w[::-1]]), [0])
  np.testing.assert_array_equal(rows, [[1, 0, 0, 0], [1, 0, 0, 0]])


def test_progressive(logits):
  w = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  order = [2, 0, 3, 1]
  out = dict(ensemble.progressive(logits, order, w))
  assert sorted(out) == [1, 2, 3, 4]
  np.testing.assert_allclose(np.asarray(out[1]), logits[2], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out[2]), (0.3 * logits[2] + 0.1 * logits[0]) / 0.4,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out[4]), np.einsum("c,cij->ij", w, logits), rtol=1e-5,
                             atol=1e-6)
  q = np.tile(w, (5, 1))
  steps = list(ensemble.progressive_retrieval(logits, order, w, q))
  np.testing.assert_allclose(np.asarray(steps[0][2]), logits[2], rtol=1e-6)


def test_selection():
  assert ensemble.prior_selection([0.1, 0.5, 0.4]) == 1
  assert ensemble.best_single([50.0, 70.0, 70.0, 10.0]) == 1


def test_feature_side_combine_equals_logit_combine():
  rng = np.random.default_rng(3)
  img, txt = rng.normal(size=(3, 6, 8)), rng.normal(size=(3, 5, 8))
  logits = np.einsum("cie,cke->cik", img, txt).astype(np.float32)
  w = softmax(rng.normal(size=3)).astype(np.float32)
  q = softmax(rng.normal(size=(5, 3))).astype(np.float32)
  np.testing.assert_allclose(np.asarray(ensemble.combine_features(img, txt, w)),
                             np.einsum("c,cij->ij", w, logits), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ensemble.combine_features_per_query(img, txt, q)),
                             np.einsum("tc,cit->it", q, logits), rtol=1e-5, atol=1e-5)
