"""The `cluster` and `assign` stages: embed/ -> cluster/ -> assign/ (see mode_jax/workdir.py).

Both take the clustering ConfigDict sub-tree (fields and defaults in
`clustering.default_config()`; unknown fields are an error) and a workdir.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import zipfile

import numpy as np
from tqdm import tqdm

from clustering import hierarchy, kmeans, streaming, summary
from clustering.config import default_config
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
  meta = wd.read_json(wd.require(workdir, os.path.join("embed", "meta.json"), "embed"))
  files = sorted(glob.glob(wd.path(workdir, "embed", "*.npz")))
  if not files:
    raise wd.MissingInput(wd.path(workdir, "embed", "*.npz"), "embed")
  return files, meta


def fingerprint(files: list[str], embed_meta: dict, cfg) -> str:
  """Hash of the embed files' names, sizes and mtimes, embed meta and the fit config."""
  h = hashlib.sha256()
  for f in files:
    st = os.stat(f)
    h.update(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns};".encode())
  fit_cfg = {k: v for k, v in cfg.to_dict().items() if k not in _SUMMARY_ONLY}
  h.update(json.dumps([embed_meta, fit_cfg], sort_keys=True, default=str).encode())
  return h.hexdigest()[:16]


def _rows(npz_path: str) -> int:
  """Rows of an embed file's `emb` array, read from the .npy header only."""
  with zipfile.ZipFile(npz_path) as z, z.open("emb.npy") as f:
    major, _ = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if major == 1
            else np.lib.format.read_array_header_2_0)
    shape, _, _ = read(f)
  return int(shape[0])


def _groups(files: list[str], min_rows: int) -> list[list[str]]:
  """Consecutive files grouped so each group has >= min_rows rows (a short tail joins the last)."""
  groups, cur, rows = [], [], 0
  for f in files:
    cur.append(f)
    rows += _rows(f)
    if rows >= min_rows:
      groups.append(cur)
      cur, rows = [], 0
  if cur:
    if groups:
      groups[-1].extend(cur)
    else:
      groups.append(cur)
  return groups


def _load_emb(files: list[str]) -> np.ndarray:
  parts = []
  for f in files:
    with np.load(f, allow_pickle=False) as z:
      parts.append(z["emb"])
  return parts[0] if len(parts) == 1 else np.concatenate(parts)


def run_cluster(cfg, workdir: str) -> hierarchy.Hierarchy:
  """Fits fine centers online over embed/ files, then the experts; skips if up to date."""
  cfg = resolve_config(cfg)
  files, embed_meta = embed_inputs(workdir)
  fp = fingerprint(files, embed_meta, cfg)
  meta_path = wd.path(workdir, "cluster", "meta.json")
  if os.path.exists(meta_path) and wd.read_json(meta_path).get("fingerprint") == fp:
    print(f"cluster: up to date ({meta_path}, fingerprint {fp}); skipping")
    return hierarchy.load(workdir)
  order = list(files)
  if cfg.shuffle_files:
    np.random.default_rng(cfg.seed).shuffle(order)
  groups = _groups(order, max(cfg.min_chunk_rows or 4 * cfg.m, cfg.m))
  total = sum(_rows(f) for f in files)
  if total < cfg.m:
    raise ValueError(f"cluster: {total} embeddings cannot make m={cfg.m} fine clusters")
  fit_kw = dict(metric=cfg.metric, balanced=cfg.balanced_fine,
                balanced_method=cfg.balanced_method, candidates=cfg.candidates,
                init=cfg.init, seed=cfg.seed,
                chunk_size=cfg.chunk_size, tol=cfg.tol)
  fine = streaming.fit_stream((_load_emb(g) for g in groups), cfg.m,
                              iters_per_chunk=cfg.iters_per_file, **fit_kw)
  meta = dict(encoder=embed_meta.get("encoder"), embed_fingerprint=embed_meta.get("fingerprint"),
              fingerprint=fp, dim=int(fine.centers.shape[1]), n_points=int(fine.n_seen),
              n_files=len(files), fine_balanced=bool(cfg.balanced_fine),
              balanced_method=cfg.balanced_method, iters_per_chunk=fine.iters,
              config=cfg.to_dict())
  h = hierarchy.build(fine.centers, cfg.n, metric=cfg.metric, iters=cfg.coarse_iters,
                      init=cfg.init, seed=cfg.seed, balanced=cfg.balanced_coarse, meta=meta)
  hierarchy.save(h, workdir)
  print(f"cluster: m={h.m} fine -> n={h.n} experts, fine per expert "
        f"{h.meta['fine_per_expert']}, order {h.expert_order}")
  return h


def _save_npz(p: str, **arrays) -> None:
  tmp = p + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, p)


def run_assign(cfg, workdir: str) -> dict:
  """Writes assign/<stem>.npz for every embed file (resumable) and cluster/summary/."""
  cfg = resolve_config(cfg)
  h = hierarchy.load(workdir)
  files, _ = embed_inputs(workdir)
  metric = h.meta.get("metric", cfg.metric)
  state_path = wd.path(workdir, "cluster", "summary", "assign_state.json")
  state = wd.read_json(state_path) if os.path.exists(state_path) else {}
  if state.get("cluster_fingerprint") != h.meta.get("fingerprint"):
    state = {"cluster_fingerprint": h.meta.get("fingerprint"), "done": []}
  done = set(state["done"])
  os.makedirs(wd.path(workdir, "assign"), exist_ok=True)
  stats = summary.Collector(h.m, h.n, cfg.summary_captions, cfg.seed)
  skipped = 0
  for i, f in enumerate(tqdm(files, desc="assign", unit="file")):
    stem = os.path.basename(f)[:-4]
    out = wd.path(workdir, "assign", stem + ".npz")
    if stem in done and os.path.exists(out):
      with np.load(out, allow_pickle=False) as z:
        keys, fine, expert = z["keys"], z["fine"], z["expert"]
      skipped += 1
    else:
      with np.load(f, allow_pickle=False) as z:
        keys, emb = z["keys"], z["emb"]
      fine, _ = kmeans.assign(emb, h.fine_centers, metric=metric, chunk_size=cfg.chunk_size)
      fine = fine.astype(np.int32)
      expert = h.fine_to_expert[fine].astype(np.int32)
      _save_npz(out, keys=keys, fine=fine, expert=expert)
      done.add(stem)
      state["done"] = sorted(done)
      wd.write_json(state_path, state)
    stats.add(i, stem, fine, expert)
  report = summary.write(workdir, h, stats, largest=cfg.summary_fine_clusters)
  print(f"assign: {len(files)} files ({skipped} already done); expert shares "
        f"{[round(s, 3) for s in report['shares']]}")
  return report
