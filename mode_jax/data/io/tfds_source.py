"""TFDS data sets as loader sources, read without TensorFlow.

`tfds.data_source` reads data sets prepared in the array_record (or parquet)
format by random access, decoding features with numpy/PIL, so no TF graph and
no `tensorflow` package are needed (tensorflow-datasets alone is enough). Data
sets prepared in the default TFRecord format cannot be read that way; we stop
with a message saying how to re-prepare them (`file_format="array_record"`).

Training: image-text pairs (`text_key`, a string or list-of-strings feature).
Evaluation: image classification with the label names of the ClassLabel
feature, batched by loader.eval_batches(..., source=...).
Install: `pip install tensorflow-datasets` (pulls no TensorFlow).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

INSTALL = "pip install tensorflow-datasets"


def default_config() -> ml_collections.ConfigDict:
  """Fields of a TFDS input (config.input.tfds)."""
  c = ml_collections.ConfigDict()
  c.name = ""             # TFDS name, optionally with config/version: "my_ds/cfg:1.0.0"
  c.data_dir = ""         # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.split = "train"
  c.image_key = "image"
  c.text_key = "caption"  # "" for classification-only data sets
  c.label_key = "label"
  return c


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"reading TFDS data sets needs tensorflow-datasets: {INSTALL}") from e
  return tfds


def builder(name: str, data_dir: str = ""):
  """The prepared data set's builder; a clear error when it is not prepared here."""
  tfds = _tfds()
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  where = data_dir or "the default TFDS data_dir"
  try:
    b = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(
        f"TFDS data set {name!r} is neither registered nor prepared in {where}") from e
  if not b.is_prepared():
    raise FileNotFoundError(
        f"TFDS data set {name!r} is not prepared in {where}: build it with "
        f"download_and_prepare(file_format='array_record') on a machine that can "
        f"reach its sources, then copy the data_dir")
  fmt = str(b.info.file_format.value if b.info.file_format else "tfrecord")
  if fmt not in ("array_record", "parquet"):
    raise ValueError(
        f"TFDS data set {name!r} in {where} is stored as {fmt}, which needs TensorFlow "
        f"to read; re-prepare it with file_format='array_record'")
  return b


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, -1)
  elif image.shape[-1] == 4:   # alpha on white, as webdataset.to_rgb
    a = image[..., 3:].astype(np.float32) / 255
    image = np.round(image[..., :3] * a + 255 * (1 - a))
  return image.astype(np.uint8)


def _texts(value) -> list[str]:
  vals = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
  out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in vals]
  return [t.strip() for t in out if t.strip()]


class TfdsSamples:
  """Random access to a split as loader samples {"__key__", "texts", "image", "label"}.

  `load(i)` is what loader.train_iterator / eval_batches call; samples without
  captions (when text_key is set) come back as None and are skipped there.
  Picklable, so grain worker processes can open it themselves.
  """

  def __init__(self, cfg):
    self.cfg = ml_collections.ConfigDict(cfg.to_dict())
    b = builder(cfg.name, cfg.data_dir)
    self.num_examples = b.info.splits[cfg.split].num_examples
    feat = b.info.features[cfg.label_key] if cfg.label_key in b.info.features else None
    self.classnames = list(getattr(feat, "names", []) or [])
    self._src = None

  def __getstate__(self):
    return {**self.__dict__, "_src": None}

  def __len__(self) -> int:
    return self.num_examples

  @property
  def source(self):
    if self._src is None:
      self._src = builder(self.cfg.name, self.cfg.data_dir).as_data_source(split=self.cfg.split)
    return self._src

  def load(self, i: int) -> dict | None:
    ex = self.source[int(i)]
    texts = _texts(ex[self.cfg.text_key]) if self.cfg.text_key else [""]
    if not texts:
      return None
    label = ex.get(self.cfg.label_key)
    return {"__key__": f"{self.cfg.split}-{int(i)}", "texts": texts,
            "image": _rgb(ex[self.cfg.image_key]),
            "label": None if label is None else int(label)}


def classification(cfg) -> tuple[TfdsSamples, list[str]]:
  """(samples, class names) of an image classification split, for zero-shot evaluation."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.text_key = ""
  s = TfdsSamples(cfg)
  if not s.classnames:
    raise ValueError(f"{cfg.name}: feature {cfg.label_key!r} is not a ClassLabel with names")
  return s, s.classnames
