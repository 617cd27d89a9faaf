"""Balanced assignment of points to clusters: the reference auction and a cluster-price solver.

`reference_auction` transcribes the reference's `auction_lap` (kernelmachine/
balanced-kmeans, used by MoDE's prep_hrchy.py): every cluster ("worker") bids
for its top floor(N/K) points ("jobs") by how much better each is than its
(floor(N/K)+1)-th; a point goes to the highest bidder and gets dearer; last
round's winners keep a minimal bid for 100 rounds; stop when every point has a
bidder. It needs the dense [K, N] score matrix.

`price_balance` is our faster substitute, aimed at the same problem, the
capacitated assignment
    min sum_i d(i, a_i)   s.t.  |{i : a_i = k}| <= cap = ceil(N / K).
1. Prices: an annealed log-domain Sinkhorn (entropic transport of one unit
   per point into K equal columns) gives column potentials, i.e. one price
   p_k per cluster; argmin_k d_ik + p_k is then nearly balanced (LP duality:
   at the optimum each point takes its cheapest cluster under the prices).
2. Capacity rounding: deferred acceptance over at most T rounds. Every
   unplaced point proposes to its next candidate in order of d + p; each
   cluster keeps, up to its remaining room, the proposers with the lowest
   d + p; the rest move on. A cluster exceeds cap only by points whose T
   candidates are all full (they take their first choice).
How it differs from the reference: not an eps-optimal auction but a
near-optimal one (tests: within 1% of the Hungarian optimum on small cases;
on the benchmark's hard case its objective is at or below the auction's
with sizes within ~10% of N/K, where the auction is exact), cap ceil(N/K)
instead of about floor(N/K), and each point only sees its T nearest centers
(candidate lists from the chunked distance pass), so N x K is never stored
and the whole solve is O(N T) per round with T rounds at most. We tried
one-sided "overfull clusters raise prices" rounds first: neighbouring
overfull clusters trade the same points back and forth for hundreds of
rounds, so they are gone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mode_jax import constants


def _kth_smallest(values, label, real, need, k, steps=32):
  """Per cluster: the smallest threshold with >= need[c] members whose value <= it.

  Bisection on counts (O(N) per step) instead of a sort: XLA's CPU sort of
  70k keys costs ~40 ms, 32 segment counts ~5 ms.
  """
  seg_max = jnp.full((k,), -jnp.inf).at[label].max(jnp.where(real, values, -jnp.inf))
  lo = jnp.full((k,), -1e-30)
  hi = jnp.maximum(seg_max, 0.0)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    cnt = jnp.zeros((k,), jnp.int32).at[label].add((real & (values <= mid[label])).astype(jnp.int32))
    ok = cnt >= need
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  return lax.fori_loop(0, steps, body, (lo, hi))[1]


def sinkhorn_prices(cand_ids, cand_dist, w, k, iters_per_tau=15,
                    taus=(1.0, 0.3, 0.1, 0.03, 0.01)):
  """Cluster prices from entropic optimal transport (log-domain Sinkhorn) on candidates.

  Balanced transport of one unit per point into K equal columns; the column
  potentials g are (minus) prices. Annealing tau (relative to the typical
  candidate gap) keeps it stable; unlike one-sided raises, potentials move
  both ways, so clusters sharing one dense region settle without a price war.
  """
  real = w > 0
  d = cand_dist - cand_dist[:, :1]            # per-point shifts are harmless
  scale = jnp.maximum(jnp.sum(jnp.where(real, d[:, -1], 0.0)) / jnp.maximum(real.sum(), 1), 1e-12)
  log_target = jnp.log(jnp.maximum(real.sum(), 1) / k)
  flat_ids = cand_ids.reshape(-1)

  def step(g, tau):
    a = (g[cand_ids] - d) / tau
    f = -tau * jax.nn.logsumexp(a, axis=1)
    b = jnp.where(real[:, None], (f[:, None] - d) / tau, -jnp.inf).reshape(-1)
    m = jnp.full((k,), -jnp.inf).at[flat_ids].max(b)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    ssum = jnp.zeros((k,)).at[flat_ids].add(jnp.exp(b - m_safe[flat_ids]))
    g_new = tau * (log_target - m_safe - jnp.log(jnp.maximum(ssum, 1e-30)))
    return jnp.where(ssum > 0, g_new, g)

  g = jnp.zeros((k,), jnp.float32)
  for t in taus:
    g = lax.fori_loop(0, iters_per_tau, lambda _, g: step(g, t * scale), g)
  return -(g - jnp.max(g))                    # prices >= 0, cheapest cluster at 0


@functools.partial(jax.jit, static_argnames=("k", "sinkhorn"))
def price_balance(cand_ids, cand_dist, w, prices0=None, *, k: int, cap,
                  sinkhorn: bool = True):
  """Balanced labels from candidate lists: Sinkhorn prices, then capacity rounding.

  Rounding is deferred acceptance over at most T rounds: every unplaced point
  proposes to its next candidate in order of d + p; each cluster accepts, up
  to its remaining room, the proposers with the lowest d + p; the rest try
  their next candidate. No cluster goes over `cap` except by points whose T
  candidates are all full (they take their first choice) and exact ties.

  Args:
    cand_ids: int32[N, T] each point's T nearest clusters.
    cand_dist: float32[N, T] their distances (any per-point shift is harmless).
    w: float32[N] 1 for real points, 0 for padding (padding never counts).
    prices0: optional float32[K] prices to use instead of Sinkhorn's.
    k: number of clusters; cap: max points per cluster (>= ceil(N/K)).
  Returns:
    (labels int32[N], prices float32[K], unplaced int32, counts int32[K]).
  """
  real = w > 0
  t = cand_ids.shape[1]
  if prices0 is not None:
    prices = prices0.astype(jnp.float32)
  elif sinkhorn:
    prices = sinkhorn_prices(cand_ids, cand_dist, w, k)
  else:
    prices = jnp.zeros((k,), jnp.float32)
  pref = cand_dist + prices[cand_ids]
  order = jnp.argsort(pref, axis=1)
  ids = jnp.take_along_axis(cand_ids, order, axis=1)
  pref = jnp.take_along_axis(pref, order, axis=1)
  rows = jnp.arange(ids.shape[0])

  def body(_, state):
    label, ptr, room = state
    active = real & (label < 0) & (ptr < t)
    j = jnp.minimum(ptr, t - 1)
    prop, pri = ids[rows, j], pref[rows, j]
    thr = _kth_smallest(pri - jnp.min(pref), prop, active, jnp.maximum(room, 1), k)
    accept = active & (room[prop] > 0) & (pri - jnp.min(pref) <= thr[prop])
    label = jnp.where(accept, prop, label)
    room = room - jnp.zeros((k,), jnp.int32).at[prop].add(accept.astype(jnp.int32))
    return label, jnp.where(active & ~accept, ptr + 1, ptr), room

  init = (jnp.full(ids.shape[:1], -1, jnp.int32), jnp.zeros(ids.shape[:1], jnp.int32),
          jnp.full((k,), cap, jnp.int32))
  label, _, _ = lax.fori_loop(0, t, body, init)
  unplaced = jnp.sum(real & (label < 0)).astype(jnp.int32)
  label = jnp.where(label < 0, ids[:, 0], label).astype(jnp.int32)
  counts = jnp.zeros((k,), jnp.int32).at[label].add(real.astype(jnp.int32))
  return label, prices, unplaced, counts


@functools.partial(jax.jit, static_argnames=("max_rounds",))
def reference_auction(dist, *, max_rounds: int = 2000):
  """The reference's auction_lap on a dense [N, K] distance matrix -> int32[N] labels.

  A faithful transcription (bids, minimal retaining bids for
  constants.AUCTION_RETAIN_ROUNDS rounds, eps = score range / 50 clamped at
  1e-4). The reference loops until every point has a bidder, which can
  never happen once retaining stops when K does not divide N; we stop after
  `max_rounds` and send points without a bidder to their nearest center.
  Returns (labels, rounds).
  """
  score = -jnp.asarray(dist, jnp.float32).T            # [K, N] worker x job value
  k, n = score.shape
  q = n // k
  if q < 1:
    raise ValueError(f"auction needs at least one point per cluster (N={n}, K={k})")
  eps = jnp.maximum((score.max() - score.min()) * constants.AUCTION_EPS_FRACTION,
                    constants.AUCTION_EPS_MIN)
  rows = jnp.arange(k)[:, None]
  jobs = jnp.arange(n)

  def cond(s):
    rounds, done = s[0], s[5]
    return (~done) & (rounds < max_rounds)

  def body(s):
    rounds, value, cost, prev_winner, prev_has, _, _ = s
    top_v, top_i = lax.top_k(value, q + 1)
    inc = top_v[:, :-1] - top_v[:, -1:] + eps
    bids = jnp.zeros((k, n), score.dtype).at[rows, top_i[:, :-1]].set(inc)
    retain = (rounds > 0) & (rounds < constants.AUCTION_RETAIN_ROUNDS)
    keep = retain & prev_has
    bids = bids.at[jnp.where(keep, prev_winner, k), jobs].set(eps, mode="drop")
    has = jnp.any(bids > 0, axis=0)
    high_bid = jnp.max(bids, axis=0)
    winner = jnp.argmax(bids, axis=0).astype(jnp.int32)
    done = jnp.all(has)
    cost = jnp.where(done, cost, cost + jnp.where(has, high_bid, 0.0))
    value = score - cost[None]
    value = value.at[jnp.where(has, winner, k), jobs].set(score[winner, jobs], mode="drop")
    return (rounds + jnp.where(done, 0, 1), value, cost, winner, has, done, winner)

  init = (jnp.int32(0), score, jnp.zeros((n,), score.dtype), jnp.zeros((n,), jnp.int32),
          jnp.zeros((n,), bool), jnp.bool_(False), jnp.zeros((n,), jnp.int32))
  rounds, _, _, winner, has, _, _ = lax.while_loop(cond, body, init)
  nearest = jnp.argmax(score, axis=0).astype(jnp.int32)
  return jnp.where(has, winner, nearest), rounds
