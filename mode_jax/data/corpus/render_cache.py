"""Pixels for corpus records: SVG or raster to RGB on white, rendered once and cached.

A record says how to get its pixels in `render`: {"svg": bytes} or
{"path": file} (.svg, .png, .webp). Rendering the richer corpus takes
minutes (docs/corpus.md: 1 ms per mdi icon, 23 ms per gradient-heavy Fluent emoji),
so each (source, version, size) has one compressed .npz of its rendered
images keyed by record key, extended incrementally; a change of package
version starts a new file instead of mixing renders.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import time

import numpy as np
from tqdm import tqdm

from mode_jax.data.corpus.sources import clipart as sources_clipart

CHUNKSIZE = 16   # jobs per worker round trip: most renders take 1-20 ms


def render_raster(data: bytes, size: int) -> np.ndarray:
  """PNG/WebP bytes -> uint8 [size, size, 3]: aspect kept, centred, alpha over white.

  Scaled in premultiplied alpha (PIL's RGBa) so transparent pixels' colours
  do not bleed into the edges.
  """
  from PIL import Image
  im = Image.open(io.BytesIO(data)).convert("RGBA")
  scale = size / max(im.size)
  if scale != 1:
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    im = im.convert("RGBa").resize((w, h), Image.LANCZOS if scale < 1 else Image.BICUBIC)
    im = im.convert("RGBA")
  canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
  canvas.alpha_composite(im, ((size - im.width) // 2, (size - im.height) // 2))
  return np.asarray(canvas.convert("RGB"))


def render(spec: dict, size: int) -> np.ndarray:
  """A record's `render` spec -> uint8 [size, size, 3] on white."""
  if "svg" in spec:
    return sources_clipart.render(spec["svg"], size)
  with open(spec["path"], "rb") as f:
    data = f.read()
  if spec["path"].lower().endswith(".svg"):
    return sources_clipart.render(data, size)
  return render_raster(data, size)


def _process(job):
  """Worker: (key, spec, size) -> (key, status, image | None)."""
  key, spec, size = job
  try:
    image = render(spec, size)
  except Exception:   # noqa: BLE001  (a malformed file is skipped and counted)
    return key, "render_failed", None
  if image.min() == 255:
    return key, "blank", None
  return key, "ok", image


def cache_path(cache_dir: str, source: str, version: str, size: int) -> str:
  """<cache_dir>/render/<source>-<version>-<size>.npz, the source made file-safe."""
  name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{source}-{version}-{size}")
  return os.path.join(os.path.expanduser(cache_dir), "render", name + ".npz")


def _load(path: str, size: int) -> dict:
  """key -> image | None (None: it failed or was blank, so it is not retried)."""
  if not os.path.exists(path):
    return {}
  with np.load(path, allow_pickle=False) as z:
    images = z["images"]
    if images.shape[1:] != (size, size, 3):
      return {}
    row = np.cumsum(z["ok"]) - 1
    return {str(k): (images[row[i]] if ok else None)
            for i, (k, ok) in enumerate(zip(z["keys"], z["ok"]))}


def _save(path: str, entries: dict, size: int) -> None:
  keys = sorted(entries)
  ok = np.array([entries[k] is not None for k in keys], bool)
  images = (np.stack([entries[k] for k in keys if entries[k] is not None]) if ok.any()
            else np.zeros((0, size, size, 3), np.uint8))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"   # unique: two processes may fill one cache
  with open(tmp, "wb") as f:
    np.savez_compressed(f, keys=np.array(keys), ok=ok, images=images)
  os.replace(tmp, path)


def render_records(records: list[dict], size: int, cache_dir: str, workers: int = 2,
                   stats: dict | None = None) -> dict:
  """key -> uint8 [size, size, 3] for every record that renders (failed/blank left out).

  Records are grouped by (source, version); each group's cache file is read,
  the missing keys rendered in a spawn pool, and the file rewritten once.
  `stats[source]` gets {"records", "rendered", "seconds", "per_s", "failed", "cache"}.
  """
  groups = {}
  for r in records:
    groups.setdefault((r["source"], r["version"]), []).append(r)
  out = {}
  stats = {} if stats is None else stats
  pool = None   # one pool for all groups: a spawn start costs about a second
  try:
    for (source, version), recs in groups.items():
      path = cache_path(cache_dir, source, version, size)
      entries = _load(path, size)
      todo = [(r["key"], r["render"], size) for r in recs if r["key"] not in entries]
      start = time.time()
      if todo:
        bar = tqdm(total=len(todo), desc=f"render {source} {size}px", unit="img")
        if workers > 1 and len(todo) > CHUNKSIZE:
          pool = pool or multiprocessing.get_context("spawn").Pool(workers)
          results = pool.imap_unordered(_process, todo, chunksize=CHUNKSIZE)
        else:
          results = map(_process, todo)
        for key, _, image in results:
          entries[key] = image
          bar.update()
        bar.close()
        _save(path, entries, size)
      seconds = time.time() - start
      kept = {r["key"]: entries[r["key"]] for r in recs if entries.get(r["key"]) is not None}
      out.update(kept)
      stats[source] = {"records": len(recs), "rendered": len(todo),
                       "seconds": round(seconds, 2),
                       "per_s": round(len(todo) / seconds, 1) if todo and seconds > 0 else None,
                       "failed": len(recs) - len(kept), "cache": path}
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  return out
