"""An expert's training stream: its cluster's samples plus a few out-of-cluster ones.

D_c (docs/method.md step 6) is the union of the fine clusters that fine_to_expert
maps to expert c; the assign stage already wrote each sample's expert in
assign/<stem>.npz. The stream is a subset of the loader's sample numbers, fed
to `loader.train_iterator(..., indices=stream.indices)`, which shuffles it
globally and reshuffles it every pass.

Out-of-cluster (OOC) samples, reference code (mode/move2train/mode_wds.py,
`dataset_filter`): per shard, int(ooc_ratio * <number of that shard's
out-of-cluster samples>) random out-of-cluster samples are added, i.e. 2% of
everything outside the cluster, not 2% of the cluster size (for 4 balanced
experts that is ~1.5% of the data beside the cluster's 25%). `ooc_base=
"in_cluster"` gives the other reading, int(ooc_ratio * |D_c|) in total.
The reference redraws the OOC samples (unseeded) each time it reads a shard;
here they are drawn once per (seed, expert), so the stream is reproducible.

Epoch length: the paper keeps an expert "epoch" at the full data-set size
(the step counts of runs.plan: an epoch is N / batch steps for the seed and
every expert alike), so one expert epoch covers its subset about
N / |stream| times; the loader's endless reshuffled repeat provides exactly
that.

`ablation="random"` (paper Table 5, Random-n): experts get random disjoint
splits of the assigned samples with the same sizes as the clusters.
"""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from mode_jax import constants
from mode_jax import workdir as wd
from mode_jax.data.io.shard_index import SampleIndex

log = logging.getLogger(__name__)
OOC_BASES = ("out_of_cluster", "in_cluster")
ABLATIONS = ("", "random")


def default_config() -> ml_collections.ConfigDict:
  """Fields of an expert's stream (config.expert_stream)."""
  c = ml_collections.ConfigDict()
  c.expert = 0                        # which coarse cluster c
  c.ooc_ratio = constants.OOC_RATIO   # 0 = in-cluster samples only
  c.ooc_base = "out_of_cluster"       # reference: ratio of the shard's OOC samples
  c.ablation = ""                     # "random": Random-n split of paper Table 5
  c.seed = 0
  return c


@dataclasses.dataclass
class ExpertStream:
  expert: int
  indices: np.ndarray        # int64, sorted sample numbers of the loader's index
  num_in_cluster: int
  num_ooc: int
  epoch_samples: int         # samples per expert "epoch": the whole data set (paper)

  @property
  def passes_per_epoch(self) -> float:
    return self.epoch_samples / max(1, len(self.indices))


def sample_experts(index: SampleIndex, workdir: str) -> np.ndarray:
  """int32[N]: the expert of every indexed sample, -1 where assign/ has none.

  Samples are matched by key, so samples the embed stage skipped (no caption)
  or assign rows missing from the index (a truncated shard) are both harmless.
  """
  experts = np.full(len(index), -1, np.int32)
  unmatched = 0
  for s, shard in enumerate(index.shards):
    p = wd.require(workdir, f"assign/{wd.shard_stem(shard)}.npz", "assign")
    z = wd.load_npz(p)
    keys, expert = z["keys"].astype(str), z["expert"].astype(np.int32)
    mine = index.keys[s]
    if not len(mine):
      unmatched += len(keys)
      continue
    order = np.argsort(mine)
    pos = np.searchsorted(mine, keys, sorter=order).clip(0, len(mine) - 1)
    hit = mine[order[pos]] == keys
    unmatched += int((~hit).sum())
    experts[index.offsets[s] + order[pos[hit]]] = expert[hit]
  if unmatched:
    log.warning("%d assigned samples are not in the shard index (truncated shards?)", unmatched)
  return experts


def random_split(experts: np.ndarray, seed: int) -> np.ndarray:
  """Random-n ablation: same cluster sizes, samples dealt out at random (-1 stays -1)."""
  assigned = np.flatnonzero(experts >= 0)
  sizes = np.bincount(experts[assigned])
  shuffled = np.random.default_rng([seed, 0x52414E44]).permutation(assigned)
  out = np.full_like(experts, -1)
  out[shuffled] = np.repeat(np.arange(len(sizes), dtype=experts.dtype), sizes)
  return out


def select(experts: np.ndarray, offsets: np.ndarray, expert: int, *, ooc_ratio: float,
           ooc_base: str, seed: int) -> tuple[np.ndarray, int, int]:
  """(sorted sample numbers, #in-cluster, #ooc) of one expert's stream."""
  if ooc_base not in OOC_BASES:
    raise ValueError(f"ooc_base={ooc_base!r}: choose from {OOC_BASES}")
  inside = experts == expert
  in_idx = np.flatnonzero(inside)
  outside = (experts >= 0) & ~inside
  rng = np.random.default_rng([seed, expert])
  if ooc_ratio <= 0:
    ooc = np.zeros(0, np.int64)
  elif ooc_base == "out_of_cluster":      # reference: per shard, ratio of its OOC samples
    parts = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
      cand = lo + np.flatnonzero(outside[lo:hi])
      parts.append(rng.choice(cand, int(len(cand) * ooc_ratio), replace=False))
    ooc = np.concatenate(parts) if parts else np.zeros(0, np.int64)
  else:
    cand = np.flatnonzero(outside)
    ooc = rng.choice(cand, min(len(cand), int(len(in_idx) * ooc_ratio)), replace=False)
  return np.sort(np.concatenate([in_idx, ooc]).astype(np.int64)), len(in_idx), len(ooc)


def expert_stream(cfg, workdir: str, index: SampleIndex) -> ExpertStream:
  """Reads assign/ for all shards of `index` and returns expert cfg.expert's stream."""
  if cfg.ablation not in ABLATIONS:
    raise ValueError(f"ablation={cfg.ablation!r}: choose from {ABLATIONS}")
  experts = sample_experts(index, workdir)
  if cfg.ablation == "random":
    experts = random_split(experts, cfg.seed)
  indices, n_in, n_ooc = select(experts, index.offsets, cfg.expert, ooc_ratio=cfg.ooc_ratio,
                                ooc_base=cfg.ooc_base, seed=cfg.seed)
  if n_in == 0:
    n = int(experts.max()) + 1 if (experts >= 0).any() else 0
    raise ValueError(f"expert {cfg.expert} has no samples (the assignment has {n} experts)")
  return ExpertStream(expert=int(cfg.expert), indices=indices, num_in_cluster=n_in,
                      num_ooc=n_ooc, epoch_samples=len(index))
