"""The `cluster` and `assign` stages: embed/ -> cluster/ -> assign/ (see mode_jax/workdir.py).

Both take the clustering ConfigDict sub-tree (fields and defaults in
`clustering.default_config()`; unknown fields are an error) and a workdir.

Hosts. `cluster`: the embed files are grouped into chunks as on one process
(row counts read by each host for its share of the files, then exchanged);
each host reads only its contiguous block of every chunk's rows (ranged reads), and the
k-means iterations run on all devices of all hosts with psum'd statistics
(clustering/kmeans.py), one device program per chunk. Process 0 writes
cluster/. `assign`: each host assigns its round-robin share of the files on
its local devices and writes their assign/ files; process 0 merges the
hosts' summary parts into cluster/summary/. Each host records what it read
in <stage dir>/hosts/process-<i>-of-<n>.json.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile

import numpy as np
from tqdm import tqdm

from clustering import distributed as points_lib
from clustering import hierarchy, kmeans, streaming, summary
from clustering.config import default_config
from mode_jax import distributed
from mode_jax import workdir as wd

_SUMMARY_ONLY = ("summary_captions", "summary_fine_clusters")


def resolve_config(cfg):
  """Defaults overlaid with cfg; a field the stages do not know raises ValueError."""
  out = default_config()
  for key, value in (cfg or {}).items():
    if key not in out:
      raise ValueError(f"unknown clustering config field {key!r}; known: {sorted(out)}")
    out[key] = value
  kmeans.check_metric(out.metric)
  return out


def embed_inputs(workdir: str) -> tuple[list[str], dict]:
  """Sorted embed/*.npz and embed/meta.json (MissingInput -> stage 'embed')."""
  meta = wd.read_json(wd.require(workdir, "embed/meta.json", "embed"))
  files = wd.glob(wd.path(workdir, "embed", "*.npz"))
  if not files:
    raise wd.MissingInput(wd.path(workdir, "embed", "*.npz"), "embed")
  return files, meta


def fingerprint(files: list[str], embed_meta: dict, cfg) -> str:
  """Hash of the embed files' names, sizes and mtimes, embed meta and the fit config."""
  h = hashlib.sha256()
  for f in files:
    h.update(f"{wd.basename(f)}:{wd.signature(f)};".encode())
  fit_cfg = {k: v for k, v in cfg.to_dict().items() if k not in _SUMMARY_ONLY}
  h.update(json.dumps([embed_meta, fit_cfg], sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def _emb_header(f) -> tuple[tuple, np.dtype]:
  major, _ = np.lib.format.read_magic(f)
  read = (np.lib.format.read_array_header_1_0 if major == 1
          else np.lib.format.read_array_header_2_0)
  shape, fortran, dtype = read(f)
  if fortran:
    raise ValueError("embed files hold C-order arrays")
  return tuple(shape), dtype


def _rows(npz_path: str) -> int:
  """Rows of an embed file's `emb` array, read from the .npy header only."""
  with wd.open(npz_path, "rb") as raw, zipfile.ZipFile(raw) as z, z.open("emb.npy") as f:
    return int(_emb_header(f)[0][0])


def read_rows(npz_path: str, lo: int, hi: int) -> np.ndarray:
  """Rows [lo, hi) of an embed file's `emb`, reading only their bytes.

  np.savez stores members uncompressed, so the rows sit at a fixed offset:
  the member's local zip header, then the .npy header, then row-major data.
  On an object store that is one ranged read per file (a host reads its block
  of a chunk, not the whole file). Compressed members fall back to a full read.
  """
  with wd.open(npz_path, "rb") as raw, zipfile.ZipFile(raw) as z:
    info = z.getinfo("emb.npy")
    with z.open(info) as f:
      shape, dtype = _emb_header(f)
      header_len = f.tell()
    if info.compress_type != zipfile.ZIP_STORED:
      with z.open(info) as f:
        return np.load(f)[lo:hi]
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    raw.seek(info.header_offset)
    local = raw.read(30)   # local file header: name and extra lengths at bytes 26..30
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    raw.seek(info.header_offset + 30 + name_len + extra_len + header_len + lo * row_bytes)
    data = raw.read((hi - lo) * row_bytes)
  return np.frombuffer(data, dtype).reshape((hi - lo,) + shape[1:])


def row_counts(files: list[str]) -> np.ndarray:
  """int64[len(files)]: each host reads the headers of its share, then all exchange them."""
  counts = np.zeros(len(files), np.int64)
  mine = distributed.share(range(len(files)))
  for i in mine:
    counts[i] = _rows(files[i])
  return distributed.allgather(counts).sum(0)


def _groups(files: list[str], rows: np.ndarray, min_rows: int) -> list[list[int]]:
  """Consecutive file indices grouped so each group has >= min_rows rows (a short tail
  joins the last)."""
  groups, cur, total = [], [], 0
  for i, _ in enumerate(files):
    cur.append(i)
    total += int(rows[i])
    if total >= min_rows:
      groups.append(cur)
      cur, total = [], 0
  if cur:
    if groups:
      groups[-1].extend(cur)
    else:
      groups.append(cur)
  return groups


def _host_block(files: list[str], rows: np.ndarray, dim: int, dtype: str):
  """This host's contiguous block of the rows of `files` concatenated, and what it read.

  The block depends only on the total and the host count, so the global chunk
  (blocks in process order) is the one a single process would read.
  """
  lo, hi = distributed.block(int(rows.sum()))
  starts = np.concatenate([[0], np.cumsum(rows)])
  parts, read = [], []
  for f, s, e in zip(files, starts[:-1], starts[1:]):
    a, b = max(lo, int(s)), min(hi, int(e))
    if a < b:
      parts.append(read_rows(f, a - int(s), b - int(s)))
      read.append([wd.basename(f), a - int(s), b - int(s)])
  if not parts:   # a host with no rows in this chunk still joins the collective fit
    return np.zeros((0, dim), dtype), read
  return (parts[0] if len(parts) == 1 else np.concatenate(parts)), read


def run_cluster(cfg, workdir: str) -> hierarchy.Hierarchy:
  """Fits fine centers online over embed/ files, then the experts; skips if up to date."""
  cfg = resolve_config(cfg)
  files, embed_meta = embed_inputs(workdir)
  fp = fingerprint(files, embed_meta, cfg)
  meta_path = wd.path(workdir, "cluster", "meta.json")
  if wd.exists(meta_path) and wd.read_json(meta_path).get("fingerprint") == fp:
    if distributed.is_primary():
      print(f"cluster: up to date ({meta_path}, fingerprint {fp}); skipping")
    return hierarchy.load(workdir)
  order = list(range(len(files)))
  if cfg.shuffle_files:
    np.random.default_rng(cfg.seed).shuffle(order)
  files_in_order = [files[i] for i in order]
  rows = row_counts(files_in_order)
  total = int(rows.sum())
  if total < cfg.m:
    raise ValueError(f"cluster: {total} embeddings cannot make m={cfg.m} fine clusters")
  groups = _groups(files_in_order, rows, max(cfg.min_chunk_rows or 4 * cfg.m, cfg.m))
  dim = int(embed_meta.get("dim") or 0)
  read = {"files": [], "rows": 0}

  def chunks():   # this host's block of the rows of each group's files
    for g in groups:
      x, got = _host_block([files_in_order[i] for i in g], rows[g], dim,
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
  meta = dict(encoder=embed_meta.get("encoder"), embed_fingerprint=embed_meta.get("fingerprint"),
              fingerprint=fp, dim=int(fine.centers.shape[1]), n_points=total,
              n_files=len(files), fine_balanced=bool(cfg.balanced_fine),
              balanced_method=cfg.balanced_method, iters_per_chunk=fine.iters,
              config=cfg.to_dict())
  # The coarse step clusters m points: one device, the same on every host and topology.
  h = hierarchy.build(fine.centers, cfg.n, metric=cfg.metric, iters=cfg.coarse_iters,
                      init=cfg.init, seed=cfg.seed, balanced=cfg.balanced_coarse,
                      mesh=points_lib.local_mesh(1), meta=meta)
  distributed.host_report(wd.path(workdir, "cluster"), read=read["files"], rows=read["rows"])
  distributed.on_primary("cluster", lambda: hierarchy.save(h, workdir))
  if distributed.is_primary():
    print(f"cluster: m={h.m} fine -> n={h.n} experts, fine per expert "
          f"{h.meta['fine_per_expert']}, order {h.expert_order}")
  return h


def _assign_file(f: str, h, metric: str, chunk_size: int, mesh) -> tuple:
  z = wd.load_npz(f)
  fine, _ = kmeans.assign(z["emb"], h.fine_centers, metric=metric, chunk_size=chunk_size,
                          mesh=mesh)
  fine = fine.astype(np.int32)
  return z["keys"], fine, h.fine_to_expert[fine].astype(np.int32)


def run_assign(cfg, workdir: str, shards=None) -> dict | None:
  """Writes assign/<stem>.npz for every embed file (resumable) and cluster/summary/.

  An assign file carries the fingerprint of the clustering it came from, so
  a re-run keeps the files of the same clustering and redoes the others.
  `shards` (config.input.shards) lets the summary quote sample captions.
  Returns the expert-share report on process 0 (None on the others).
  """
  cfg = resolve_config(cfg)
  h = hierarchy.load(workdir)
  files, _ = embed_inputs(workdir)
  metric = h.meta.get("metric", cfg.metric)
  cluster_fp = str(h.meta.get("fingerprint"))
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
    return report

  return distributed.on_primary("assign summary", merge_and_write)
