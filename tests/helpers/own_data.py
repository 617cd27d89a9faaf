"""A researcher's own data, made offline with the tools researchers use.

Two kinds of input the pipeline must take as they come from outside:

* image-text shards from a web crawl: `serve_directory` puts generated
  pictures on a localhost HTTP server, `write_url_list` lists them (with
  404s and a corrupt file mixed in, as crawls have) and `run_img2dataset`
  downloads them with img2dataset's own API into webdataset shards
  (`make_img2dataset_shards` does all three);
* a CLIP_benchmark zero-shot task folder, written by clip-benchmark's own
  webdataset writer (`make_cb_task`).

The pictures are simple drawn scenes (coloured shapes on a plain
background) whose captions say what is drawn, so the captions carry signal
a tiny CLIP can learn. Everything is deterministic in `seed`.

  pattern, stats = make_img2dataset_shards(tmp_path, n=48)   # local folder or s3:// / gs://
  folder = make_cb_task(tmp_path / "cb", "shapes")

or, made once per pytest session (tests/conftest.py registers them; treat as read-only):
`own_crawl` -> (pattern, stats) of CRAWL, `own_cb_root` -> a root holding CB_TASK's folder.
img2dataset spawns its processes, so a script (not pytest) calling it needs the
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import io
import json
import os
import threading
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Scene vocabulary: names in captions -> RGB.
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (240, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZE_RANGE = (200, 600)          # web-image sides in pixels, drawn uniformly
CB_TEMPLATES = ("a photo of a {c}.", "a drawing of a {c}.", "a {c} shape.")
I2D_KEYS = ("count", "successes", "failed_to_download", "failed_to_resize")
# The session fixtures' data: 48 pictures + 3 404s + 1 corrupt file -> 4 shards of <= 16
# (img2dataset's one worker process is replaced after 5 shards, another ~7 s of imports).
CRAWL = dict(n=48, per_shard=16, image_size=64)
CB_TASK = dict(name="shapes", per_class=8, per_shard=10, seed=1)   # 24 images, 3 shards


# ------------------------------------------------------------------ scenes ----
@dataclasses.dataclass(frozen=True)
class Scene:
  """What one picture shows; `caption` and `draw` both follow from it."""
  width: int
  height: int
  background: str
  shapes: tuple[tuple[str, str], ...]   # ((colour, shape), ...) left to right

  @property
  def caption(self) -> str:
    things = " and ".join(f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in self.shapes)
    return f"{things} on a {self.background} background"

  def draw(self) -> Image.Image:
    im = Image.new("RGB", (self.width, self.height), BACKGROUNDS[self.background])
    d = ImageDraw.Draw(im)
    n = len(self.shapes)
    r = int(min(self.width / n, self.height) * 0.35)
    for k, (colour, shape) in enumerate(self.shapes):
      cx, cy = int(self.width * (2 * k + 1) / (2 * n)), self.height // 2
      box = (cx - r, cy - r, cx + r, cy + r)
      fill = COLOURS[colour]
      if shape == "circle":
        d.ellipse(box, fill=fill)
      elif shape == "square":
        d.rectangle(box, fill=fill)
      else:
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return im


def random_scene(rng: np.random.Generator, shape: str | None = None,
                 max_shapes: int = 2) -> Scene:
  """A scene of 1..max_shapes shapes of distinct colours; `shape` fixes a single one."""
  w, h = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
  bg = str(rng.choice(list(BACKGROUNDS)))
  n = 1 if shape else int(rng.integers(1, max_shapes + 1))
  colours = rng.choice(list(COLOURS), size=n, replace=False)
  shapes = [shape] if shape else list(rng.choice(SHAPES, size=n))
  return Scene(w, h, bg, tuple((str(c), str(s)) for c, s in zip(colours, shapes)))


def encode(im: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt, fmt.upper()),
          **({"quality": 90} if fmt in ("jpg", "jpeg") else
             {"lossless": True} if fmt == "webp" else {}))
  return buf.getvalue()


# ----------------------------------------------------------------- the site ----
@dataclasses.dataclass
class Site:
  """A folder of web images and what a crawl's URL list says about them."""
  root: str
  good: list[tuple[str, Scene]]     # (path under root, scene), in URL-list order
  missing: list[tuple[str, str]]    # (path never written -> 404, caption)
  corrupt: list[tuple[str, str]]    # (path of bytes that are no image, caption)

  def rows(self, base_url: str) -> list[dict]:
    """URL-list rows {"url", "caption"}: good images with the bad ones spread among them."""
    good = [{"url": f"{base_url}/{p}", "caption": s.caption} for p, s in self.good]
    bad = [{"url": f"{base_url}/{p}", "caption": c} for p, c in self.missing + self.corrupt]
    out = list(good)
    for k, row in enumerate(bad):   # evenly spaced, so several shards see a failure
      out.insert((k + 1) * len(good) // (len(bad) + 1) + k, row)
    return out


def make_site(root: str, n: int = 48, *, n_missing: int = 3, n_corrupt: int = 1,
              seed: int = 0) -> Site:
  """Writes n drawn images (JPEG and PNG alternately) and `n_corrupt` junk files."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  good = []
  for i in range(n):
    scene = random_scene(rng)
    path = f"img/{i:04d}.{'jpg' if i % 2 == 0 else 'png'}"
    with open(os.path.join(root, path), "wb") as f:
      f.write(encode(scene.draw(), path.rsplit(".", 1)[1]))
    good.append((path, scene))
  missing = [(f"img/gone-{k}.jpg", random_scene(rng).caption) for k in range(n_missing)]
  corrupt = []
  for k in range(n_corrupt):
    path = f"img/corrupt-{k}.jpg"
    with open(os.path.join(root, path), "wb") as f:   # a JPEG marker, then junk
      f.write(b"\xff\xd8\xff\xe0" + rng.bytes(2000))
    corrupt.append((path, random_scene(rng).caption))
  return Site(root, good, missing, corrupt)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serve_directory(root: str):
  """Serves `root` over HTTP on 127.0.0.1 from a thread; yields the base URL, stops on exit."""
  handler = functools.partial(_QuietHandler, directory=root)
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  old = {k: os.environ.get(k) for k in ("no_proxy", "NO_PROXY")}
  for k in old:     # a proxy set for the real web must not take localhost requests
    os.environ[k] = ",".join(x for x in (old[k], "127.0.0.1", "localhost") if x)
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.shutdown()
    server.server_close()
    thread.join()


def write_url_list(path: str, rows: list[dict]) -> str:
  """The URL list as parquet (`.parquet`) or CSV (else), columns url and caption."""
  import pyarrow as pa
  table = pa.table({"url": [r["url"] for r in rows], "caption": [r["caption"] for r in rows]})
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq
    pq.write_table(table, path)
  else:
    import pyarrow.csv as pcsv
    pcsv.write_csv(table, path)
  return path


# --------------------------------------------------------------- img2dataset ----
def run_img2dataset(url_list: str, output: str, *, per_shard: int = 16, image_size: int = 64,
                    threads: int = 4, **kw) -> None:
  """img2dataset.download into webdataset shards: one process (img2dataset spawns it and
  a logger process: ~13 s of CPU, mostly their imports), no wandb, no retries, captions
  from the `caption` column, images resized to image_size^2 with white borders (JPEG).

  What it writes at `output`, per shard id 00000, 00001...:
    <id>.tar         <key>.jpg, <key>.txt (the caption), <key>.json (url, caption, key,
                     status, width, height, original_width/height, exif, sha256), in
                     download order; key = shard id + position in the URL list's shard
    <id>.parquet     one row per URL, failures too (status, error_message)
    <id>_stats.json  count, successes, failed_to_download, failed_to_resize, status_dict
  Its _tmp/ (the list split in feather files) is removed, except on s3:// where
  img2dataset leaves it.
  """
  os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")   # else it asks PyPI on import
  os.environ.setdefault("WANDB_MODE", "disabled")
  import img2dataset
  args = dict(url_list=url_list, output_folder=output, output_format="webdataset",
              input_format="parquet" if url_list.endswith(".parquet") else "csv",
              url_col="url", caption_col="caption", image_size=image_size,
              resize_mode="border", encode_format="jpg", number_sample_per_shard=per_shard,
              processes_count=1, thread_count=threads, timeout=10, retries=0,
              enable_wandb=False)
  args.update(kw)
  with contextlib.redirect_stdout(io.StringIO()):   # per-shard progress lines
    img2dataset.download(**args)


def read_img2dataset_stats(output: str) -> dict:
  """What img2dataset reports: the sums of its `<shard>_stats.json` counts, "shards"
  (their ids), and "samples" (the `<shard>.parquet` rows: key, url, caption, status,
  error_message, width, height...), in key order."""
  import fsspec
  import pyarrow.parquet as pq
  fs, root = fsspec.core.url_to_fs(output)
  out = dict.fromkeys(I2D_KEYS, 0)
  shards = []
  for p in sorted(fs.glob(f"{root}/*_stats.json")):
    with fs.open(p) as f:
      s = json.load(f)
    for k in I2D_KEYS:
      out[k] += s[k]
    shards.append(int(p.rsplit("/", 1)[1].split("_")[0]))
  samples = []
  for p in sorted(fs.glob(f"{root}/*.parquet")):
    with fs.open(p, "rb") as f:
      samples += pq.read_table(f).to_pylist()
  out["shards"] = sorted(shards)
  out["samples"] = sorted(samples, key=lambda r: r["key"])
  return out


def make_img2dataset_shards(tmp_dir, n: int = 48, *, output: str | None = None,
                            per_shard: int = 16, image_size: int = 64, n_missing: int = 3,
                            n_corrupt: int = 1, seed: int = 0, url_list: str = "urls.parquet"
                            ) -> tuple[str, dict]:
  """A crawl of n good images (plus n_missing 404s and n_corrupt junk files) downloaded by
  img2dataset into webdataset shards at `output` (default <tmp_dir>/shards; an s3:// or
  gs:// URL works with tests/helpers/stores.py running).

  Returns (brace pattern of the tars, read_img2dataset_stats(output) plus "site": the
  Site, "url_list": the list's path, "captions": {url: caption} of the whole list).
  """
  tmp_dir = str(tmp_dir)
  output = output or os.path.join(tmp_dir, "shards")
  site = make_site(os.path.join(tmp_dir, "site"), n, n_missing=n_missing,
                   n_corrupt=n_corrupt, seed=seed)
  with serve_directory(site.root) as base:
    rows = site.rows(base)
    listed = write_url_list(os.path.join(tmp_dir, url_list), rows)
    run_img2dataset(listed, output, per_shard=per_shard, image_size=image_size)
  stats = read_img2dataset_stats(output)
  last = stats["shards"][-1]
  pattern = f"{output}/{{00000..{last:05d}}}.tar" if last else f"{output}/00000.tar"
  stats.update(site=site, url_list=listed, captions={r["url"]: r["caption"] for r in rows})
  return pattern, stats


def border_resize(im: Image.Image, size: int) -> np.ndarray:
  """img2dataset's resize_mode="border" (longest side to `size` by area averaging, then
  white padding to size x size, centred), in PIL: the reference the tests compare with."""
  w, h = im.size
  s = size / max(w, h)
  nw, nh = max(1, round(w * s)), max(1, round(h * s))
  out = Image.new("RGB", (size, size), (255, 255, 255))
  out.paste(im.resize((nw, nh), Image.Resampling.BOX), ((size - nw) // 2, (size - nh) // 2))
  return np.asarray(out)


# ------------------------------------------------------------ CLIP_benchmark ----
class EncodedImages:
  """(encoded image, label) pairs with `.classes` and `.templates`: the map-style dataset
  clip_benchmark.webdataset_builder.convert_dataset documents (its DataLoader takes any)."""

  def __init__(self, items, classes, templates):
    self.items, self.classes, self.templates = items, list(classes), list(templates)

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return self.items[i]


def cb_dataset(classes=SHAPES, per_class: int = 8, *, image_format: str = "png",
               seed: int = 1, templates=CB_TEMPLATES) -> EncodedImages:
  """Class k draws shape classes[k] in a random colour on a random background; labels
  interleaved (0, 1, 2, 0, ...)."""
  rng = np.random.default_rng(seed)
  items = []
  for i in range(per_class * len(classes)):
    label = i % len(classes)
    items.append((encode(random_scene(rng, shape=classes[label]).draw(), image_format), label))
  return EncodedImages(items, classes, templates)


@functools.cache
def cb_writer():
  """clip_benchmark.webdataset_builder, the module behind `clip_benchmark_export_wds`.

  It imports clip_benchmark.datasets.builder (torchvision's dataset classes) for its
  CLI's `run` alone. clip-benchmark is installed --no-deps, and PyPI's torchvision is a
  CUDA build that fails against CPU torch ("operator torchvision::nms does not exist");
  without torchvision that one import gets a stand-in whose build_dataset raises, and
  convert_dataset, which never calls it, is the package's own code.
  """
  import importlib
  import importlib.util
  import sys
  import types
  name = "clip_benchmark.webdataset_builder"
  if importlib.util.find_spec("torchvision") is not None:
    return importlib.import_module(name)

  def build_dataset(*args, **kwargs):
    raise ImportError("clip_benchmark.datasets.builder needs torchvision")
  stand_in = types.ModuleType("clip_benchmark.datasets.builder")
  stand_in.build_dataset = build_dataset
  sys.modules[stand_in.__name__] = stand_in   # only for this import: the real module,
  try:                                         # should torchvision appear, stays importable
    return importlib.import_module(name)
  finally:
    del sys.modules[stand_in.__name__]


def make_cb_task(root, name: str = "shapes", *, classes=SHAPES, per_class: int = 8,
                 per_shard: int = 10, image_format: str = "png", split: str = "test",
                 seed: int = 1) -> str:
  """<root>/<name>: a zero-shot task folder written by clip-benchmark's export code
  (classnames.txt, zeroshot_classification_templates.txt, <split>/nshards.txt,
  <split>/{0..}.tar with s%07d.<image_format> and .cls). Returns the folder."""
  folder = os.path.join(str(root), name)
  ds = cb_dataset(classes, per_class, image_format=image_format, seed=seed)
  # convert_dataset's DataLoader forks 8 workers; they only index a list, so JAX's
  # "fork with threads" warning (raised in this process) does not apply.
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    cb_writer().convert_dataset(ds, split, folder, image_format=image_format,
                                       max_count=per_shard, verbose=False)
  return folder


# ---------------------------------------------------------------- fixtures ----
@pytest.fixture(scope="session")
def own_crawl(tmp_path_factory):
  """(pattern, stats) of make_img2dataset_shards(**CRAWL), made once per session."""
  return make_img2dataset_shards(tmp_path_factory.mktemp("own_crawl"), **CRAWL)


@pytest.fixture(scope="session")
def own_cb_root(tmp_path_factory):
  """A directory holding make_cb_task(**CB_TASK)'s folder (a suite's evaluate.root)."""
  root = str(tmp_path_factory.mktemp("own_cb"))
  make_cb_task(root, **CB_TASK)
  return root
