"""Stage `assign`: every embedded sample to its nearest fine center and that center's expert.

docs/method.md step 4: embed/ + cluster/ -> assign/<stem>.npz (keys, fine,
expert, cluster_fingerprint) and cluster/summary/. Each host assigns its
round-robin share of the files on its local devices and writes their assign/
files; process 0 merges the hosts' summary parts. Each host records what it
read in assign/hosts/process-<i>-of-<n>.json.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from clustering import config as cluster_config
from clustering import distributed as points_lib
from clustering import hierarchy, kmeans, summary
from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd


def run(config, workdir: str) -> dict | None:
  """assign/ for every embed file (resumable) and cluster/summary/; the expert shares
  (process 0; None on the others)."""
  shards = config.input.shards if "input" in config else None   # only for the summary's quotes
  return _assign(config.cluster, workdir, shards)


def _assign_file(f: str, h, metric: str, chunk_size: int, mesh) -> tuple:
  z = wd.load_npz(f)
  fine, _ = kmeans.assign(z["emb"], h.fine_centers, metric=metric, chunk_size=chunk_size,
                          mesh=mesh)
  fine = fine.astype(np.int32)
  return z["keys"], fine, h.fine_to_expert[fine].astype(np.int32)


def _assign(cfg, workdir: str, shards=None) -> dict | None:
  """Writes assign/<stem>.npz for every embed file (resumable) and cluster/summary/.

  An assign file carries the fingerprint of the clustering it came from
  (cluster/manifest.json), so a re-run keeps the files of the same clustering
  and redoes the others; files of shards no longer in the data are moved to
  <workdir>/stale/. The summary is always rewritten (it is cheap).
  `shards` (config.input.shards) lets the summary quote sample captions.
  Returns the expert-share report on process 0 (None on the others).
  """
  cfg = cluster_config.resolve_config(cfg)
  clustering = provenance.upstream(workdir, "cluster", "cluster", "clustering", facts=("m", "n"))
  h = hierarchy.load(workdir)
  files = [wd.path(workdir, "embed", f)
           for f in provenance.read(workdir, "embed")["facts"]["files"]]
  metric = h.meta.get("metric", cfg.metric)
  cluster_fp = clustering.fingerprint
  decision = provenance.decide(workdir, "assign", "assign", {}, {"clustering": clustering},
                               outputs_exist=bool(wd.glob(wd.path(workdir, "assign", "*.npz"))))
  wanted = {wd.basename(f) for f in files}
  stale = [(f, workdir) for f in wd.glob(wd.path(workdir, "assign", "*.npz"))
           if wd.basename(f) not in wanted]   # shards no longer in the data
  if distributed.is_primary() and decision.todo:
    print(provenance.say("assign", decision, f"assigning {len(files)} files to n={h.n} experts"))
  distributed.on_primary("assign start", lambda: provenance.start(workdir, "assign", decision,
                                                                  stale=stale))
  mesh = points_lib.local_mesh()
  stats = summary.Collector(h.m, h.n, cfg.summary_captions, cfg.seed)
  skipped, read = 0, []
  mine = distributed.share(range(len(files)))
  for i in tqdm(mine, desc="assign", unit="file", disable=not distributed.is_primary()):
    f = files[i]
    stem = wd.basename(f)[:-4]
    out = wd.path(workdir, "assign", stem + ".npz")
    z = wd.load_npz(out) if wd.exists(out) else {}
    if str(z.get("cluster_fingerprint", "")) == cluster_fp:
      keys, fine, expert = z["keys"], z["fine"], z["expert"]
      skipped += 1
    else:
      keys, fine, expert = _assign_file(f, h, metric, cfg.chunk_size, mesh)
      read.append(wd.basename(f))
      wd.save_npz(out, keys=keys, fine=fine, expert=expert,
                  cluster_fingerprint=np.asarray(cluster_fp))
    stats.add(i, stem, fine, expert)
  distributed.host_report(wd.path(workdir, "assign"), read=read, kept=skipped)
  parts = wd.path(workdir, "cluster", "summary")
  n = distributed.process_count()
  if n > 1:
    stats.save(distributed.host_path(parts, ".npz"))
  distributed.barrier("assign")

  def merge_and_write():   # a report of process 0: it quotes a few captions of any shard
    with wd.io_stage("assign summary"):
      total = stats
      if n > 1:
        total = summary.Collector(h.m, h.n, cfg.summary_captions, cfg.seed)
        for q in range(n):
          total.merge(summary.Collector.load(distributed.host_path(parts, ".npz", q)))
      report = summary.write(workdir, h, total, largest=cfg.summary_fine_clusters,
                             shards=shards)
    print(f"assign: {len(files)} files ({skipped} up to date on process 0); expert shares "
          f"{[round(s, 3) for s in report['shares']]}")
    if decision.todo:
      provenance.finish(workdir, "assign", decision, m=h.m, n=h.n)
    return report

  return distributed.on_primary("assign summary", merge_and_write)
