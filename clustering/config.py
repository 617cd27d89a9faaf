"""Defaults of the cluster and assign stages (a ConfigDict sub-tree, e.g. config.cluster)."""

import ml_collections

from clustering import kmeans
from mode_jax import constants
from mode_jax import sections


def default_config() -> ml_collections.ConfigDict:
  """Every field the clustering stages read, with the reference's values as defaults."""
  c = ml_collections.ConfigDict()
  c.m = constants.NUM_FINE_CLUSTERS     # fine clusters (mu_s); paper Table 15
  c.n = 4                               # experts; paper uses 2..32
  c.metric = "euclidean"                # "euclidean" (reference) | "cosine" (paper App. E)
  c.balanced_fine = True                # reference: balanced k-means for fine clusters
  c.balanced_coarse = True              # reference: balanced k-means on the fine centers
  c.balanced_method = "prices"          # "prices" (ours, chunked) | "auction" (reference, dense)
  c.candidates = 16                     # prices: nearest centers each point may take
  c.iters_per_file = constants.FINE_ITERS_PER_FILE
  c.coarse_iters = constants.COARSE_ITERS
  c.tol = constants.KMEANS_TOL          # reference stop: (sum_k ||shift_k||)^2 < tol
  c.init = "random"                     # "random" (reference) | "k-means++"
  c.chunk_size = 0                      # rows per distance block (0: ~4 MiB of chunk x m scores)
  c.min_chunk_rows = 0                  # files are grouped until a chunk has this many rows (0: 4 m)
  c.shuffle_files = True                # reference shuffles the file order before fitting
  c.seed = 0
  c.summary_captions = 10               # sample captions per expert / fine cluster
  c.summary_fine_clusters = 10          # largest fine clusters shown in the summary
  return c


# Fields that only shape cluster/summary/ (written by `assign`): not what the clustering is.
SUMMARY_FIELDS = ("summary_captions", "summary_fine_clusters")


def what_fields(cfg) -> dict:
  """The cluster config fields the clustering depends on."""
  return {k: v for k, v in cfg.to_dict().items() if k not in SUMMARY_FIELDS}


def resolve_config(cfg) -> ml_collections.ConfigDict:
  """Defaults overlaid with cfg; a field the stages do not know raises ValueError."""
  out = sections.overlay(default_config(), cfg, "cluster")
  kmeans.check_metric(out.metric)
  return out
