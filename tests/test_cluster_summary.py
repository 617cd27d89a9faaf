"""report/clusters.{md,png} on a tiny workdir: shards from wds_writer, planted assign/ files."""

import math
import os

import numpy as np
import pytest

from mode_jax import workdir as wd
from mode_jax.data.io import wds_writer
from mode_jax.data.io import webdataset as wds
from mode_jax.eval import cluster_summary as cs

# (expert, captions): expert 0 is about red dogs, expert 1 about blue cars; "photo" is as
# common in both (lift 1: left out); expert 2 has no samples.
SAMPLES = ([(0, ["A red dog on the grass", "red DOG, running"])]
           + [(0, ["a red dog on the grass"])] * 2 + [(0, ["a red cat"])]
           + [(0, ["Photo of a dog"])] * 2
           + [(1, ["a blue car on the road"])] * 3 + [(1, ["blue truck"])]
           + [(1, ["photo of a car"])] * 2)
COLOURS = {0: (255, 0, 0), 1: (0, 0, 255)}


def make_workdir(w, shard_dir="data"):
  """Two shards (7 + 5 samples) under w/<shard_dir>, a third without assign/ output, and
  config.json naming them as config.input.shards."""
  keys = [f"s{i:03d}" for i in range(len(SAMPLES))]
  samples = [{"__key__": k, "json": {"texts": texts},
              "png": np.full((12, 20, 3), COLOURS[e], np.uint8)}
             for k, (e, texts) in zip(keys, SAMPLES)]
  expert = np.array([e for e, _ in SAMPLES], np.int32)
  for i, (lo, hi) in enumerate([(0, 7), (7, 12)]):
    wds_writer.write_shard(f"{w}/{shard_dir}/train-{i:05d}.tar", samples[lo:hi])
    wd.save_npz(f"{w}/assign/train-{i:05d}.npz", keys=np.asarray(keys[lo:hi]),
                fine=2 * expert[lo:hi], expert=expert[lo:hi],
                cluster_fingerprint=np.asarray("abc"))
  wds_writer.write_shard(f"{w}/{shard_dir}/train-00002.tar", samples[:1])
  wd.write_json(f"{w}/config.json", {"input": {"shards": f"{shard_dir}/train-*.tar"}})
  return dict(zip(keys, expert))


def test_top_words_images_and_files(tmp_path, monkeypatch):
  w = str(tmp_path)
  expert_of = make_workdir(w)
  decoded = []
  real = wds.decode_image
  monkeypatch.setattr(wds, "decode_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
  out = cs.run(w, f"{w}/report", n=3, words=5, images=4, seed=0)
  rows = out["rows"]
  assert [r["n_samples"] for r in rows] == [6, 6, 0]
  # by hand: N = 12, N_0 = 6; dog in 5 of expert 0's samples and 5 overall, red 4/4, grass
  # 3/3, cat and running 1/1 (a tie, alphabetical); photo 2 of 6 vs 4 of 12: lift 1
  assert [x for x, _ in rows[0]["words"]] == ["dog", "red", "grass", "cat", "running"]
  assert [x for x, _ in rows[1]["words"]] == ["car", "blue", "road", "truck"]
  assert rows[0]["words"][0][1] == pytest.approx(5 / 6 * math.log(2))
  assert rows[2]["words"] == [] and rows[2]["images"] == []
  # a seeded pick of 4 images per expert, of that expert, and only those decoded
  assert len(decoded) == 8
  for c in (0, 1):
    assert len(set(rows[c]["images"])) == 4
    assert all(expert_of[k] == c for k in rows[c]["images"])
  again = cs.run(w, f"{w}/report", n=3, words=5, images=4, seed=0)
  assert [r["images"] for r in again["rows"]] == [r["images"] for r in rows]
  other = cs.run(w, f"{w}/report", n=3, words=5, images=4, seed=1)
  assert [r["images"] for r in other["rows"]] != [r["images"] for r in rows]

  md = open(f"{w}/report/clusters.md").read()
  assert "| 0 | 6 | 0.500 | dog, red, grass, cat, running |" in md
  assert "| 2 | 0 | 0.000 | - |" in md and "Read all 2 assigned training shards" in md
  with open(f"{w}/report/clusters.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "[clusters.png](clusters.png)" in cs.links(out)


def test_thinned_shards_and_no_images(tmp_path):
  w = str(tmp_path)
  make_workdir(w)
  os.makedirs(f"{w}/report")
  out = cs.run(w, f"{w}/report", n=3, words=3, images=0, max_shards=1)
  assert out["shards"] == 1 and out["png"] is None
  assert [r["n_samples"] for r in out["rows"]] == [6, 1, 0]   # train-00000 only
  assert "Read 1 of 2 assigned training shards" in open(f"{w}/report/clusters.md").read()
  assert not os.path.exists(f"{w}/report/clusters.png")
  assert "clusters.png" not in cs.links(out)
  # assign files of another clustering are stale: left out
  wd.write_json(f"{w}/cluster/meta.json", {"fingerprint": "new"})
  assert cs.run(w, f"{w}/report", n=3, images=0) is None
  z = wd.load_npz(f"{w}/assign/train-00001.npz")
  wd.save_npz(f"{w}/assign/train-00001.npz", **{**z, "cluster_fingerprint": np.asarray("new")})
  assert [r["n_samples"] for r in cs.run(w, f"{w}/report", n=3, images=0)["rows"]] == [0, 5, 0]
  assert "Read 1 of 2 assigned training shards (1 of another clustering left out)." in open(
      f"{w}/report/clusters.md").read()


def test_skipped_without_assign_or_shards(tmp_path):
  w = str(tmp_path)
  assert cs.run(w, f"{w}/report", n=2) is None              # no assign/
  make_workdir(w, shard_dir="elsewhere")
  os.remove(f"{w}/config.json")                              # default: shards/train-*.tar
  assert cs.run(w, f"{w}/report", n=2) is None
  assert not os.path.exists(f"{w}/report")


def test_caption_words():
  assert cs.caption_words(["A Dog's bone, 2 dogs!", "the DOG"]) == {"dog", "bone", "dogs"}
