"""Routing weights vs a direct float64 numpy transcription of docs/method.md step 8."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mode_jax.ensemble import routing


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_numpy(E, M, pi, n, top_k=1):
  """Reference formula, as written in docs/method.md step 8 (top_k: k nearest centers vote)."""
  N = len(E)
  dist = np.linalg.norm(E[:, None, :].astype(np.float64) - M[None].astype(np.float64), axis=-1)
  a = math.exp(0.5 - math.sqrt(N)) if N < 10 else 0.0
  tau = 5 * math.log10(max(10, N - 200))
  u = np.zeros(n)
  for l in range(N):
    for s in np.argsort(dist[l])[:top_k]:
      u[pi[s]] += math.exp((a - dist[l, s]) * tau)
  return softmax(u / 8)


def paper_numpy(E, M, pi, n, top_k=1, query=False):
  N = len(E)
  dist2 = ((E[:, None, :].astype(np.float64) - M[None]) ** 2).sum(-1)
  lam = 0.2 / (math.log(N) if N > 200 else 1.0)
  prior = math.exp(0.5 - math.sqrt(N)) if (N < 10 and not query) else 1.0
  u = np.zeros(n)
  for l in range(N):
    for s in np.argsort(dist2[l])[:top_k]:
      u[pi[s]] += prior * math.exp(-dist2[l, s] / lam)
  return softmax(u)


def unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_case(seed, N, m=48, D=32, n=5, spread=0.6, unused_expert=True):
  """Classes scattered near random fine centers; the last expert owns no center if asked."""
  rng = np.random.default_rng(seed)
  M = unit(rng.normal(size=(m, D)))
  pi = rng.integers(0, n - 1 if unused_expert else n, size=m).astype(np.int32)
  E = unit(M[rng.integers(0, m, N)] + spread * rng.normal(size=(N, D)) / math.sqrt(D))
  return E, M, pi, n


@pytest.mark.parametrize("N", [1, 3, 9, 10, 57, 250])
@pytest.mark.parametrize("top_k", [1, 3])
def test_reference_matches_numpy(N, top_k):
  E, M, pi, n = make_case(N, N)
  got = np.asarray(routing.routing_weights(E, M, pi, n, top_k=top_k))
  want = ref_numpy(E, M, pi, n, top_k)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
  assert got.sum() == pytest.approx(1.0, abs=1e-6)


def test_weights_not_trivially_uniform():
  # Guard for the tests above: weights differ by ~1e3 x their tolerance (the /8 is gentle).
  E, M, pi, n = make_case(0, 3)
  w = ref_numpy(E, M, pi, n)
  assert w.max() - w.min() > 0.01


def test_unrouted_expert_gets_weight_of_zero_score():
  E, M, pi, n = make_case(1, 250)
  assert n - 1 not in set(pi.tolist())   # no fine center maps to the last expert
  w = np.asarray(routing.routing_weights(E, M, pi, n))
  dist = np.linalg.norm(E[:, None].astype(np.float64) - M[None], axis=-1)
  d, c = dist.min(1), pi[dist.argmin(1)]
  u = np.array([np.exp(-d[c == k] * 5 * math.log10(50)).sum() for k in range(n)])
  assert u[-1] == 0.0
  np.testing.assert_allclose(w[-1], 1.0 / np.exp(u / 8).sum(), rtol=2e-5)
  assert w[-1] < w[:-1].max()


@pytest.mark.parametrize("N", [2, 40, 300])
@pytest.mark.parametrize("top_k", [1, 4])
def test_paper_matches_numpy(N, top_k):
  E, M, pi, n = make_case(100 + N, N, spread=0.3)
  got = np.asarray(routing.routing_weights(E, M, pi, n, mode="paper", top_k=top_k))
  np.testing.assert_allclose(got, paper_numpy(E, M, pi, n, top_k), rtol=2e-5, atol=1e-7)


def test_paper_top_k_all_centers_is_full_sum():
  E, M, pi, n = make_case(7, 20)
  m = len(M)
  got = np.asarray(routing.routing_weights(E, M, pi, n, mode="paper", top_k=m))
  d2 = ((E[:, None].astype(np.float64) - M[None]) ** 2).sum(-1)
  A = np.exp(-d2 / 0.2)
  u = np.array([A[:, pi == c].sum() for c in range(n)])
  np.testing.assert_allclose(got, softmax(u), rtol=2e-5)


def test_batched_tasks_equal_loop():
  cases = [make_case(s, 12)[0] for s in range(3)]
  _, M, pi, n = make_case(0, 12)
  batched = np.asarray(routing.routing_weights(np.stack(cases), M, pi, n))
  assert batched.shape == (3, n)
  for t, E in enumerate(cases):
    np.testing.assert_allclose(batched[t], ref_numpy(E, M, pi, n), rtol=2e-5, atol=1e-7)


def test_task_routing_weights_different_sizes():
  _, M, pi, n = make_case(0, 5)
  embs = {"a": make_case(3, 4)[0], "b": make_case(4, 230)[0]}
  out = routing.task_routing_weights(embs, M, pi, n)
  for t, E in embs.items():
    np.testing.assert_allclose(out[t], ref_numpy(E, M, pi, n), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_query_weights_are_one_class_tasks(mode):
  Q, M, pi, n = make_case(5, 16, spread=0.3)
  got = np.asarray(routing.query_routing_weights(Q, M, pi, n, mode=mode))
  assert got.shape == (16, n)
  for q in range(16):
    if mode == "reference":
      want = ref_numpy(Q[q:q + 1], M, pi, n)
    else:
      want = paper_numpy(Q[q:q + 1], M, pi, n, query=True)   # Eq. 7: no few-class factor
    np.testing.assert_allclose(got[q], want, rtol=2e-5, atol=1e-7)


def test_scales_follow_constants():
  assert routing.reference_shift_and_tau(4) == (pytest.approx(math.exp(0.5 - 2)),
                                                pytest.approx(5.0))
  assert routing.reference_shift_and_tau(10) == (0.0, pytest.approx(5.0))
  assert routing.reference_shift_and_tau(1000)[1] == pytest.approx(5 * math.log10(800))
  assert routing.paper_lambda_and_prior(1000)[0] == pytest.approx(0.2 / math.log(1000))


def test_bad_mode():
  E, M, pi, n = make_case(0, 3)
  with pytest.raises(ValueError, match="routing mode"):
    routing.routing_weights(jnp.asarray(E), M, pi, n, mode="nope")
