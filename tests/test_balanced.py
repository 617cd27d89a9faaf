"""Balanced assignment: cluster prices vs the reference auction vs an exact LP solution."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import make_blobs

from clustering import balanced, kmeans


def _dense(x, c):
  return ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1).astype(np.float32)


def _exact_capacitated(d, cap):
  """Exact optimum of the capacitated assignment: Hungarian on cap copies of each cluster."""
  rows, cols = linear_sum_assignment(np.repeat(d, cap, axis=1))
  out = np.empty(len(d), np.int64)
  out[rows] = cols // cap
  return out


@pytest.mark.parametrize("n", [240, 250])
def test_prices_near_the_exact_optimum_with_all_candidates(n):
  rng = np.random.default_rng(0)
  x, c = rng.standard_normal((n, 5)).astype(np.float32), rng.standard_normal((8, 5))
  cap = -(-n // 8)
  d = _dense(x, c)
  ids = np.argsort(d, 1).astype(np.int32)
  lab, prices, rounds, counts = balanced.price_balance(
      jnp.asarray(ids), jnp.asarray(np.take_along_axis(d, ids, 1)), jnp.ones(n), k=8,
      cap=cap)
  lab = np.asarray(lab)
  sizes = np.bincount(lab, minlength=8)
  np.testing.assert_array_equal(sizes, np.asarray(counts))
  assert sizes.max() <= cap
  ours = d[np.arange(n), lab].sum()
  exact = d[np.arange(n), _exact_capacitated(d, cap)].sum()
  unconstrained = d.min(1).sum()
  assert exact * 0.999 <= ours <= exact * 1.05
  assert ours > unconstrained            # the constraint was active
  assert (np.asarray(prices) >= 0).all()


def test_padding_rows_never_count():
  rng = np.random.default_rng(1)
  d = rng.random((120, 4)).astype(np.float32)
  d[100:, 0] = 0.0            # padding rows all want cluster 0: they must not crowd it
  ids = np.tile(np.arange(4, dtype=np.int32), (120, 1))
  w = np.ones(120, np.float32)
  w[100:] = 0
  padded = balanced.price_balance(jnp.asarray(ids), jnp.asarray(d), jnp.asarray(w), k=4, cap=26)
  alone = balanced.price_balance(jnp.asarray(ids[:100]), jnp.asarray(d[:100]), jnp.ones(100),
                                 k=4, cap=26)
  np.testing.assert_array_equal(np.asarray(padded[0])[:100], np.asarray(alone[0]))
  np.testing.assert_array_equal(np.asarray(padded[3]), np.asarray(alone[3]))
  assert int(np.asarray(padded[3]).sum()) == 100 and int(np.asarray(padded[3]).max()) <= 26


@pytest.mark.parametrize("method", ["prices", "auction"])
def test_balanced_kmeans_sizes_within_10_percent(method):
  # unequal blobs: plain k-means would give sizes 3:1
  x, _ = make_blobs([1200, 400, 400, 400], n_features=8, random_state=0, cluster_std=1.5)
  x = x.astype(np.float32)
  res = kmeans.fit(x, 8, balanced=True, balanced_method=method, iters=8, seed=0,
                   chunk_size=256)
  target = len(x) / 8
  assert np.abs(res.counts - target).max() <= 0.1 * target
  assert np.abs(np.bincount(res.labels, minlength=8) - target).max() <= 0.1 * target
  plain = kmeans.fit(x, 8, iters=15, seed=0, chunk_size=256)
  assert np.abs(plain.counts - target).max() > 0.1 * target   # the constraint mattered


def test_reference_auction_balances_and_is_near_optimal():
  rng = np.random.default_rng(3)
  x, c = rng.standard_normal((400, 6)).astype(np.float32), rng.standard_normal((8, 6))
  d = _dense(x, c)
  lab, rounds = balanced.reference_auction(jnp.asarray(d))
  lab = np.asarray(lab)
  sizes = np.bincount(lab, minlength=8)
  assert int(rounds) < 2000                          # terminated on its own (8 | 400)
  assert np.abs(sizes - 50).max() <= 5
  exact = d[np.arange(400), _exact_capacitated(d, 50)].sum()
  assert d[np.arange(400), lab].sum() <= exact * 1.15   # eps-optimal auction
