"""The webdataset writer, read back with tarfile + PIL (independent of our reader)."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from mode_jax.data.io import wds_writer


def _read(path):
  """key -> {ext: bytes}, checking that a sample's members are consecutive."""
  out, order = {}, []
  with tarfile.open(path) as tar:
    for m in tar.getmembers():
      key, ext = m.name.split(".", 1)
      if not order or order[-1] != key:
        assert key not in out, f"members of {key} are not consecutive"
        order.append(key)
      out.setdefault(key, {})[ext] = tar.extractfile(m).read()
  return out, order


def _samples(n, rng):
  for i in range(n):
    shape = (28, 28) if i % 2 else (16, 24, 3)
    yield {"__key__": f"src-{i:04d}", "png": rng.integers(0, 256, shape, dtype=np.uint8),
           "json": {"texts": [f"caption {i}", "zweite Überschrift"], "label": i % 3}}


def test_round_trip_images_and_json(tmp_path):
  rng = np.random.default_rng(0)
  want = list(_samples(5, np.random.default_rng(0)))
  path = str(tmp_path / "a.tar")
  assert wds_writer.write_shard(path, _samples(5, rng)) == 5
  got, order = _read(path)
  assert order == [s["__key__"] for s in want]
  for s in want:
    members = got[s["__key__"]]
    assert set(members) == {"png", "json"}
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(members["png"]))), s["png"])
    assert json.loads(members["json"].decode("utf-8")) == s["json"]
  assert not os.path.exists(path + ".tmp")


def test_bytes_and_text_members_kept_verbatim(tmp_path):
  path = str(tmp_path / "b.tar")
  wds_writer.write_shard(path, [{"__key__": "k1", "txt": "a dog", "jpg": b"\xff\xd8raw"}])
  got, _ = _read(path)
  assert got == {"k1": {"txt": b"a dog", "jpg": b"\xff\xd8raw"}}


def test_shards_are_reproducible_byte_for_byte(tmp_path):
  a, b = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
  wds_writer.write_shard(a, _samples(4, np.random.default_rng(1)))
  wds_writer.write_shard(b, _samples(4, np.random.default_rng(1)))
  assert open(a, "rb").read() == open(b, "rb").read()


def test_write_shards_splits_in_order(tmp_path):
  pattern = str(tmp_path / "train-%05d.tar")
  seen = []
  paths = wds_writer.write_shards(pattern, _samples(7, np.random.default_rng(0)), 3,
                                  progress=seen.append)
  assert [os.path.basename(p) for p in paths] == [
      "train-00000.tar", "train-00001.tar", "train-00002.tar"]
  assert seen == [3, 3, 1]
  keys = [k for p in paths for k in _read(p)[1]]
  assert keys == [f"src-{i:04d}" for i in range(7)]


@pytest.mark.parametrize("key", ["a.b", "a/b", ""])
def test_bad_keys_rejected(tmp_path, key):
  with pytest.raises(ValueError, match="bad sample key"):
    wds_writer.write_shard(str(tmp_path / "c.tar"), [{"__key__": key, "txt": "x"}])


def test_duplicate_keys_rejected_across_shards(tmp_path):
  samples = [{"__key__": "k", "txt": "x"}, {"__key__": "j", "txt": "y"},
             {"__key__": "k", "txt": "z"}]
  with pytest.raises(ValueError, match="duplicate"):
    wds_writer.write_shards(str(tmp_path / "d-%05d.tar"), samples, 2)


def test_failed_write_leaves_no_shard(tmp_path):
  path = str(tmp_path / "e.tar")

  def broken():
    yield {"__key__": "ok", "txt": "fine"}
    raise RuntimeError("source died mid-shard")

  with pytest.raises(RuntimeError):
    wds_writer.write_shard(path, broken())
  assert os.listdir(tmp_path) == []


def test_encode_png_rejects_float():
  with pytest.raises(ValueError):
    wds_writer.encode_png(np.zeros((4, 4, 3), np.float32))
