"""Fashion-MNIST as image-caption pairs, for the first from-scratch CLIP demo.

Captions are a class name or synonym in a training template. Zero-shot
accuracy is measured on the test split with EVAL_TEMPLATES, which share no
template with TRAIN_TEMPLATES, so the score is not a memorised string match.
Data: Debian `dataset-fashion-mnist` (gzipped IDX files).
"""

from __future__ import annotations

import jax
import numpy as np

# Class names, templates and the IDX reader are shared with the demo corpus.
from mode_jax.data.corpus.sources.fmnist import (  # noqa: F401
    CLASSNAMES, EVAL_TEMPLATES, FMNIST_DIR, INSTALL, TRAIN_TEMPLATES)
from mode_jax.data.corpus.sources import fmnist as sources_fmnist


def load_split(split: str, limit: int | None = None):
  """Returns (images uint8 [N, 28, 28], labels int32 [N]) for 'train' or 't10k'."""
  return sources_fmnist.load_split(split, limit=limit or 0)


def preprocess(images_u8: np.ndarray) -> np.ndarray:
  """Grey uint8 [N, H, W] -> uint8 [N, H, W, 3]; the model normalises (models/vit.py)."""
  return np.repeat(np.asarray(images_u8, np.uint8)[..., None], 3, -1)


class CaptionStream:
  """Shuffled (image, caption) batches with a checkpointable position.

  Each read picks a synonym and a training template at random, seeded by
  (seed, epoch, index), so a resumed stream yields exactly the same batches.
  Multi-host: process p takes rows p::process_count of every global batch.
  """

  def __init__(self, images, labels, tokenizer, *, batch_size, seed=0, context_length=16):
    combos = [(c, n, t) for c, names in enumerate(CLASSNAMES) for n in names
              for t in TRAIN_TEMPLATES]
    self.combo_class = np.array([c for c, _, _ in combos])
    self.combo_tokens = tokenizer([t.format(n) for _, n, t in combos],
                                  context_length=context_length)
    self.by_class = [np.flatnonzero(self.combo_class == c) for c in range(len(CLASSNAMES))]
    self.images, self.labels = images, labels
    self.batch_size, self.seed = batch_size, seed
    self.epoch, self.pos = 0, 0

  def _perm(self):
    return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

  def __iter__(self):
    return self

  def __next__(self):
    if self.pos + self.batch_size > len(self.images):
      self.epoch, self.pos = self.epoch + 1, 0
    idx = self._perm()[self.pos:self.pos + self.batch_size]
    rng = np.random.default_rng([self.seed, self.epoch, self.pos])
    self.pos += self.batch_size
    combo = np.array([rng.choice(self.by_class[c]) for c in self.labels[idx]])
    p, n = jax.process_index(), jax.process_count()
    idx, combo = idx[p::n], combo[p::n]
    return {"image": preprocess(self.images[idx]), "tokens": self.combo_tokens[combo]}

  def get_state(self):
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state):
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
