"""Stage `cluster`: embed/ -> cluster/ (fine centers, coarse experts; mode_jax/workdir.py).

docs/method.md steps 2-3. The embed files are grouped into chunks as on one
process (row counts read by each host for its share of the files, then
exchanged); each host reads only its contiguous block of every chunk's rows
(ranged reads, clustering/embed_files.py), and the k-means iterations run on
all devices of all hosts with psum'd statistics (clustering/kmeans.py), one
device program per chunk. Process 0 writes cluster/; each host records what
it read in cluster/hosts/process-<i>-of-<n>.json. Fields and defaults:
clustering/config.py (unknown fields are an error).
"""

from __future__ import annotations

import numpy as np

from clustering import config as cluster_config
from clustering import distributed as points_lib
from clustering import embed_files, hierarchy, streaming
from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd

def run(config, workdir: str) -> hierarchy.Hierarchy:
  """Fits fine centers online over the embed stage's files, then the experts; skips when
  cluster/manifest.json was made from the same embeddings and fields (a changed clustering
  moves the old cluster/ to <workdir>/stale/)."""
  return _cluster(config.cluster, workdir)


def _embed_inputs(workdir: str) -> tuple[provenance.Input, list[str], dict]:
  """(the embeddings' provenance, their files in shard order, embed/meta.json); MissingInput
  naming `embed` until that stage has finished."""
  embedded = provenance.upstream(workdir, "embed", "embed", "caption embeddings",
                                 facts=("encoder",))
  names = provenance.read(workdir, "embed")["facts"]["files"]
  meta = wd.read_json(wd.require(workdir, "embed/meta.json", "embed"))
  return embedded, [wd.path(workdir, "embed", n) for n in names], meta


def _cluster(cfg, workdir: str) -> hierarchy.Hierarchy:
  cfg = cluster_config.resolve_config(cfg)
  embedded, files, embed_meta = _embed_inputs(workdir)
  decision = provenance.decide(workdir, "cluster", "cluster",
                               {"cluster": cluster_config.what_fields(cfg)},
                               {"embeddings": embedded},
                               outputs_exist=wd.exists(wd.path(workdir, "cluster", "meta.json")))
  if not decision.todo:
    if distributed.is_primary():
      print(f"cluster: up to date (fingerprint {decision.fingerprint}); skipping")
    return hierarchy.load(workdir)
  if distributed.is_primary():
    print(provenance.say("cluster", decision,
                         f"fitting m={cfg.m} fine clusters and n={cfg.n} experts"))
  distributed.on_primary("cluster start", lambda: provenance.start(
      workdir, "cluster", decision, stale=[(wd.path(workdir, "cluster"), workdir)]))
  if not files:
    raise ValueError("cluster: the embed stage wrote no files (no training shards?)")
  order = list(range(len(files)))
  if cfg.shuffle_files:
    np.random.default_rng(cfg.seed).shuffle(order)
  files_in_order = [files[i] for i in order]
  rows = embed_files.row_counts(files_in_order)
  total = int(rows.sum())
  if total < cfg.m:
    raise ValueError(f"cluster: {total} embeddings cannot make m={cfg.m} fine clusters")
  groups = embed_files.groups(files_in_order, rows, max(cfg.min_chunk_rows or 4 * cfg.m, cfg.m))
  dim = int(embed_meta.get("dim") or 0)
  read = {"files": [], "rows": 0}

  def chunks():   # this host's block of the rows of each group's files
    for g in groups:
      x, got = embed_files.host_block([files_in_order[i] for i in g], rows[g], dim,
                                      embed_meta.get("dtype", "float16"))
      read["files"] += got
      read["rows"] += len(x)
      yield x

  fit_kw = dict(metric=cfg.metric, balanced=cfg.balanced_fine,
                balanced_method=cfg.balanced_method, candidates=cfg.candidates,
                init=cfg.init, seed=cfg.seed,
                chunk_size=cfg.chunk_size, tol=cfg.tol)
  fine = streaming.fit_stream(chunks(), cfg.m, iters_per_chunk=cfg.iters_per_file,
                              progress=distributed.is_primary(), **fit_kw)
  meta = dict(encoder=embed_meta.get("encoder"), embed_fingerprint=embedded.fingerprint,
              fingerprint=decision.fingerprint, dim=int(fine.centers.shape[1]), n_points=total,
              n_files=len(files), fine_balanced=bool(cfg.balanced_fine),
              balanced_method=cfg.balanced_method, iters_per_chunk=fine.iters,
              config=cfg.to_dict())
  # The coarse step clusters m points: one device, the same on every host and topology.
  h = hierarchy.build(fine.centers, cfg.n, metric=cfg.metric, iters=cfg.coarse_iters,
                      init=cfg.init, seed=cfg.seed, balanced=cfg.balanced_coarse,
                      mesh=points_lib.local_mesh(1), meta=meta)
  distributed.host_report(wd.path(workdir, "cluster"), read=read["files"], rows=read["rows"])
  def save():
    hierarchy.save(h, workdir)
    provenance.finish(workdir, "cluster", decision, m=h.m, n=h.n)

  distributed.on_primary("cluster", save)
  if distributed.is_primary():
    print(f"cluster: m={h.m} fine -> n={h.n} experts, fine per expert "
          f"{h.meta['fine_per_expert']}, order {h.expert_order}")
  return h
