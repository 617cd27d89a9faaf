"""Fashion-MNIST (Debian `dataset-fashion-mnist`) as image-caption pairs and a zero-shot set.

Training captions put a class name or synonym into TRAIN_TEMPLATES; the
zero-shot set uses EVAL_TEMPLATES, which share no template with training, so
zero-shot accuracy is not a memorised caption string.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from mode_jax.data.corpus.sources.common import MissingSource, templated_texts

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL = "apt-get install -y --no-install-recommends dataset-fashion-mnist"

# Label order of the data set; the first name of each class is the canonical one.
CLASSNAMES = [
    ["t-shirt", "top", "tee"], ["trousers", "pants", "jeans"],
    ["pullover", "sweater", "jumper"], ["dress", "gown", "frock"],
    ["coat", "jacket", "overcoat"], ["sandal", "flip-flop", "open shoe"],
    ["shirt", "button-up shirt", "blouse"], ["sneaker", "running shoe", "trainer"],
    ["bag", "handbag", "purse"], ["ankle boot", "boot", "bootie"],
]
TRAIN_TEMPLATES = [
    "a photo of a {}.", "a black and white product photo of a {}.",
    "a {} on a plain background.", "a small grey picture of a {}.",
    "a catalogue photo of a {}.", "{}", "product shot: {}",
    "an online shop listing of a {}.",
]
EVAL_TEMPLATES = [
    "a picture of a {}.", "a grayscale photo of a {}.",
    "a low resolution photo of the {}.", "an image of a {}.",
]


def read_idx(path: str) -> np.ndarray:
  """Reads a gzipped IDX file: 0x0000, type 0x08 (uint8), ndim, big-endian int32 dims, data."""
  with gzip.open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
    raise ValueError(f"{path}: not a uint8 IDX file")
  ndim = raw[3]
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: {data.size} bytes of data for dims {dims}")
  return data.reshape(dims)


def load_split(split: str, root: str = FMNIST_DIR, limit: int = 0):
  """(images uint8 [N, 28, 28], labels int32 [N]) of 'train' or 't10k'; limit 0 = all."""
  img = os.path.join(root, f"{split}-images-idx3-ubyte.gz")
  lab = os.path.join(root, f"{split}-labels-idx1-ubyte.gz")
  for p in (img, lab):
    if not os.path.exists(p):
      raise MissingSource("Fashion-MNIST", p, INSTALL)
  images, labels = read_idx(img), read_idx(lab).astype(np.int32)
  if len(images) != len(labels):
    raise ValueError(f"{root}/{split}: {len(images)} images but {len(labels)} labels")
  n = limit or len(images)
  return images[:n], labels[:n]


def _rgb(grey: np.ndarray) -> np.ndarray:
  return np.repeat(grey[..., None], 3, axis=-1)


def train_samples(root: str, limit: int, texts_per_image: int, seed: int):
  """Training pairs {'__key__': 'fmnist-NNNNN', 'png', 'json'}; key = index in the train split."""
  images, labels = load_split("train", root, limit)
  rng = np.random.default_rng([seed, 1])
  for i, (x, y) in enumerate(zip(images, labels)):
    texts = templated_texts(rng, CLASSNAMES[y], TRAIN_TEMPLATES, texts_per_image)
    yield {"__key__": f"fmnist-{i:05d}", "png": _rgb(x),
           "json": {"texts": texts, "source": "fmnist", "class": CLASSNAMES[y][0]}}


def eval_samples(root: str, limit: int):
  """The zero-shot test set: first `limit` test images (0 = all 10k), with labels."""
  images, labels = load_split("t10k", root, limit)
  for i, (x, y) in enumerate(zip(images, labels)):
    yield {"__key__": f"fmnist-test-{i:05d}", "png": _rgb(x),
           "json": {"texts": [EVAL_TEMPLATES[0].format(CLASSNAMES[y][0])], "label": int(y)}}


def eval_meta() -> dict:
  return {"kind": "zeroshot", "classnames": CLASSNAMES, "templates": EVAL_TEMPLATES}
