"""Balanced assignment: our cluster-price solver vs the reference's auction.

The peer is the reference's algorithm (MoDE -> kernelmachine/balanced-kmeans
`auction_lap`) run as the reference runs it, in PyTorch on a dense [K, N]
matrix, transcribed here from its description; our JAX transcription of it
(`balanced.reference_auction`) runs too. Ours (`balanced.price_balance`)
works on each point's T nearest centers from the chunked distance pass.
Prints time, cluster sizes relative to N/K, and the objective (sum of
distances) relative to plain nearest-center assignment (lower is better).

  python benchmarks/balanced_assign.py                 # N=20,480, K=256, D=64
  python benchmarks/balanced_assign.py --n 65536 --k 1024
"""

import argparse
import os
import sys
import time

THREADS = 2
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(var, str(THREADS))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from clustering import balanced, distributed, kmeans  # noqa: E402
from mode_jax import constants  # noqa: E402


def torch_auction(dist, max_rounds):
  """The reference auction in PyTorch (our transcription of its description)."""
  import torch
  torch.set_num_threads(THREADS)
  score = -torch.as_tensor(dist).T.contiguous()          # [K, N] workers x jobs
  k, n = score.shape
  q = n // k
  eps = max(float(score.max() - score.min()) * constants.AUCTION_EPS_FRACTION,
            constants.AUCTION_EPS_MIN)
  value, cost = score.clone(), torch.zeros(n)
  prev = None
  for rnd in range(max_rounds):
    top_v, top_i = value.topk(q + 1, dim=1)
    bids = torch.zeros(k, n).scatter_(1, top_i[:, :-1], top_v[:, :-1] - top_v[:, -1:] + eps)
    if prev is not None and rnd < constants.AUCTION_RETAIN_ROUNDS:
      bids[prev[0], prev[1]] = eps
    has = (bids > 0).any(0)
    high, winner = bids.max(0)
    if bool(has.all()):
      return winner.numpy(), rnd
    jobs = has.nonzero().squeeze(1)
    cost[jobs] += high[jobs]
    value = score - cost[None]
    value[winner[jobs], jobs] = score[winner[jobs], jobs]
    prev = (winner[jobs], jobs)
  return np.where(has.numpy(), winner.numpy(), score.argmax(0).numpy()), max_rounds


def timed(fn, repeats=2):
  out = fn()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return out, best


def report(name, t, labels, d, k):
  sizes = np.bincount(labels, minlength=k)
  target = len(labels) / k
  obj = d[np.arange(len(labels)), labels].sum() / d.min(1).sum()
  print(f"  {name:26s} {t:8.3f} s   sizes {sizes.min() / target:5.3f}..{sizes.max() / target:5.3f}"
        f" x N/K   objective x{obj:.4f} of nearest")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=20480)
  ap.add_argument("--k", type=int, default=256)
  ap.add_argument("--d", type=int, default=64)
  ap.add_argument("--candidates", type=int, default=8)
  ap.add_argument("--max-rounds", type=int, default=2000, help="auction bound")
  ap.add_argument("--jax-auction", action="store_true",
                  help="also time our JAX transcription of the auction (slow on CPU)")
  a = ap.parse_args()
  rng = np.random.default_rng(0)
  x = kmeans.normalize((rng.standard_normal((a.k // 4, a.d)) * 2)[rng.integers(0, a.k // 4, a.n)]
                       + rng.standard_normal((a.n, a.d)))
  c = x[rng.choice(a.n, a.k, replace=False)]
  d = np.maximum((x * x).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * x @ c.T, 0)
  print(f"N={a.n:,} K={a.k} D={a.d} N/K={a.n / a.k:.1f} candidates={a.candidates} "
        f"threads={THREADS}")

  pts = distributed.shard_points(x, distributed.data_mesh(jax.devices()[:1]),
                                 kmeans.auto_chunk(a.k))
  cj = jnp.asarray(c)

  def ours(t):
    ids, dists = kmeans._candidates_fn(pts.mesh, "euclidean", pts.chunk, t)(pts.x, pts.w, cj)
    lab, _, rounds, _ = balanced.price_balance(ids, dists, pts.w, k=a.k, cap=-(-a.n // a.k))
    return np.asarray(lab)[:a.n], int(rounds)

  print("balanced assignment (ours includes its distance pass):")
  times = {}
  for t in sorted({a.candidates, 2 * a.candidates, 4 * a.candidates}):
    if t > a.k:
      continue
    (lab, rounds), times[t] = timed(lambda: ours(t))  # rounds: points over cap
    report(f"ours: T={t} ({rounds} unplaced)", times[t], lab, d, a.k)
  if a.jax_auction:
    (lab, rounds), t = timed(lambda: jax.block_until_ready(
        balanced.reference_auction(jnp.asarray(d), max_rounds=a.max_rounds)), repeats=1)
    report(f"auction, JAX ({int(rounds)} rd)", t, np.asarray(lab), d, a.k)
  try:
    (lab, rounds), t_ref = timed(lambda: torch_auction(d, a.max_rounds), repeats=1)
  except ImportError:
    print("torch missing: pip install torch")
    return
  report(f"auction, PyTorch ({rounds} rd)", t_ref, lab, d, a.k)
  print("\nours / reference auction (PyTorch), time: "
        + ", ".join(f"T={t}: x{v / t_ref:.3f}" for t, v in times.items()))


if __name__ == "__main__":
  main()
