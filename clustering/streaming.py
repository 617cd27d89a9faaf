"""Online k-means over a stream of chunks (files), as the reference fits fine centers.

Reference (prep_hrchy.cluster_fine): initialise on the first file, then for
every file run up to 50 iterations warm-started from the previous file's
centers. Only one chunk (plus the K x D centers) is in memory at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from clustering import kmeans
from mode_jax import constants


@dataclasses.dataclass
class StreamResult:
  centers: np.ndarray                 # float32[K, D]
  n_seen: int                         # points over all chunks
  inertia: list[float]                # per chunk, after its last assignment
  iters: list[int]                    # iterations run per chunk


def fit_stream(chunks: Iterable[np.ndarray], k: int, *,
               iters_per_chunk: int = constants.FINE_ITERS_PER_FILE,
               centers: np.ndarray | None = None, progress: bool = True,
               on_chunk: Callable[[int, np.ndarray], None] | None = None,
               **fit_kwargs) -> StreamResult:
  """Fits k centers chunk by chunk; `centers` warm-starts the first chunk too.

  fit_kwargs go to kmeans.fit (metric, balanced, init, seed, chunk_size, mesh,
  tol, ...). `on_chunk(i, centers)` runs after each chunk (checkpointing).
  """
  n_seen, inertia, iters = 0, [], []
  bar = tqdm(desc=f"online k-means K={k}", unit="pt", disable=not progress)
  for i, x in enumerate(chunks):
    x = np.asarray(x)
    res = kmeans.fit(x, k, iters=iters_per_chunk, centers=centers, return_labels=False,
                     **fit_kwargs)
    centers = res.centers
    n_seen += len(x)
    inertia.append(res.inertia)
    iters.append(res.n_iter)
    bar.update(len(x))
    bar.set_postfix(chunk=i, iters=res.n_iter, inertia=f"{res.inertia:.4g}")
    if on_chunk is not None:
      on_chunk(i, centers)
  bar.close()
  if centers is None:
    raise ValueError("fit_stream got no chunks")
  return StreamResult(centers, n_seen, inertia, iters)
