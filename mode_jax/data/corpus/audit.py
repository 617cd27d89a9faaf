"""Leak audit of the demo corpus: how close every held-out task is to the training data.

For each task under shards/eval/ (zero-shot and retrieval, every source) the
audit measures, against all training shards (every source together):
  * images: the nearest training image by the split's 64-bit DCT pHash
    (corpus_split.phash; within corpus_split.PHASH_MAX_DISTANCE bits = the
    same picture re-exported), and pixel-identical training images;
  * texts: how many of the task's texts are a training caption exactly, or
    nearly (caption_key). Retrieval tasks check their samples' captions, the
    queries of the evaluation. Zero-shot tasks check their prompts (every
    template with every class name), the only texts zero-shot scoring reads;
    their samples' own captions are never used, and a held-out *design* of a
    trained concept (OpenMoji's cat) is meant to share its name with training.

What counts as a leak (`leaks`) depends on where a task's images come from.
Drawn sources (clip art, icons, OpenMoji, Tux Paint) count images within the
pHash threshold: one picture is published under several names and sets.
Fashion-MNIST's test split and MNIST's held-out rows (PHOTO_TASKS) are other
photographs and scans than the training ones, centred 28 px grey objects of
ten classes, so pHash neighbours there are look-alikes of the same class, not
copies: 21% of the first 2,000 Fashion-MNIST test images are within 4 bits
of one of the first 20k training images (30% of all 60k: growing with the
training set, as look-alikes do), 30% of MNIST's 1,000 held-out rows of one
of its 4,000 training rows; dropping them would bias the test sets towards
odd images. There only pixel-identical images count (none in either data
set, all 10k / 5k checked); the pHash figures are still reported.

Cheap enough to run after every `prepare`: there it reuses the pHashes of
the training images the split computed, so it costs one pHash and one
Hamming scan per held-out image (audit_samples). `audit` reads a finished
corpus back from its shards instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import unicodedata

import numpy as np

from mode_jax import workdir as wd
from mode_jax.data.corpus import split as corpus_split
from mode_jax.data.io import webdataset as wds

AUDIT_FILE = "leak_audit.json"   # under shards/
FORMAT = 1
# Tasks whose images are a data set's own held-out photographs or scans (see above).
PHOTO_TASKS = frozenset({"fashion_mnist", "mnist"})
EXAMPLES = 5   # leaking images and texts listed per task, to look at
CAPTION_RULE = ("near = equal after NFKC, case folding, and every run of characters other "
                "than letters and digits made one space")


def caption_key(text: str) -> str:
  """A caption's near-duplicate key: 'Timer icon.' and 'timer-icon' -> 'timer icon'.

  Only case, punctuation and spacing go: they are what alt-text copies of one
  caption differ by ('Grinning face' / 'grinning face', 'a dress.' / 'a dress',
  'cart-shopping' / 'cart shopping'), and CLIP's tokenizer lower-cases and
  splits on them anyway, so a model trained on one has read the other. Letters
  and digits are kept: 'the number 7' and 'the number 1' are different
  captions. Anything looser (stemming, word order, embedding distance) would
  need a threshold of its own and flag captions that merely share words.
  """
  text = unicodedata.normalize("NFKC", text).casefold()
  return " ".join(re.sub(r"[^\w]|_", " ", text).split())


def image_digest(image: np.ndarray) -> bytes:
  """Pixel identity: the shape and the bytes of a uint8 array."""
  image = np.ascontiguousarray(image, np.uint8)
  return hashlib.blake2b(repr(image.shape).encode() + image.tobytes(), digest_size=16).digest()


@dataclasses.dataclass
class Training:
  """What the training data holds: image pHashes and digests, captions and their keys."""
  hashes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))
  names: list = dataclasses.field(default_factory=list)      # sample key per hash
  digests: dict = dataclasses.field(default_factory=dict)    # digest -> sample key
  captions: set = dataclasses.field(default_factory=set)
  keys: set = dataclasses.field(default_factory=set)         # caption_key of each caption

  def add(self, samples, hashes=None) -> "Training":
    """Adds samples {"__key__", "png" or "image", "json": {"texts"} or "texts"};
    `hashes`: their phash when known already."""
    images, names = [], []
    for s in samples:
      image = _fields(s)[1]
      images.append(image)
      names.append(s["__key__"])
      self.digests.setdefault(image_digest(image), s["__key__"])
      for t in _fields(s)[2]:
        self.captions.add(t)
        self.keys.add(caption_key(t))
    if images:
      hashes = corpus_split.phash_images(images) if hashes is None else hashes
      self.hashes = np.concatenate([self.hashes, np.asarray(hashes, np.uint64)])
      self.names += names
    return self

  def knows(self, text: str) -> bool:
    """The caption is a training caption, exactly or nearly (caption_key)."""
    return text in self.captions or caption_key(text) in self.keys


def prompts(meta: dict) -> list[str]:
  """A zero-shot task's texts: every template with every name of every class."""
  names = [n for c in meta.get("classnames", []) for n in ([c] if isinstance(c, str) else c)]
  return list(dict.fromkeys(t.format(n) for n in names for t in meta.get("templates", [])))


def task_audit(training: Training, keys: list[str], images: list, texts: list[str],
               kind: str, rule: str = "phash",
               max_distance: int = corpus_split.PHASH_MAX_DISTANCE) -> dict:
  """Counts of one task. `texts`: the captions of all samples (retrieval) or the prompts.

  rule "phash": images within max_distance bits leak; "identical": only
  pixel-identical images do (PHOTO_TASKS).
  """
  if rule not in ("phash", "identical"):
    raise ValueError(f"rule {rule!r}: 'phash' or 'identical'")
  hashes = corpus_split.phash_images(images) if images else np.zeros(0, np.uint64)
  dist, index = corpus_split.nearest(hashes, training.hashes)
  within = dist <= max_distance
  identical = [training.digests.get(image_digest(im)) for im in images]
  exact = [t in training.captions for t in texts]
  near = [training.knows(t) for t in texts]
  leaking_images = within if rule == "phash" else np.array([i is not None for i in identical])
  examples = {
      "images": [[keys[i], training.names[index[i]], int(dist[i])]
                 for i in np.flatnonzero(leaking_images)[:EXAMPLES]],
      "texts": [t for t, n in zip(texts, near) if n][:EXAMPLES],
  }
  return {
      "kind": kind, "image_rule": rule, "images": len(images),
      "images_within": int(within.sum()),
      "min_distance": int(dist.min()) if len(dist) and len(training.hashes) else None,
      "images_identical": sum(i is not None for i in identical),
      "texts": len(texts), "texts_in_training": int(sum(exact)),
      "texts_nearly_in_training": int(sum(near)),
      "leaks": int(leaking_images.sum()) + int(sum(near)),
      "examples": examples,
  }


def _fields(s: dict) -> tuple[str, np.ndarray, list[str]]:
  """(key, image, texts) of a sample as written ({"png", "json"}) or as read back
  ({"image", "texts"}); texts stripped and de-duplicated, as the reader does."""
  image = s["png"] if "png" in s else s["image"]
  texts = s["json"].get("texts", []) if "json" in s else s["texts"]
  return s["__key__"], image, list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def audit_samples(training: Training, evals: dict,
                  max_distance: int = corpus_split.PHASH_MAX_DISTANCE) -> dict:
  """The audit of evals {task: (samples, meta)} against `training`.

  `prepare` calls it with the samples it has just written and the Training it
  chose them with (every source's training pairs), so the audit costs one
  pHash per held-out image; `audit` reads both back from the shards instead.
  """
  start = time.time()
  tasks = {}
  for task, (samples, meta) in evals.items():
    keys, images, texts = zip(*map(_fields, samples)) if samples else ((), (), ())
    kind = meta.get("kind", "zeroshot")
    checked = [t for ts in texts for t in ts] if kind == "retrieval" else prompts(meta)
    tasks[task] = task_audit(training, list(keys), list(images), checked, kind,
                             "identical" if task in PHOTO_TASKS else "phash", max_distance)
  return {
      "format": FORMAT, "max_distance": max_distance, "caption_rule": CAPTION_RULE,
      "photo_tasks": sorted(PHOTO_TASKS & set(tasks)),
      "train": {"images": len(training.hashes), "captions": len(training.captions)},
      "tasks": tasks, "leaks": sum(t["leaks"] for t in tasks.values()),
      "wall_s": round(time.time() - start, 1),
  }


def eval_tasks(shards_dir: str) -> dict:
  """task -> its shards/eval/<task>.json (with "shards" relative to shards_dir)."""
  d = wd.path(shards_dir, "eval")
  if not wd.exists(d):
    return {}
  return {f[:-5]: wd.read_json(wd.path(d, f)) for f in sorted(wd.listdir(d))
          if f.endswith(".json")}


def _read(paths) -> list[dict]:
  return [s for p in paths for s in wds.iter_shard(p)]


def audit(shards_dir: str, max_distance: int = corpus_split.PHASH_MAX_DISTANCE) -> dict:
  """The audit of the corpus in shards_dir (train-*.tar, eval/<task>.json and its
  shards), read back from the files: a check of what was written (~0.4 ms of CPU
  per image, mostly PNG decoding)."""
  start = time.time()
  training = Training().add(_read(sorted(wd.glob(wd.path(shards_dir, "train-*.tar")))))
  evals = {task: (_read(wd.path(shards_dir, s) for s in meta.get("shards", [])), meta)
           for task, meta in eval_tasks(shards_dir).items()}
  return {**audit_samples(training, evals, max_distance), "wall_s": round(time.time() - start, 1)}


def write(shards_dir: str, result: dict) -> None:
  """Writes an audit to shards_dir/leak_audit.json."""
  wd.write_json(wd.path(shards_dir, AUDIT_FILE), result)


def summary_line(task: str, t: dict) -> str:
  """One line per task, for the prepare log and the report."""
  dist = "-" if t["min_distance"] is None else t["min_distance"]
  rule = " (only identical images leak)" if t["image_rule"] == "identical" else ""
  return (f"{task}: leaks {t['leaks']}{rule}; {t['images']} images, {t['images_within']} "
          f"within the pHash threshold (nearest {dist} bits), {t['images_identical']} "
          f"identical; {t['texts']} texts, {t['texts_in_training']} in training, "
          f"{t['texts_nearly_in_training']} nearly")
