"""A train / held-out split of the icon-emoji-stamp corpus that cannot leak.

Design families repeat across packages and one concept is drawn by many
families (docs/corpus.md), so images are never split one by one:
  * whole design families are held out (default: OpenMoji colour and line
    art, and Tux Paint): zero-shot on a design never seen in training;
  * about `heldout_concept_frac` of concept keys are held out in every family,
    drawn by a hash of the key, so a concept is never on both sides; concepts
    joined by a record's other names ("alias_concepts") go as one group;
  * a validation band of another `val_concept_frac` of concept keys (the
    next slice of the same hash) is held back from the training families:
    their images are the validation split, choices of a recipe are made on it
    (issue 23), and those concepts are in no held-out task either;
  * a held-out or validation image within PHASH_MAX_DISTANCE bits (64-bit DCT
    pHash) of any training image is dropped: the same picture under another name.
The evaluation tasks (zero-shot over OpenMoji groups and subgroups and Tux
Paint categories; retrieval over held-out concepts) are built from what is
left; a retrieval caption that training also has (audit.caption_key) is
dropped. A record is a dict with RECORD_FIELDS, plus "group", "subgroup",
"category", "style", "alias_concepts" where the source has them.

icon_corpus.build wires it into `prepare`, with every other source's training
images as `extra_train_hashes` and their names as train / held-out concepts;
audit.py then measures what is left.
"""

from __future__ import annotations

import collections
import hashlib
import re

import numpy as np

from mode_jax.data.corpus import captions as captions_alt
from mode_jax.data.corpus import tables

RECORD_FIELDS = ("key", "family", "concept", "captions", "render", "licence", "attribution",
                 "source", "version")
HELDOUT_FAMILIES = ("openmoji", "tuxpaint")   # issue 13: OpenMoji colour + line art, Tux Paint
HELDOUT_CONCEPT_FRAC = 0.1                    # issue 13: ~10% of concept keys
VAL_CONCEPT_FRAC = 0.05                       # issue 23: ~5% more, the validation split
# Bits within which a held-out image counts as a training image's copy. Measured
# on 2,000 of the corpus's iconify renders (64 px, normalised pHash below): a copy
# shifted by 1 px and brightened by 20 levels is within 4 bits for 87% of icons
# (median 0), one re-padded by 4 px for 78%; images of *other* concepts are within
# 4 bits for 14%, mostly the same pictogram with a different small glyph (folder
# plus / folder minus), which a 64 px model can hardly tell apart either; within 8
# bits for 35%, too many to drop. Hence 4.
PHASH_MAX_DISTANCE = 4
INK_FRAC = 0.1   # of the stretched range: fainter pixels (anti-aliasing) do not set the crop
PHASH_SIZE, PHASH_LOW = 32, 8
PHASH_CHUNK = 2048    # images per step: 2048 x 64 x 64 x 3 float32 = 100 MB
HAMMING_CHUNK = 256   # query rows per step: 256 x 100k uint64 XORs = 200 MB

# --- concept keys ---------------------------------------------------------------

SKIN_TONE_CODES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
VARIATION_SELECTORS = frozenset({"FE0E", "FE0F"})
GENDER_SIGNS = ("200D-2640", "200D-2642")   # 'man/woman X' ZWJ forms join 'person X'
# Style words that name how an icon is drawn, not what it shows (mdi -outline,
# -variant; phosphor -bold/-duotone/-fill/-light/-thin; solar -linear/-broken;
# material -rounded/-sharp; streamline -remix/-solid; sizes such as -24px).
STYLE_SUFFIXES = ("outline", "outlined", "filled", "fill", "solid", "sharp", "rounded", "round",
                  "thin", "bold", "light", "duotone", "twotone", "two-tone", "regular", "linear",
                  "broken", "line", "remix", "alt", "variant", "color", "colored", "mono",
                  "flat", "small", "big", "o")


def emoji_concept(hexcode: str) -> str:
  """'1F44B-1F3FB' -> 'emoji:1F44B': skin tones, variation selectors and gender signs dropped."""
  h = "-".join(c for c in hexcode.upper().split("-")
               if c not in SKIN_TONE_CODES and c not in VARIATION_SELECTORS)
  for g in GENDER_SIGNS:
    h = h.replace("-" + g, "")
  return "emoji:" + h


def split_style(name: str, suffixes=(), prefixes=()) -> tuple[str, list[str]]:
  """An icon name without its style, and the style words: 'home-bold-duotone' -> 'home', [...].

  `suffixes`/`prefixes` are a set's own theme affixes (material 'outline-rounded',
  ic 'baseline-'); then STYLE_SUFFIXES and trailing numbers ('baby-2', '-24px')
  go, while anything is left. Numbers are dropped without a word.
  """
  stem, style = name.lower(), []
  for p in sorted((p for p in prefixes if p), key=len, reverse=True):
    if stem.startswith(p + "-") and len(stem) > len(p) + 1:
      stem, style = stem[len(p) + 1:], [p]
      break
  tail = []
  for s in sorted((s for s in suffixes if s), key=len, reverse=True):
    if stem.endswith("-" + s) and len(stem) > len(s) + 1:
      stem, tail = stem[:-len(s) - 1], [s]
      break
  while True:
    parts = stem.rsplit("-", 1)
    if len(parts) == 2 and parts[0] and parts[1] in STYLE_SUFFIXES:
      stem, tail = parts[0], [parts[1]] + tail
    elif len(parts) == 2 and parts[0] and re.fullmatch(r"\d+(px)?", parts[1]):
      stem = parts[0]
    else:
      return stem, style + tail


def icon_stem(name: str, suffixes=(), prefixes=()) -> str:
  """'account-circle-outline' -> 'account-circle' (split_style without the words)."""
  return split_style(name, suffixes, prefixes)[0]


def name_concept(name: str, emoji_names=None) -> str:
  """A name's concept: the emoji's when an emoji has that CLDR name, else 'name:<words>'.

  So Tux Paint's 'giraffe', mdi's 'cat' and every emoji family's giraffe or
  cat are one concept, held out or trained together. Other names keep their
  words sorted: Font Awesome 6 renamed 'shopping-cart' to 'cart-shopping'
  (the same picture, found by the pHash dedup), and sets copy either order.
  """
  hexcode = emoji_names.hexcode(name) if emoji_names is not None else None
  if hexcode:
    return emoji_concept(hexcode)
  return "name:" + "-".join(sorted(re.findall(r"[a-z0-9]+", name.lower())))


def icon_concept(name: str, emoji_names=None, suffixes=(), prefixes=()) -> str:
  return name_concept(icon_stem(name, suffixes, prefixes), emoji_names)


def concept_groups(records: list[dict]) -> dict:
  """concept -> its group's smallest concept: concepts joined through "alias_concepts".

  A record's other names (iconify aliases: mdi 'timer' is also 'stopwatch')
  are written into its captions ('stopwatch icon'), so the concepts they
  name are one with the record's: held out or trained as a whole, or a
  held-out 'stopwatch' would be read in training. Union-find over concept
  keys; a concept no record joins to another is its own group.
  """
  parent = {}

  def root(c):
    parent.setdefault(c, c)
    while parent[c] != c:
      parent[c] = parent[parent[c]]
      c = parent[c]
    return c

  for r in records:
    a = root(r["concept"])
    for other in r.get("alias_concepts", ()):
      b = root(other)
      if a != b:
        parent[max(a, b)] = min(a, b)   # the root is always the group's smallest key
        a = min(a, b)
  return {c: root(c) for c in parent}


def concept_hash(concept: str, seed: int) -> float:
  """A uniform draw in [0, 1) seeded by the key alone: adding a family never moves another
  concept across."""
  digest = hashlib.sha1(f"{seed}:{concept}".encode()).digest()
  return int.from_bytes(digest[:8], "little") / 2.0 ** 64


def concept_heldout(concept: str, frac: float, seed: int) -> bool:
  return concept_hash(concept, seed) < frac


def concept_validation(concept: str, heldout_frac: float, val_frac: float, seed: int) -> bool:
  """The band just above the held-out one: never both, and the held-out concepts stay
  those of a split without validation."""
  return heldout_frac <= concept_hash(concept, seed) < heldout_frac + val_frac


# --- perceptual hash ------------------------------------------------------------

def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of area (box) resampling: row i averages its share of inputs."""
  edges = np.linspace(0, n_in, n_out + 1)
  lo, hi = edges[:-1, None], edges[1:, None]
  x = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, x + 1) - np.maximum(lo, x), 0, None)
  return overlap / overlap.sum(1, keepdims=True)


def dct_matrix(n: int) -> np.ndarray:
  """DCT-II without normalisation (scipy.fftpack.dct norm=None, halved): [k, n]."""
  k, x = np.arange(n)[:, None], np.arange(n)[None, :]
  return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


def _ink_boxes(grey: np.ndarray):
  """Per image (top, bottom, left, right) of the pixels darker than INK_FRAC of its range."""
  ink = grey < 255 * (1 - INK_FRAC)
  n, h, w = grey.shape
  rows, cols = ink.any(2), ink.any(1)
  some = rows.any(1)
  top = np.where(some, rows.argmax(1), 0)
  bottom = np.where(some, h - rows[:, ::-1].argmax(1), h)
  left = np.where(some, cols.argmax(1), 0)
  right = np.where(some, w - cols[:, ::-1].argmax(1), w)
  return top, bottom, left, right


def phash(images: np.ndarray) -> np.ndarray:
  """uint64 [N] perceptual hashes of uint8 [N, H, W, 3] (or [N, H, W]) images.

  pHash (Zauner 2010, as imagehash.phash): grey by ITU-R 601 luma, 32x32,
  2D DCT-II, the 8x8 lowest frequencies (DC included) against their median;
  bit 63 is coefficient (0, 0), row-major. Two steps first, because icons
  are not photos: contrast is stretched to 0..255, and the picture is cropped
  to its ink and centred in a square. Plain pHash moves a median 10 bits
  (90th percentile 26) when a 64 px icon shifts by one pixel; the same icon
  re-exported with other padding, offset or brightness then hashes alike.
  Area resampling, so a 64 px icon's thin strokes still count.
  """
  images = np.asarray(images)
  weights = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)
  d = dct_matrix(PHASH_SIZE)[:PHASH_LOW].astype(np.float32)
  luma = np.array([0.299, 0.587, 0.114], np.float32)
  out = np.zeros(len(images), np.uint64)
  for c in range(0, len(images), PHASH_CHUNK):
    g = images[c:c + PHASH_CHUNK].astype(np.float32)
    g = g @ luma if g.ndim == 4 else g
    lo, hi = g.min((1, 2), keepdims=True), g.max((1, 2), keepdims=True)
    g = (g - lo) * (255 / np.maximum(hi - lo, 1))
    top, bottom, left, right = _ink_boxes(g)
    side = np.maximum(bottom - top, right - left)
    for s in np.unique(side):   # one batched product per crop size
      idx = np.flatnonzero(side == s)
      square = np.full((len(idx), s, s), 255, np.float32)
      for j, i in enumerate(idx):
        h, w = bottom[i] - top[i], right[i] - left[i]
        y, x = (s - h) // 2, (s - w) // 2
        square[j, y:y + h, x:x + w] = g[i, top[i]:bottom[i], left[i]:right[i]]
      m = d @ _area_matrix(int(s), PHASH_SIZE).astype(np.float32)   # resample, then DCT
      low = (m @ square @ m.T).reshape(len(idx), -1)
      bits = low > np.median(low, axis=1, keepdims=True)
      out[c + idx] = (bits.astype(np.uint64) * weights).sum(1, dtype=np.uint64)
  return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Bitwise distances between uint64 hashes, broadcast."""
  return np.bitwise_count(np.bitwise_xor(a, b))


def phash_images(images) -> np.ndarray:
  """phash of a list of images of any sizes (sources differ: 28 px digits, 64 px icons)."""
  out = np.zeros(len(images), np.uint64)
  by_shape = collections.defaultdict(list)
  for i, im in enumerate(images):
    by_shape[np.shape(im)].append(i)
  for idx in by_shape.values():
    out[idx] = phash(np.stack([images[i] for i in idx]))
  return out


def nearest(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(distance, index): each query hash's nearest reference hash, in bits and by position.

  An empty reference gives distance 65 (farther than any 64-bit pair) and index -1.
  """
  query = np.asarray(query, np.uint64)
  ref, first = np.unique(np.asarray(reference, np.uint64), return_index=True)
  dist, index = np.full(len(query), 65, np.int64), np.full(len(query), -1, np.int64)
  if len(ref) == 0:
    return dist, index
  for i in range(0, len(query), HAMMING_CHUNK):
    d = hamming(query[i:i + HAMMING_CHUNK, None], ref[None, :])
    j = d.argmin(1)
    dist[i:i + len(j)], index[i:i + len(j)] = d[np.arange(len(j)), j], first[j]
  return dist, index


def near_duplicates(query: np.ndarray, reference: np.ndarray, max_distance: int) -> np.ndarray:
  """bool [len(query)]: some reference hash is within max_distance bits."""
  return nearest(query, reference)[0] <= max_distance


# --- the split ------------------------------------------------------------------

def split(records: list[dict], images: dict, heldout_families=HELDOUT_FAMILIES,
          concept_frac: float = HELDOUT_CONCEPT_FRAC, seed: int = 0,
          max_distance: int = PHASH_MAX_DISTANCE, extra_train_hashes=None,
          train_concepts=(), heldout_concepts=(), val_frac: float = VAL_CONCEPT_FRAC) -> dict:
  """{"train", "heldout_family", "heldout_concept", "validation", "near_duplicates",
  "counts", "train_hashes" (phash of the "train" images, in order)}.

  "validation": keys of the training families whose concept is in the
  validation band (concept_validation); held-out family images of those
  concepts are dropped, so no held-out task shows a validation concept.

  Records without an image (render failed or blank) are left out. Keys of a
  held-out family whose concept is also held out are in both held-out lists.
  Other sources of the same corpus: `extra_train_hashes` (phash of their
  training images: clip art shares about 50 SVGs with Tux Paint) count as
  training images for the dedup; `train_concepts` (concepts they train on,
  e.g. Fashion-MNIST's 'dress') are never held out, since they are seen in
  training anyway; `heldout_concepts` (concepts they hold out, e.g. clip
  art's held-out titles) are held out here too, so no source trains on them.
  Both act on whole concept groups (concept_groups); a group with concepts of
  both kinds trains ("conflicting_groups" counts them; the audit then finds any
  caption that crossed).
  """
  recs = [r for r in records if r["key"] in images]
  families = set(heldout_families)
  unknown = families - {r["family"] for r in records}
  concepts = sorted({r["concept"] for r in recs})
  group = concept_groups(recs)
  of = lambda c: group.get(c, c)
  trained = {of(c) for c in train_concepts}
  also_held = {of(c) for c in heldout_concepts} - trained
  hashed = {c for c in concepts if concept_heldout(of(c), concept_frac, seed)}
  held = {c for c in concepts if of(c) not in trained and (of(c) in also_held or c in hashed)}
  val = {c for c in concepts if c not in held and of(c) not in trained
         and concept_validation(of(c), concept_frac, val_frac, seed)}
  train = [r["key"] for r in recs if r["family"] not in families
           and r["concept"] not in held and r["concept"] not in val]
  fam = [r["key"] for r in recs if r["family"] in families and r["concept"] not in val]
  con = [r["key"] for r in recs if r["concept"] in held]
  vkeys = [r["key"] for r in recs if r["family"] not in families and r["concept"] in val]
  evals = sorted(set(fam) | set(con) | set(vkeys))
  hashes = phash(np.stack([images[k] for k in train + evals])) if recs else np.zeros(0, np.uint64)
  reference = hashes[:len(train)]
  if extra_train_hashes is not None:
    reference = np.concatenate([reference, np.asarray(extra_train_hashes, np.uint64)])
  dup = near_duplicates(hashes[len(train):], reference, max_distance)
  dropped = {k for k, d in zip(evals, dup) if d}
  fam = [k for k in fam if k not in dropped]
  con = [k for k in con if k not in dropped]
  vkeys = [k for k in vkeys if k not in dropped]
  by_family = collections.defaultdict(collections.Counter)
  family_of = {r["key"]: r["family"] for r in recs}
  for name, keys in (("train", train), ("heldout_family", fam), ("heldout_concept", con),
                     ("validation", vkeys), ("near_duplicates", sorted(dropped))):
    for k in keys:
      by_family[family_of[k]][name] += 1
  counts = {
      "records": len(records), "rendered": len(recs), "train": len(train),
      "heldout_family": len(fam), "heldout_concept": len(con),
      "validation": len(vkeys), "validation_concepts": len(val),
      "near_duplicates": len(dropped), "concepts": len(concepts), "heldout_concepts": len(held),
      "concept_groups": len({of(c) for c in concepts}),
      "largest_concept_group": max(collections.Counter(of(c) for c in concepts).values(),
                                   default=0),
      "kept_for_other_sources": len({c for c in hashed if of(c) in trained}),
      "held_for_other_sources": len({c for c in concepts if of(c) in also_held}),
      "conflicting_groups": len({of(c) for c in heldout_concepts} & trained),
      "heldout_families": sorted(families), "unknown_heldout_families": sorted(unknown),
      "max_distance": max_distance, "by_family": {f: dict(c) for f, c in sorted(by_family.items())},
  }
  return {"train": train, "heldout_family": fam, "heldout_concept": con, "validation": vkeys,
          "near_duplicates": sorted(dropped), "counts": counts,
          "train_hashes": hashes[:len(train)]}


# --- evaluation tasks -----------------------------------------------------------

# Zero-shot prompts: none is a caption form of captions_alt (tests check), so the
# prompts are never seen in training.
EVAL_TEMPLATES = ["a picture of {}.", "an image showing {}.", "a small drawing of {}."]
# OpenMoji groups (CLDR emoji groups, Unicode TR51) -> readable names, first canonical.
OPENMOJI_GROUPS = tables.load("classnames")["openmoji_groups"]
# Not semantic classes: skin-tone swatches, and OpenMoji's own extras (brands, UI marks).
OPENMOJI_EXCLUDE = ("component", "extras-openmoji", "extras-unicode")
TUXPAINT_NAMES = tables.load("classnames")["tuxpaint_categories"]   # stamp folders
MIN_CLASS_IMAGES = 10   # rarer classes are dropped: a 3-image class makes accuracy noise


def _zeroshot(records: list[dict], keys, class_of, names: dict, min_images: int):
  """(samples, meta) of the records whose key is in `keys`, labelled by class_of(record)
  (None: not in the task); classes with fewer than min_images images are dropped."""
  keys = set(keys)
  samples_by_class = collections.defaultdict(list)
  for r in records:
    c = class_of(r) if r["key"] in keys else None
    if c:
      samples_by_class[c].append(r["key"])
  kept = sorted(c for c, keys in samples_by_class.items() if len(keys) >= min_images)
  label = {c: i for i, c in enumerate(kept)}
  samples = [{"key": k, "label": label[c]} for c in kept for k in sorted(samples_by_class[c])]
  meta = {"kind": "zeroshot", "classes": kept,
          "classnames": [names.get(c, [captions_alt.readable(c)]) for c in kept],
          "templates": EVAL_TEMPLATES,
          "dropped_classes": {c: len(v) for c, v in sorted(samples_by_class.items())
                              if c not in label}}
  return samples, meta


def openmoji_zeroshot(records: list[dict], the_split: dict, level: str = "group",
                      style: str = "color", min_images: int = MIN_CLASS_IMAGES,
                      exclude=OPENMOJI_EXCLUDE):
  """(samples [{"key", "label"}], meta) over OpenMoji groups or subgroups of one style."""
  if level not in ("group", "subgroup"):
    raise ValueError(f"level {level!r}: 'group' or 'subgroup'")
  names = OPENMOJI_GROUPS if level == "group" else {}
  return _zeroshot(records, the_split["heldout_family"],
                   lambda r: r.get(level) if (r["family"] == "openmoji"
                                              and r.get("style") == style
                                              and r.get("group") not in exclude) else None,
                   names, min_images)


def validation_groups(records: list[dict], the_split: dict, min_images: int = MIN_CLASS_IMAGES,
                      exclude=OPENMOJI_EXCLUDE):
  """(samples, meta) over CLDR emoji groups of the validation images (the emoji of the
  training families, Fluent and the iconify emoji sets), built as openmoji_groups is."""
  return _zeroshot(records, the_split["validation"],
                   lambda r: r.get("group") if r.get("group") not in exclude else None,
                   OPENMOJI_GROUPS, min_images)


def validation_categories(records: list[dict], the_split: dict,
                          min_images: int = MIN_CLASS_IMAGES):
  """(samples, meta) over the icon sets' own categories (iconify's 'Animals', 'Weather', ...,
  Fluent's emoji groups) of the validation images: the training families' analogue of
  tuxpaint_categories, named by the readable category."""
  return _zeroshot(records, the_split["validation"], lambda r: r.get("category"), {},
                   min_images)


def tuxpaint_zeroshot(records: list[dict], the_split: dict, depth: int = 1,
                      min_images: int = MIN_CLASS_IMAGES):
  """(samples, meta) over Tux Paint's category tree cut at `depth` ('animals', 'animals/birds')."""
  names = TUXPAINT_NAMES if depth == 1 else {}
  return _zeroshot(records, the_split["heldout_family"],
                   lambda r: "/".join(r["category"].split("/")[:depth])
                   if r["family"] == "tuxpaint" and r.get("category") else None,
                   names, min_images)


def concept_retrieval(records: list[dict], the_split: dict, seed: int = 0, known=None,
                      part: str = "heldout_concept"):
  """(samples [{"key", "texts"}], meta): one image per concept of `part` (held-out
  concepts, or "validation"), seeded.

  One per concept: several images with the same name would make a caption
  match several images and the retrieval ranks ambiguous. `known(text)`: the
  caption is a training caption (audit.Training.knows); such captions are
  dropped, and a record left without one is not drawn.
  """
  keep = set(the_split[part])
  by_concept = collections.defaultdict(list)
  for r in records:
    if r["key"] in keep:
      texts = [t for t in r["captions"] if known is None or not known(t)]
      if texts:
        by_concept[r["concept"]].append((r["key"], texts))
  samples = []
  for c in sorted(by_concept):
    key, texts = captions_alt.key_rng(seed, c).choice(sorted(by_concept[c]))
    samples.append({"key": key, "texts": texts})
  return samples, {"kind": "retrieval", "classnames": [], "templates": []}
