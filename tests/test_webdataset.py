"""Webdataset shard reading: formats, brace patterns, and every kind of bad data."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest
from PIL import Image

from mode_jax.data.io import shard_index
from mode_jax.data.io import webdataset as wds


def _png(a, mode=None):
  buf = io.BytesIO()
  Image.fromarray(a, mode).save(buf, format="PNG")
  return buf.getvalue()


def _jpg(a):
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_tar(path, members, fmt=tarfile.USTAR_FORMAT):
  """members: [(name, bytes)] in order, written with the standard library."""
  with tarfile.open(path, "w", format=fmt) as t:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  return path


RGB = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
GREY = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
RGBA = np.random.default_rng(2).integers(0, 256, (8, 8, 4), dtype=np.uint8)


def _good_members():
  return [
      ("a.png", _png(RGB)), ("a.json", json.dumps({"texts": ["one", " two ", "one"],
                                                   "label": 3}).encode()),
      ("b.jpg", _jpg(RGB)), ("b.txt", b"a caption from txt"),
      ("c.json", json.dumps({"caption": "grey digit"}).encode()), ("c.png", _png(GREY)),
      ("d.webp", b""), ("e.png", _png(RGBA, "RGBA")),
      ("e.json", json.dumps({"texts": ["x"], "caption": "y"}).encode()), ("e.txt", b"z"),
  ]


def test_iter_shard_formats(tmp_path):
  p = write_tar(str(tmp_path / "s.tar"), _good_members()[:6] + _good_members()[7:])
  stats = wds.Stats()
  out = {s["__key__"]: s for s in wds.iter_shard(p, stats=stats)}
  assert list(out) == ["a", "b", "c", "e"]
  assert out["a"]["texts"] == ["one", "two"] and out["a"]["label"] == 3
  np.testing.assert_array_equal(out["a"]["image"], RGB)
  ref_jpg = np.asarray(Image.open(io.BytesIO(_jpg(RGB))).convert("RGB"))
  np.testing.assert_array_equal(out["b"]["image"], ref_jpg)
  assert out["b"]["texts"] == ["a caption from txt"] and out["b"]["label"] is None
  np.testing.assert_array_equal(out["c"]["image"], np.repeat(GREY[..., None], 3, -1))
  a = RGBA[..., 3:].astype(np.float64) / 255   # alpha composited on white
  ref = np.round(RGBA[..., :3] * a + 255 * (1 - a))
  assert np.abs(out["e"]["image"].astype(int) - ref).max() <= 1
  assert out["e"]["texts"] == ["x", "y", "z"]
  assert stats.samples == 4 and stats.skipped == 0 and stats.shards == 1


def test_without_images_skips_decoding(tmp_path):
  members = _good_members()[:6] + [("f.png", b"not an image"), ("f.txt", b"kept")]
  p = write_tar(str(tmp_path / "s.tar"), members)
  out = list(wds.iter_shard(p, with_images=False))
  assert [s["__key__"] for s in out] == ["a", "b", "c", "f"]
  assert all(s["image"] is None for s in out)


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
  png = _png(RGB)
  members = [
      ("ok.png", png), ("ok.txt", b"fine"),
      ("corrupt.png", b"\x89PNG garbage bytes"), ("corrupt.txt", b"c"),
      ("cut.png", png[:len(png) // 2]), ("cut.txt", b"c"),
      ("empty.png", png), ("empty.json", json.dumps({"texts": ["", "  "]}).encode()),
      ("nocap.png", png),
      ("noimg.txt", b"caption without an image"),
      ("badjson.png", png), ("badjson.json", b"{not json"), ("badjson.txt", b"saved by txt"),
      ("ok2.jpg", _jpg(RGB)), ("ok2.json", json.dumps({"caption": "fine too"}).encode()),
  ]
  p = write_tar(str(tmp_path / "s.tar"), members)
  with caplog.at_level(logging.WARNING):
    keys = [s["__key__"] for s in wds.iter_shard(p)]
  assert keys == ["ok", "badjson", "ok2"]
  assert "corrupt_images" in caplog.text and "missing_captions" in caplog.text
  stats = wds.Stats()
  list(wds.iter_shard(p, stats=stats))
  assert (stats.corrupt_images, stats.missing_captions, stats.missing_images,
          stats.bad_json, stats.samples) == (2, 2, 1, 1, 3)


@pytest.mark.parametrize("cut", ["middle", "member_boundary", "in_header"])
def test_truncated_tar(tmp_path, caplog, cut):
  members = [(f"{i:03d}.{e}", _png(RGB) if e == "png" else f"cap {i}".encode())
             for i in range(6) for e in ("png", "txt")]
  full = write_tar(str(tmp_path / "full.tar"), members)
  with tarfile.open(full) as t:   # the standard library's view of member offsets
    infos = t.getmembers()
  data = open(full, "rb").read()
  at = {"middle": infos[7].offset_data + 10,            # inside sample 3's png
        "member_boundary": infos[8].offset,            # right before sample 4, no end blocks
        "in_header": infos[8].offset + 100}[cut]
  p = tmp_path / "cut.tar"
  p.write_bytes(data[:at])
  stats = wds.Stats()
  with caplog.at_level(logging.WARNING):
    keys = [s["__key__"] for s in wds.iter_shard(str(p), stats=stats)]
  # the sample in progress at the cut (003) is dropped: its other members are unknown
  assert keys == ["000", "001", "002"]
  assert stats.truncated_shards == 1 and "truncated" in caplog.text
  # the index sees the same samples
  k, start, length, st = shard_index.scan_shard(str(p))
  assert list(k) == keys and st.truncated_shards == 1


def test_complete_shard_is_not_truncated(tmp_path):
  p = write_tar(str(tmp_path / "s.tar"), _good_members())
  stats = wds.Stats()
  list(wds.iter_shard(p, stats=stats))
  assert stats.truncated_shards == 0


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_member_names(tmp_path, fmt):
  d = "d" * 120
  members = [(f"{d}/k1.png", _png(RGB)), (f"{d}/k1.txt", b"long"),
             ("k2.png", _png(RGB)), ("k2.txt", b"short")]
  p = write_tar(str(tmp_path / "s.tar"), members, fmt)
  assert [s["__key__"] for s in wds.iter_shard(p)] == [f"{d}/k1", "k2"]


def test_index_spans_read_back_the_samples(tmp_path):
  p = write_tar(str(tmp_path / "s.tar"), _good_members(), tarfile.PAX_FORMAT)
  keys, start, length, st = shard_index.scan_shard(p)
  assert list(keys) == ["a", "b", "c", "d", "e"]   # d has an (empty) image member
  r = shard_index.SpanReader([p], np.array([0, len(keys)]), start, length)
  ref = {s["__key__"]: s for s in wds.iter_shard(p)}
  for i, k in enumerate(keys):
    key, members = r.read(i)
    assert key == k
    if k in ref:
      s = wds.make_sample(key, members, with_images=True, stats=wds.Stats())
      np.testing.assert_array_equal(s["image"], ref[k]["image"])
      assert s["texts"] == ref[k]["texts"]


def test_expand_shards(tmp_path, caplog):
  for i in range(4):
    write_tar(str(tmp_path / f"train-{i:05d}.tar"), _good_members()[:2])
  t = str(tmp_path)
  got = wds.expand_shards(f"{t}/train-{{00000..00002}}.tar")
  assert got == [f"{t}/train-{i:05d}.tar" for i in range(3)]
  assert wds.expand_shards(f"{t}/train-*.tar") == [f"{t}/train-{i:05d}.tar" for i in range(4)]
  assert wds.expand_shards(f"{t}/train-0000{{1,3}}.tar::{t}/train-00000.tar") == [
      f"{t}/train-00001.tar", f"{t}/train-00003.tar", f"{t}/train-00000.tar"]
  with caplog.at_level(logging.WARNING):
    assert len(wds.expand_shards(f"{t}/train-{{00000..00009}}.tar")) == 4
  assert "6 of 10" in caplog.text
  assert wds.expand_shards(f"file://{t}/train-00000.tar") == [f"{t}/train-00000.tar"]
  for bad in (f"{t}/val-*.tar", f"{t}/val-{{000..002}}.tar"):
    with pytest.raises(FileNotFoundError, match="val-"):
      wds.expand_shards(bad)


def test_fsspec_memory_filesystem():
  fsspec = pytest.importorskip("fsspec")
  fs = fsspec.filesystem("memory")
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as t:
    for name, data in _good_members()[:4]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  for i in range(2):
    fs.pipe(f"/wds-test/s-{i}.tar", buf.getvalue())
  paths = wds.expand_shards("memory://wds-test/s-{0..1}.tar")
  assert len(paths) == 2 and all(p.startswith("memory://") for p in paths)
  assert [s["__key__"] for s in wds.iter_shard(paths[1])] == ["a", "b"]
  assert [s["__key__"] for s in wds.iter_shard(wds.expand_shards("memory://wds-test/*.tar")[0])
          ] == ["a", "b"]


def test_fast_jpeg_decoder_matches_pil_and_skips_corrupt_bytes(tmp_path):
  pytest.importorskip("simplejpeg")
  y, x = np.mgrid[:300, :400]
  smooth = np.stack([x % 256, y % 256, (x + y) // 3 % 256], -1).astype(np.uint8)
  data = _jpg(smooth)
  for draft in (None, 128):            # 128: libjpeg's 1/2 DCT scale in both decoders
    fast = wds.decode_image(data, draft)
    np.testing.assert_array_equal(fast, wds._decode_jpeg(data, draft))  # the fast path ran
    with Image.open(io.BytesIO(data)) as im:
      if draft:
        im.draft("RGB", (draft, draft))
      ref = np.asarray(im.convert("RGB"))
    assert fast.shape == ref.shape and np.abs(fast.astype(int) - ref).mean() < 2
  grey = wds.decode_image(_jpg(smooth[..., 0]))
  assert grey.shape == (300, 400, 3)
  members = [("ok.jpg", data), ("ok.txt", b"fine"),
             ("cut.jpg", data[:len(data) // 2]), ("cut.txt", b"c"),
             ("junk.jpg", b"\xff\xd8\xff\xe0 not a jpeg"), ("junk.txt", b"c")]
  stats = wds.Stats()
  keys = [s["__key__"] for s in wds.iter_shard(write_tar(str(tmp_path / "j.tar"), members),
                                               stats=stats)]
  assert keys == ["ok"] and stats.corrupt_images == 2
