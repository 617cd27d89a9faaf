"""TFDS reading without TensorFlow: a tiny data set built here by a custom builder."""

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets",
                           reason="needs tensorflow-datasets: pip install tensorflow-datasets")

from mode_jax.data.io import loader, tfds_source  # noqa: E402

CLASSES = ["cat", "dog", "bird"]


def _image(i):
  return np.random.default_rng(i).integers(0, 256, (12, 12, 3), dtype=np.uint8)


class ModeJaxTinyPairs(tfds.core.GeneratorBasedBuilder):
  """Six RGB images with captions and class labels; built from memory."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "caption": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=CLASSES)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):   # PIL images: TFDS encodes numpy images with TF, PIL ones without
      yield i, {"image": Image.fromarray(_image(i)), "caption": f"a photo number {i}",
                "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  ModeJaxTinyPairs(data_dir=d, file_format="array_record").download_and_prepare()
  return d


def _cfg(data_dir, **kw):
  c = tfds_source.default_config()
  c.name, c.data_dir = "mode_jax_tiny_pairs", data_dir
  c.update(kw)
  return c


def test_pairs_match_what_was_written(data_dir):
  s = tfds_source.TfdsSamples(_cfg(data_dir))
  assert len(s) == 6 and s.classnames == CLASSES
  seen = {}
  for i in range(len(s)):
    x = s.load(i)
    n = int(x["texts"][0].split()[-1])
    seen[n] = x
    np.testing.assert_array_equal(x["image"], _image(n))   # PNG is lossless
    assert x["label"] == n % 3
  assert sorted(seen) == list(range(6))


def test_classification_and_eval_batches(data_dir):
  s, names = tfds_source.classification(_cfg(data_dir))
  assert names == CLASSES
  cfg = loader.default_config()
  cfg.resolution = 12
  batches = list(loader.eval_batches(cfg, None, None, batch_size=4, source=s))
  assert [len(b["label"]) for b in batches] == [4, 4]   # fixed shape; padding marked invalid
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [True] * 6 + [False] * 2
  labels = np.concatenate([b["label"] for b in batches])[valid]
  assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_train_iterator_over_tfds(data_dir):
  s = tfds_source.TfdsSamples(_cfg(data_dir))
  cfg = loader.default_config()
  cfg.resolution, cfg.batch_size = 8, 3
  it = loader.train_iterator(cfg, None, lambda t: np.array([[len(x)] for x in t], np.int32),
                             source=s, process_index=0, process_count=1)
  b = next(it)
  assert b["image"].shape == (3, 8, 8, 3) and b["image"].dtype == np.uint8
  assert b["tokens"].shape == (3, 1)


def test_unprepared_name_stops_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared"):
    tfds_source.TfdsSamples(_cfg(str(tmp_path), name="mnist"))
  with pytest.raises(FileNotFoundError, match="no_such_dataset_xyz"):
    tfds_source.TfdsSamples(_cfg(str(tmp_path), name="no_such_dataset_xyz"))
