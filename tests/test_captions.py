"""Captions without images (mode_jax/data/io/shard_captions.py): img2dataset's parquet or the tar.

Shards are written as img2dataset 1.47.0 writes them (tests/helpers/img2dataset_shards.py):
failed rows in the parquet only, samples in download-completion order. The expected samples are worked
out from the input rows, not by either reader.
"""

import io
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clustering import summary
from mode_jax.data.io import shard_captions as sc
from mode_jax.data.io import webdataset as wds
from mode_jax.eval import cluster_summary
from tests.helpers import img2dataset_shards as i2d

TEXTS = (("texts", pa.list_(pa.string())),)   # an extra input column kept by img2dataset


def jpeg(colour) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.new("RGB", (24, 16), colour).save(buf, "JPEG")
  return buf.getvalue()


def input_rows(shard_id: int, n: int, with_texts: bool) -> list[dict]:
  """Successes with captions that need stripping, none, empty or blank; both failure kinds."""
  rows = []
  for i in range(n):
    status = ("failed_to_download" if i % 5 == 1 else "failed_to_resize" if i % 7 == 2
              else "success")
    caption = {3: None, 4: "", 6: "   "}.get(i, f"  shard {shard_id} row {i}: ünï\tcode  ")
    row = dict(caption=caption, url=f"http://example.com/{shard_id}/{i}.jpg", status=status,
               jpg=jpeg((40 * shard_id, 7 * i % 256, 90)), size=(24, 16), original=(48, 32))
    if with_texts:
      row["texts"] = None if i % 4 == 0 else [f"alt {i} ", caption or "x", "  "]
    rows.append(row)
  return rows


def expected(shard_id: int, rows: list[dict], order) -> tuple[list[str], list[list[str]]]:
  """What a sample of each row is: successes only, in write order; captions by the tar
  reader's documented rule (json texts, json caption, txt = str(caption); stripped,
  non-empty, first occurrence kept); no caption -> no sample."""
  keys, cands = [], []
  for i in order:
    r = rows[i]
    if r["status"] != "success":
      continue
    raw = list(r.get("texts") or []) + [r["caption"], "" if r["caption"] is None
                                        else r["caption"]]
    texts = []
    for t in raw:
      if isinstance(t, str) and t.strip() and t.strip() not in texts:
        texts.append(t.strip())
    if texts:
      keys.append(f"{shard_id * 10_000 + i:09d}")   # 4 sample digits + 5 shard digits
      cands.append(texts)
  return keys, cands


def make_shards(d, n_shards=3, n=37, with_texts=False):
  """Shard paths, each shard's expected (keys, captions), and how many successful rows
  have no caption (not samples: counted as missing captions)."""
  rng = np.random.default_rng(0)
  tars, want, no_caption = [], [], 0
  for s in range(n_shards):
    rows = input_rows(s, n, with_texts)
    order = rng.permutation(n).tolist()
    tars.append(i2d.write_shard(str(d), s, rows, order, extra=TEXTS if with_texts else ())[0])
    want.append(expected(s, rows, order))
    no_caption += sum(r["status"] == "success" for r in rows) - len(want[-1][0])
  return tars, want, no_caption


def reads(log_dir) -> list[str]:
  """Basenames of the files this process opened for reading (MODE_JAX_IO_LOG)."""
  out = []
  for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
    with open(os.path.join(log_dir, name)) as f:
      out += [os.path.basename(json.loads(x)["path"]) for x in f
              if json.loads(x)["op"] == "read"]
  return out


def read_all(reader, tars):
  stats = wds.Stats()
  return [reader.read(t, stats) for t in tars], stats


@pytest.mark.parametrize("with_texts", [False, True], ids=["caption", "texts+caption"])
def test_parquet_and_tar_give_the_same_samples_in_tar_order(tmp_path, monkeypatch, with_texts):
  tars, want, no_caption = make_shards(tmp_path / "shards", with_texts=with_texts)
  assert pq.read_metadata(tars[0][:-4] + ".parquet").num_rows == 37 > len(want[0][0])
  monkeypatch.setenv("MODE_JAX_IO_LOG", str(tmp_path / "tar_log"))
  from_tars, tar_stats = read_all(sc.ShardCaptions(tars, source="tar"), tars)
  monkeypatch.setenv("MODE_JAX_IO_LOG", str(tmp_path / "pq_log"))
  reader = sc.ShardCaptions(tars)
  from_parquet, pq_stats = read_all(reader, tars)

  assert [(k, c) for k, c in from_tars] == want
  assert [(k, c) for k, c in from_parquet] == want
  assert reader.parquet and reader.checked and reader.fallbacks == 0
  assert tar_stats.as_dict() == pq_stats.as_dict()
  assert pq_stats.missing_captions == no_caption and pq_stats.samples == sum(
      len(k) for k, _ in want)
  # rows 3 and 4 of each shard; with texts, row 4 only (row 3 has a texts list)
  assert no_caption == (3 if with_texts else 6)
  # every tar read without parquet; with it, only the first shard's tar (the check)
  assert sorted(reads(tmp_path / "tar_log")) == ["00000.tar", "00001.tar", "00002.tar"]
  assert sorted(reads(tmp_path / "pq_log")) == [
      "00000.parquet", "00000.tar", "00001.parquet", "00002.parquet"]


def test_a_numeric_caption_column_reads_as_its_txt(tmp_path):
  """img2dataset writes str(caption) to .txt; the .json number is no caption."""
  rows = [dict(caption=c, url="u", status="success", jpg=jpeg((0, 0, 0)), size=(24, 16),
               original=(24, 16)) for c in (7, None, 0, -3)]
  tar, _ = i2d.write_shard(str(tmp_path), 0, rows, caption_type=pa.int64())
  want = (["000000000", "000000002", "000000003"], [["7"], ["0"], ["-3"]])
  assert sc.ShardCaptions([tar], source="tar").read(tar) == want
  assert sc.ShardCaptions([tar], source="parquet").read(tar) == want


def _rewrite(parquet: str, change) -> None:
  cols = pq.read_table(parquet).to_pydict()
  change(cols)
  pq.write_table(pa.Table.from_pydict(cols, pq.read_schema(parquet)), parquet)


def _success_rows(cols):
  return [i for i, s in enumerate(cols["status"]) if s == "success" and
          (cols["caption"][i] or "").strip()]


def _swap(cols):   # two samples in the other order
  a, b = _success_rows(cols)[:2]
  for v in cols.values():
    v[a], v[b] = v[b], v[a]


def _recaption(cols):
  cols["caption"][_success_rows(cols)[5]] = "a different caption"


def _fail(cols):   # a sample the tar has, marked failed in the parquet
  cols["status"][_success_rows(cols)[-1]] = "failed_to_download"


@pytest.mark.parametrize("change,words", [(_swap, "sample 0 is"),
                                          (_recaption, "has captions"),
                                          (_fail, "samples with captions in the parquet")])
def test_a_parquet_that_disagrees_with_its_tar_is_an_error(tmp_path, change, words):
  tars, _, _ = make_shards(tmp_path, n_shards=2)
  _rewrite(tars[0][:-4] + ".parquet", change)
  reader = sc.ShardCaptions(tars)
  with pytest.raises(sc.CaptionMismatch) as e:
    reader.read(tars[0])
  msg = str(e.value)
  assert "\n" not in msg and words in msg
  assert msg.startswith(f"{tars[0][:-4]}.parquet does not match {tars[0]}: ")


def test_a_missing_parquet_means_every_shard_from_its_tar(tmp_path, monkeypatch):
  tars, want, _ = make_shards(tmp_path)
  os.remove(tars[1][:-4] + ".parquet")
  monkeypatch.setenv("MODE_JAX_IO_LOG", str(tmp_path / "log"))
  reader = sc.ShardCaptions(tars)
  got, _ = read_all(reader, tars)
  assert not reader.parquet and got == [tuple(w) for w in want]
  assert sorted(reads(tmp_path / "log")) == ["00000.tar", "00001.tar", "00002.tar"]
  with pytest.raises(FileNotFoundError, match="not every shard"):
    sc.ShardCaptions(tars, source="parquet")
  with pytest.raises(ValueError, match="one of"):
    sc.ShardCaptions(tars, source="parquets")


@pytest.mark.parametrize("damage", ["garbage", "no_status"])
def test_an_unusable_parquet_is_passed_over_for_its_tar(tmp_path, caplog, damage):
  tars, want, _ = make_shards(tmp_path)
  bad = tars[2][:-4] + ".parquet"
  if damage == "garbage":
    with open(bad, "wb") as f:
      f.write(b"PAR1 not a parquet file")
  else:
    pq.write_table(pq.read_table(bad).drop_columns(["status"]), bad)
  reader = sc.ShardCaptions(tars)
  with caplog.at_level(logging.WARNING):
    got, _ = read_all(reader, tars)
  assert got == [tuple(w) for w in want]
  assert reader.parquet and reader.fallbacks == 1
  assert f"{bad} is not usable" in caplog.text


def test_cluster_summaries_read_captions_from_parquet(tmp_path, monkeypatch):
  tars, want, _ = make_shards(tmp_path)
  keys, cands = want[1]
  picked = {keys[0], keys[-1]}
  by_tar = cluster_summary.read_shard(tars[1], picked)
  reader = sc.ShardCaptions(tars)
  reader.read(tars[0])   # the check is done: what follows reads parquet and picked images
  monkeypatch.setenv("MODE_JAX_IO_LOG", str(tmp_path / "log"))
  texts, thumbs = cluster_summary.read_shard(tars[1], picked, reader)
  assert texts == by_tar[0] == dict(zip(keys, cands))
  assert sorted(thumbs) == sorted(by_tar[1]) == sorted(picked)
  assert all(np.array_equal(thumbs[k], by_tar[1][k]) for k in picked)
  assert cluster_summary.read_shard(tars[2], set(), reader)[0] == dict(zip(*want[2]))
  assert summary.read_captions(tars[1], set(keys[3:5]), reader) == {
      k: c[0] for k, c in zip(keys[3:5], cands[3:5])}
  # the tar of shard 1 opened once, for the two picked images; shard 2's never
  assert sorted(reads(tmp_path / "log")) == [
      "00001.parquet", "00001.parquet", "00001.tar", "00002.parquet"]
