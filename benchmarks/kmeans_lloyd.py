"""One Lloyd iteration: our chunked JAX k-means vs faiss-cpu, scikit-learn and numpy BLAS.

Same data, same initial centers, 2 threads. Prints the time of one full
iteration (assignment + new centers) per library and the ratio to faiss, then
the inertia after a few iterations from the same start (goal: within 1% of
faiss).

  python benchmarks/kmeans_lloyd.py            # N=200,000, D=256, K=1,024
  python benchmarks/kmeans_lloyd.py --quick    # N=50,000, D=128, K=256
"""

import argparse
import warnings
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

from clustering import distributed, kmeans  # noqa: E402


def interleaved_best(fns: dict, repeats: int) -> dict:
  """Min time per function over `repeats` rounds, running them in turn each round.

  The machine is shared: interleaving gives every library the same chances at
  a quiet moment, and the minimum is the least disturbed run.
  """
  for fn in fns.values():
    fn()   # warm-up / compile
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t)
  return best


def numpy_step(x, c, chunk=8192):
  """Lloyd iteration in numpy: chunked BLAS sgemm, argmin, bincount-based sums."""
  c2 = (c * c).sum(1)
  labels = np.empty(len(x), np.int64)
  for s in range(0, len(x), chunk):
    labels[s:s + chunk] = (c2[None] - 2.0 * (x[s:s + chunk] @ c.T)).argmin(1)
  order = np.argsort(labels, kind="stable")
  counts = np.bincount(labels, minlength=len(c))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  sums = np.add.reduceat(x[order], np.minimum(starts, len(x) - 1), axis=0)
  return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)


def main():
  warnings.filterwarnings("ignore", message="Number of distinct clusters")
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--n", type=int)
  ap.add_argument("--d", type=int)
  ap.add_argument("--k", type=int)
  ap.add_argument("--chunk", type=int, default=0, help="0: kmeans.auto_chunk(K)")
  ap.add_argument("--iters", type=int, default=5, help="iterations for the inertia check")
  ap.add_argument("--repeats", type=int, default=5)
  a = ap.parse_args()
  n, d, k = (50_000, 128, 256) if a.quick else (200_000, 256, 1024)
  n, d, k = a.n or n, a.d or d, a.k or k
  rng = np.random.default_rng(0)
  # clustered data, so the iterations mean something
  x = (rng.standard_normal((k * 2, d)) * 3)[rng.integers(0, k * 2, n)]
  x = (x + rng.standard_normal((n, d))).astype(np.float32)
  c0 = x[rng.choice(n, k, replace=False)].copy()
  chunk = a.chunk or kmeans.auto_chunk(k)
  print(f"N={n:,} D={d} K={k:,} threads={THREADS} devices={jax.device_count()} "
        f"chunk={chunk}")

  pts = distributed.shard_points(x, distributed.data_mesh(jax.devices()[:1]), chunk)
  cj = jnp.asarray(c0)
  stats = kmeans._nearest_fn(pts.mesh, "euclidean", pts.chunk, True)

  def ours():
    sums, counts, inertia, _, _ = stats(pts.x, pts.w, cj)
    jax.block_until_ready(kmeans._update_centers(cj, sums, counts, "euclidean"))

  fns = {"ours (JAX)": ours, "numpy BLAS": lambda: numpy_step(x, c0)}
  try:
    import faiss
    faiss.omp_set_num_threads(THREADS)

    def faiss_step():
      km = faiss.Kmeans(d, k, niter=1, max_points_per_centroid=n, min_points_per_centroid=1,
                        seed=0, verbose=False)
      km.train(x, init_centroids=c0)
    fns["faiss"] = faiss_step
  except ImportError:
    print("faiss missing: pip install faiss-cpu")
  try:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    def sk_step():
      with threadpool_limits(THREADS):
        KMeans(k, init=c0, n_init=1, max_iter=1, tol=0, algorithm="lloyd").fit(x)
    fns["scikit-learn"] = sk_step
  except ImportError:
    print("scikit-learn missing: pip install scikit-learn")
  times = interleaved_best(fns, a.repeats)

  ref = times.get("faiss", times["numpy BLAS"])
  print(f"\none Lloyd iteration (best of {a.repeats}, interleaved):")
  for name, t in times.items():
    print(f"  {name:14s} {t:8.3f} s   x{t / ref:5.2f} of {'faiss' if 'faiss' in times else 'numpy'}")

  # inertia after the same iterations from the same start
  res = kmeans.fit(pts, k, centers=c0, iters=a.iters, tol=0.0, return_labels=False)
  _, dist = kmeans.assign(pts, res.centers)
  ours_inertia = float(dist.astype(np.float64).sum())
  line = f"\ninertia after {a.iters} iterations: ours {ours_inertia:.6g}"
  if "faiss" in times:
    km = faiss.Kmeans(d, k, niter=a.iters, max_points_per_centroid=n,
                      min_points_per_centroid=1, seed=0)
    km.train(x, init_centroids=c0)
    f_inertia = float(km.index.search(x, 1)[0].astype(np.float64).sum())
    line += f", faiss {f_inertia:.6g}, ratio {ours_inertia / f_inertia:.5f}"
  print(line)


if __name__ == "__main__":
  main()
