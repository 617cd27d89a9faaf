"""Online k-means from disk: peak memory stays at about one chunk plus the centers.

Writes N x D float32 rows to a memory-mapped .npy in a temp dir (from a
child process, chunk by chunk, so writing does not count here), then fits K
centers file-chunk by file-chunk with `streaming.fit_stream` (warm-started,
`--iters` per chunk). Each chunk is copied out of a fresh memory map that is
closed right after, so mapped pages do not pile up in this process's RSS.
Prints the peak RSS above the baseline next to the chunk and data sizes;
the goal is < 2 GiB beyond the centers at N = 2,000,000 x 384.

  python benchmarks/kmeans_streaming.py           # N=300,000
  python benchmarks/kmeans_streaming.py --full    # N=2,000,000 x 384
"""

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def rss_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_data(path, n, d, k, chunk):
  rng = np.random.default_rng(0)
  centers = rng.standard_normal((k, d)).astype(np.float32) * 2
  mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
  for s in range(0, n, chunk):
    e = min(n, s + chunk)
    x = centers[rng.integers(0, k, e - s)] + rng.standard_normal((e - s, d), np.float32)
    mm[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    mm.flush()
  del mm


def chunks(path, rows):
  n = np.load(path, mmap_mode="r").shape[0]
  for s in range(0, n, rows):
    mm = np.load(path, mmap_mode="r")
    x = np.array(mm[s:s + rows])
    del mm
    yield x


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--full", action="store_true", help="N=2,000,000")
  ap.add_argument("--n", type=int)
  ap.add_argument("--d", type=int, default=384)
  ap.add_argument("--k", type=int, default=1024)
  ap.add_argument("--chunk-rows", type=int, default=200_000)
  ap.add_argument("--iters", type=int, default=2)
  ap.add_argument("--balanced", action="store_true")
  a = ap.parse_args()
  n = a.n or (2_000_000 if a.full else 300_000)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "emb.npy")
    t = time.perf_counter()
    p = mp.get_context("spawn").Process(target=write_data, args=(path, n, a.d, 256, 100_000))
    p.start()
    p.join()
    print(f"wrote {n:,} x {a.d} float32 ({n * a.d * 4 / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - t:.1f} s")
    import jax  # noqa: F401  (after the child: keep its memory out of ours)
    from clustering import kmeans, streaming
    # warm up the compiled passes on a tiny input, then take the baseline
    kmeans.fit(np.random.default_rng(0).standard_normal((4 * a.k, a.d)).astype(np.float32),
               a.k, iters=1, balanced=a.balanced, return_labels=False)
    base = rss_mib()
    base_peak = peak_mib()
    t = time.perf_counter()
    res = streaming.fit_stream(chunks(path, a.chunk_rows), a.k, iters_per_chunk=a.iters,
                               balanced=a.balanced, tol=0.0, progress=True)
    dt = time.perf_counter() - t
    peak = peak_mib()
  chunk_mib = a.chunk_rows * a.d * 4 / 2**20
  centers_mib = a.k * a.d * 4 / 2**20
  print(f"fit {res.n_seen:,} points in {len(res.iters)} chunks x {a.iters} iterations: "
        f"{dt:.1f} s ({res.n_seen * len(res.iters) and res.n_seen * a.iters / dt:,.0f} "
        f"point-iterations/s)")
  print(f"baseline RSS {base:.0f} MiB (peak before {base_peak:.0f} MiB); peak during fit "
        f"{peak:.0f} MiB")
  grown = peak - max(base, base_peak)
  print(f"peak above baseline: {grown:.0f} MiB = {grown / chunk_mib:.2f} x one chunk "
        f"({chunk_mib:.0f} MiB); centers {centers_mib:.1f} MiB; data on disk "
        f"{n * a.d * 4 / 2**20:.0f} MiB")
  print(f"budget: < 2048 MiB beyond the centers -> {'OK' if grown - centers_mib < 2048 else 'OVER'}")


if __name__ == "__main__":
  main()
