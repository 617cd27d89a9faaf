"""Open Clip Art Library SVGs (Debian `openclipart-svg`) as image-caption pairs.

Each SVG's <metadata> gives human-written text, as web alt-text would: the
work's <dc:title>, keywords (<dc:subject> <rdf:li>) and sometimes a
<dc:description>. Images are rendered with cairosvg at `size` x `size`
(aspect kept, letterboxed) onto white. Rendering all ~7.5k files takes
minutes, so results (images, metadata, and which files failed) are cached in
one .npz shared across workdirs and extended incrementally.

Titles repeat (icon sets: "gramastar" x1375), so held-out data are chosen by
normalised title: no held-out title ever occurs in training.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import multiprocessing
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
from tqdm import tqdm

from mode_jax.data.corpus import tables
from mode_jax.data.corpus.sources.common import MissingSource

CLIPART_DIR = "/usr/share/openclipart/svg"
INSTALL = "apt-get install -y --no-install-recommends openclipart-svg"
MAX_DESCRIPTION = 500   # characters; a few descriptions are whole licence texts

# Top-level category -> readable names (first is canonical) for the zero-shot set.
CATEGORY_NAMES = tables.load("classnames")["clipart_categories"]
CATEGORY_TEMPLATES = [
    "a clip art of {}.", "an icon of {}.", "a vector drawing of {}.", "an illustration of {}.",
]


# --- files and metadata -------------------------------------------------------

def list_svgs(root: str = CLIPART_DIR) -> list[str]:
  """Sorted paths (relative to root) of the regular .svg files; symlinks are duplicates."""
  out = []
  for dirpath, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dirpath, f)
      if f.lower().endswith(".svg") and not os.path.islink(p):
        out.append(os.path.relpath(p, root))
  if not out:
    raise MissingSource("clip-art SVGs", root, INSTALL)
  return sorted(out)


def _local(tag) -> str:
  return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _clean(text) -> str:
  return re.sub(r"\s+", " ", text or "").strip()


def parse_metadata(svg: bytes) -> dict:
  """{'title', 'keywords', 'description'} of the <cc:Work>; title '' when absent.

  Only the Work's own children count: creator/publisher agents also carry a
  <dc:title> (an author's name), which is not a caption.
  """
  root = ET.fromstring(svg)
  work = next((el for el in root.iter() if _local(el.tag) == "Work"), None)
  meta = {"title": "", "keywords": [], "description": ""}
  if work is None:
    return meta
  for child in work:
    name = _local(child.tag)
    if name == "title":
      meta["title"] = _clean(child.text)
    elif name == "subject":
      kws = [_clean(li.text) for li in child.iter() if _local(li.tag) == "li"]
      meta["keywords"] = list(dict.fromkeys(k for k in kws if k))
    elif name == "description":
      meta["description"] = _clean(child.text)[:MAX_DESCRIPTION]
  return meta


def captions(meta: dict) -> list[str]:
  """Several texts per image: title, keywords joined, description (when present), deduplicated."""
  texts = [meta["title"], ", ".join(meta["keywords"]), meta["description"]]
  out, seen = [], set()
  for t in texts:
    if t and t.lower() not in seen:
      seen.add(t.lower())
      out.append(t)
  return out


def render(svg: bytes, size: int) -> np.ndarray:
  """SVG -> uint8 [size, size, 3], aspect kept (cairosvg letterboxes), on white."""
  import cairosvg
  from PIL import Image
  png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
  rgba = Image.open(io.BytesIO(png)).convert("RGBA")
  if rgba.size != (size, size):
    rgba = rgba.resize((size, size), Image.BICUBIC)
  canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
  canvas.alpha_composite(rgba)
  return np.asarray(canvas.convert("RGB"))


def _process(job):
  """Worker: (root, relpath, size) -> (relpath, status, meta, image | None, error)."""
  root, rel, size = job
  try:
    with open(os.path.join(root, rel), "rb") as f:
      svg = f.read()
    meta = parse_metadata(svg)
  except Exception as e:   # noqa: BLE001  (any malformed file is skipped and counted)
    return rel, "bad_xml", None, None, repr(e)[:200]
  if not meta["title"]:
    return rel, "no_title", meta, None, ""
  try:
    image = render(svg, size)
  except Exception as e:   # noqa: BLE001
    return rel, "render_failed", meta, None, repr(e)[:200]
  if image.min() == 255:
    return rel, "blank", meta, None, ""
  return rel, "ok", meta, image, ""


# --- the render cache ---------------------------------------------------------

def cache_path(cache_dir: str, root: str, size: int) -> str:
  """clipart-<size>.npz for the Debian tree; other trees get a hash of their path."""
  name = f"clipart-{size}"
  if os.path.abspath(root) != CLIPART_DIR:
    name += "-" + hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:8]
  return os.path.join(os.path.expanduser(cache_dir), name + ".npz")


def _load_cache(path: str, size: int) -> dict:
  """relpath -> (status, meta, image | None) of every file processed before."""
  if not os.path.exists(path):
    return {}
  with np.load(path, allow_pickle=False) as z:
    if z["images"].shape[1:] != (size, size, 3):
      return {}
    rels, status, metas = z["relpaths"], z["status"], z["meta"]
    row = np.cumsum(status == "ok") - 1
    images = z["images"]
    return {str(r): (str(s), json.loads(str(m)), images[row[i]] if s == "ok" else None)
            for i, (r, s, m) in enumerate(zip(rels, status, metas))}


def _save_cache(path: str, entries: dict, size: int) -> None:
  rels = sorted(entries)
  ok = [r for r in rels if entries[r][0] == "ok"]
  images = (np.stack([entries[r][2] for r in ok]) if ok
            else np.zeros((0, size, size, 3), np.uint8))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"   # unique: two processes may fill one cache
  with open(tmp, "wb") as f:
    np.savez_compressed(f, relpaths=np.array(rels),
                        status=np.array([entries[r][0] for r in rels]),
                        meta=np.array([json.dumps(entries[r][1]) for r in rels]),
                        images=images)
  os.replace(tmp, path)


def load_rendered(root: str, relpaths: list[str], size: int, cache_dir: str,
                  workers: int = 2) -> dict:
  """relpath -> (status, meta, image | None) for `relpaths`, rendering only what the cache lacks."""
  path = cache_path(cache_dir, root, size)
  entries = _load_cache(path, size)
  todo = [r for r in relpaths if r not in entries]
  if todo:
    jobs = [(root, r, size) for r in todo]
    bar = tqdm(total=len(jobs), desc=f"render clip art {size}px", unit="svg")
    if workers > 1 and len(jobs) > 1:
      with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.imap_unordered(_process, jobs, chunksize=8)
        for rel, status, meta, image, _ in results:
          entries[rel] = (status, meta, image)
          bar.update()
    else:
      for job in jobs:
        rel, status, meta, image, _ = _process(job)
        entries[rel] = (status, meta, image)
        bar.update()
    bar.close()
    _save_cache(path, entries, size)
  return {r: entries[r] for r in relpaths}


# --- held-out split by title --------------------------------------------------

def normalise_title(title: str) -> str:
  """Lower case, letters only: 'Clipart by X - smiley111' and '- smiley2' are one title."""
  return re.sub(r"[^a-z]+", " ", title.lower()).strip()


def heldout_titles(norm_titles: list[str], frac: float, max_group: int, seed: int) -> set:
  """About frac of the unique titles, drawn from titles with at most max_group images.

  Big groups ("gramastar" x1375) stay in training: held out, one icon set
  would swamp the evaluation sets.
  """
  counts = collections.Counter(norm_titles)
  candidates = sorted(t for t, c in counts.items() if c <= max_group)
  n = min(len(candidates), int(round(frac * len(counts))))
  if frac > 0 and candidates:
    n = max(n, 1)
  perm = np.random.default_rng([seed, 4]).permutation(len(candidates))
  return {candidates[i] for i in perm[:n]}


def category(relpath: str) -> str:
  return relpath.replace(os.sep, "/").split("/", 1)[0]
