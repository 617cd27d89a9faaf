"""The icon, emoji and stamp corpus of `prepare`: training pairs and held-out tasks.

Records come from the npm and Debian packages of docs/corpus.md (sources_icons,
sources_openmoji, sources_fluent3d, sources_tuxpaint), are rendered through
the shared render cache, and are split by corpus_split so nothing leaks:
whole held-out families (OpenMoji, Tux Paint), ~10% of concept keys (joined
by their aliases) held out in every family, held-out images near any
training image dropped (the other sources' training images count: Tux Paint
copies ~50 Open Clip Art SVGs), and retrieval captions that training has
dropped. The other sources' names count too: a concept that clip
art, Fashion-MNIST or MNIST trains on is never held out, and one that clip
art holds out is held out here. The held-out side becomes the tasks in TASKS.

A run may take a seeded subset (`max_icons` training-family records,
`max_heldout_icons` held-out-family records) before anything is rendered:
the split, dedup and tasks are then those of the subset, and a smaller
corpus costs only its own renders.
"""

from __future__ import annotations

import os

import numpy as np

from mode_jax import workdir as wd
from mode_jax.data.corpus import audit, split as corpus_split, npm_packages, render_cache
from mode_jax.data.corpus.sources import fluent3d as sources_fluent3d
from mode_jax.data.corpus.sources import icons as sources_icons
from mode_jax.data.corpus.sources import openmoji as sources_openmoji
from mode_jax.data.corpus.sources import tuxpaint as sources_tuxpaint
from mode_jax.data.corpus.sources.common import MissingSource, choose_subset, item_key

PACKAGES = ("iconify", "openmoji", "fluent3d", "tuxpaint")
# Every npm tarball a package needs (emoji names come from emojibase for all of them).
NPM_NEEDS = {"iconify": (sources_icons.ICONIFY, sources_icons.EMOJIBASE),
             "openmoji": (sources_openmoji.PACKAGE, sources_icons.EMOJIBASE),
             "fluent3d": (sources_fluent3d.PACKAGE, sources_icons.EMOJIBASE),
             "tuxpaint": (sources_icons.EMOJIBASE,)}


def _tasks(seed: int, min_images: int, known=None) -> dict:
  """task -> builder(records, split): the held-out evaluation tasks, then the validation
  ones (corpus_split; their meta says "split": "validation"); `known(text)`: a training
  caption, never a retrieval caption."""
  oz, tz = corpus_split.openmoji_zeroshot, corpus_split.tuxpaint_zeroshot
  retrieval = corpus_split.concept_retrieval

  def validation(samples_meta):
    samples, meta = samples_meta
    return samples, {**meta, "split": wd.VALIDATION}

  return {
      "openmoji_groups": lambda r, s: oz(r, s, "group", "color", min_images),
      "openmoji_line_groups": lambda r, s: oz(r, s, "group", "black", min_images),
      "openmoji_subgroups": lambda r, s: oz(r, s, "subgroup", "color", min_images),
      "tuxpaint_categories": lambda r, s: tz(r, s, 1, min_images),
      "icon_retrieval": lambda r, s: retrieval(r, s, seed, known),
      "val_emoji_groups": lambda r, s: validation(
          corpus_split.validation_groups(r, s, min_images)),
      "val_icon_categories": lambda r, s: validation(
          corpus_split.validation_categories(r, s, min_images)),
      "val_icon_retrieval": lambda r, s: validation(
          retrieval(r, s, seed, known, part="validation")),
  }


TASKS = tuple(_tasks(0, 1))


def packages(cfg) -> list[str]:
  return choose_subset("prepare.icon_packages", cfg.icon_packages, PACKAGES)


def icon_sets(cfg) -> list[str]:
  """The iconify sets read ("" = sources_icons.ICONIFY_SETS); the Twemoji deny list first."""
  sets = ([s.strip() for s in cfg.icon_sets.split(",") if s.strip()] if cfg.icon_sets
          else list(sources_icons.ICONIFY_SETS))
  for s in sets:
    sources_icons.check_allowed(s)
  return sets


def check(cfg, fetch: bool = True) -> dict:
  """Fails before any work when a package is missing; fetches pinned npm tarballs once
  (`fetch`). Returns the provenance of every package used, for prepare.json."""
  names = packages(cfg)
  icon_sets(cfg)
  info = {}
  for p in names:
    for pkg in NPM_NEEDS[p]:
      npm_packages.tarball(pkg, cache_dir=cfg.npm_cache, fetch=fetch)   # names `npm pack`
      info[f"npm:{pkg}"] = {"package": f"{pkg} (npm)", "version": npm_packages.PINNED[pkg]}
  if "tuxpaint" in names:
    if not os.path.isdir(cfg.tuxpaint_dir):
      raise MissingSource("Tux Paint stamps", cfg.tuxpaint_dir, sources_tuxpaint.INSTALL)
    info["tuxpaint"] = {"path": cfg.tuxpaint_dir,
                        "package": f"{sources_tuxpaint.DEBIAN_PACKAGE} (Debian)",
                        "version": sources_tuxpaint.debian_version()}
  return info


def emoji_names(cfg) -> sources_icons.EmojiNames:
  return sources_icons.EmojiNames(sources_icons.emojibase_dir(cfg.npm_cache))


def records(cfg, stats: dict, emoji=None) -> list[dict]:
  """All records of the configured packages (captions included), before any pick."""
  names_used = packages(cfg)
  k, seed, cache = cfg.texts_per_image, cfg.seed, cfg.npm_cache
  emoji = emoji or emoji_names(cfg)
  recs = []
  if "iconify" in names_used:
    recs += sources_icons.records(icon_sets(cfg), cache, texts_per_image=k, seed=seed)
  if "openmoji" in names_used:
    recs += sources_openmoji.records(cache_dir=cache, texts_per_image=k, seed=seed,
                                     emoji_names=emoji)
  if "fluent3d" in names_used:
    recs += sources_fluent3d.records(cache, texts_per_image=k, seed=seed, stats=stats)
  if "tuxpaint" in names_used:
    recs += sources_tuxpaint.records(cfg.tuxpaint_dir, emoji_names=emoji, texts_per_image=k,
                                     seed=seed)
  return recs


def pick(recs: list[dict], max_train: int, max_heldout: int, seed: int,
         heldout_families=corpus_split.HELDOUT_FAMILIES) -> list[dict]:
  """A seeded subset: at most max_train records of the training families and
  max_heldout of the held-out families (0 = all), in their original order."""
  fams = set(heldout_families)
  keep = np.ones(len(recs), bool)
  for side, cap in ((False, max_train), (True, max_heldout)):
    idx = np.flatnonzero([(r["family"] in fams) == side for r in recs])
    if cap and cap < len(idx):
      keep[idx] = False
      keep[np.random.default_rng([seed, 7, int(side)]).choice(idx, cap, replace=False)] = True
  return [r for r, k in zip(recs, keep) if k]


def build(cfg, training: audit.Training, stats: dict, train_names=(), heldout_names=()):
  """(train samples, {task: (samples, meta)}, records used) for the shard writer.

  `training` holds the other sources' training samples (clip art, Fashion-
  MNIST, MNIST): their images count as training images for the near-duplicate
  drop (Tux Paint copies ~50 Open Clip Art SVGs) and their captions are never
  retrieval captions here. The icons' own training samples are added to it.
  `train_names` / `heldout_names` (clip-art titles, class names) are names
  they train on / hold out, joined to concepts as icon names are.
  """
  emoji = emoji_names(cfg)
  recs = records(cfg, stats, emoji)
  stats["icons_records"] = len(recs)
  recs = pick(recs, cfg.max_icons, cfg.max_heldout_icons, cfg.seed)
  render_stats = {}
  images = render_cache.render_records(recs, cfg.icon_size, cfg.cache_dir, cfg.num_workers,
                                       render_stats)
  stats["icons_render"] = {s: {k: v for k, v in d.items() if k != "cache"}
                           for s, d in render_stats.items()}
  concept = lambda names: {corpus_split.name_concept(n, emoji) for n in names}
  sp = corpus_split.split(recs, images, seed=cfg.seed, extra_train_hashes=training.hashes,
                          train_concepts=concept(train_names),
                          heldout_concepts=concept(heldout_names))
  stats["icons_split"] = sp["counts"]
  by_key = {r["key"]: r for r in recs}

  def sample(key, **json_fields):
    return {"__key__": item_key("icons", key), "png": images[key], "json": json_fields}

  train = [sample(k, texts=by_key[k]["captions"], source=by_key[k]["family"],
                  category=by_key[k].get("category", ""))
           for k in sp["train"]]
  training.add(train, sp["train_hashes"])
  evals, used, skipped = {}, set(sp["train"]), {}
  for task, builder in _tasks(cfg.seed, cfg.min_category_images, training.knows).items():
    items, meta = builder(recs, sp)
    classes = len(meta.get("classnames", [])) if meta["kind"] == "zeroshot" else len(items)
    if classes < 2:   # a subset too small for this task (tests' tiny corpora)
      skipped[task] = f"{len(items)} samples, {classes} classes"
      continue
    evals[task] = ([sample(s["key"], texts=s.get("texts") or by_key[s["key"]]["captions"],
                           **({"label": s["label"]} if "label" in s else {}))
                    for s in items], meta)
    used.update(s["key"] for s in items)
  stats["icons_tasks_skipped"] = skipped
  return train, evals, [by_key[k] for k in sorted(used)]
