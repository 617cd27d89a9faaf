"""cluster and assign stages on a tiny synthetic workdir: outputs, skip/resume, MissingInput."""

import io
import json
import os
import tarfile

import numpy as np
import pytest

import clustering
import ml_collections

from clustering import embed_files, kmeans
from mode_jax.stages import assign as assign_stage
from mode_jax.stages import cluster as cluster_stage
from mode_jax import provenance
from mode_jax import workdir as wd


def _write_embed(root, n_files=3, rows=400, d=16, seed=0, shards=True):
  rng = np.random.default_rng(seed)
  topics = 8.0 * np.eye(6, d)
  names = ["apple", "boat", "cloud", "dog", "engine", "flower"]
  os.makedirs(os.path.join(root, "embed"), exist_ok=True)
  for f in range(n_files):
    stem = f"train-{f:05d}"
    t = rng.integers(0, 6, rows)
    emb = kmeans.normalize(topics[t] + rng.normal(0, 1.0, (rows, d))).astype(np.float16)
    keys = np.array([f"{stem}-{i:06d}" for i in range(rows)])
    np.savez(os.path.join(root, "embed", stem + ".npz"), keys=keys, emb=emb)
    if shards:
      os.makedirs(os.path.join(root, "shards"), exist_ok=True)
      with tarfile.open(os.path.join(root, "shards", stem + ".tar"), "w") as tar:
        for i, k in enumerate(keys):
          png = tarfile.TarInfo(k + ".png")   # pairs have an image (never decoded here)
          png.size = 8
          tar.addfile(png, io.BytesIO(b"\x89PNG\r\n\x1a\n"))
          if i % 2:
            name, raw = k + ".json", json.dumps({"texts": [f"a {names[t[i]]} {i}"]}).encode()
          else:
            name, raw = k + ".txt", f"a {names[t[i]]} {i}".encode()
          info = tarfile.TarInfo(name)
          info.size = len(raw)
          tar.addfile(info, io.BytesIO(raw))
  wd.write_json(os.path.join(root, "embed", "meta.json"),
                {"encoder": "synthetic", "dim": d, "dtype": "float16", "fingerprint": "e1"})
  # The embed stage's manifest: what these files are made from, and their order.
  wd.write_json(os.path.join(root, "embed", provenance.MANIFEST),
                {"stage": "embed", "fingerprint": f"synthetic-{seed}-{n_files}", "state": "done",
                 "facts": {"files": [f"train-{f:05d}.npz" for f in range(n_files)]}})


def _cfg(**kw):
  c = clustering.default_config()
  c.update(dict(m=12, n=3, iters_per_file=10, coarse_iters=20, chunk_size=128,
                min_chunk_rows=0, **kw))
  return c


def _config(cluster, shards=None):
  """A whole config as the stages take it: the cluster section (and training shards)."""
  c = {"cluster": dict(cluster)}
  if shards:
    c["input"] = {"shards": shards}
  return ml_collections.ConfigDict(c)


def test_missing_embed_raises_missing_input(tmp_path):
  with pytest.raises(wd.MissingInput) as e:
    cluster_stage.run(_config(_cfg()), str(tmp_path))
  assert e.value.stage == "embed"
  with pytest.raises(wd.MissingInput) as e:
    assign_stage.run(_config(_cfg()), str(tmp_path))
  assert e.value.stage == "cluster"


def test_unknown_config_field_is_an_error(tmp_path):
  c = _cfg().to_dict()
  c["bogus"] = 1
  with pytest.raises(ValueError, match="bogus"):
    cluster_stage.run(_config(c), str(tmp_path))


def test_cluster_then_assign_end_to_end(tmp_path, capsys):
  root = str(tmp_path)
  _write_embed(root)
  h = cluster_stage.run(_config(_cfg()), root)
  for name in ("fine_centers.npy", "coarse_centers.npy", "fine_to_expert.npy",
               "expert_order.json", "meta.json"):
    assert os.path.exists(os.path.join(root, "cluster", name))
  fine = np.load(os.path.join(root, "cluster", "fine_centers.npy"))
  assert fine.shape == (12, 16) and fine.dtype == np.float32
  meta = wd.read_json(os.path.join(root, "cluster", "meta.json"))
  assert (meta["m"], meta["n"], meta["metric"], meta["encoder"]) == (12, 3, "euclidean",
                                                                    "synthetic")
  assert sorted(wd.read_json(os.path.join(root, "cluster", "expert_order.json"))) == [0, 1, 2]
  assert (np.bincount(h.fine_to_expert, minlength=3) > 0).all()

  # second run with the same inputs and config: skipped, files untouched
  mtime = os.stat(os.path.join(root, "cluster", "fine_centers.npy")).st_mtime_ns
  cluster_stage.run(_config(_cfg()), root)
  assert "skipping" in capsys.readouterr().out
  assert os.stat(os.path.join(root, "cluster", "fine_centers.npy")).st_mtime_ns == mtime

  report = assign_stage.run(_config(_cfg()), root)
  for f in range(3):
    with np.load(os.path.join(root, "assign", f"train-{f:05d}.npz")) as z:
      with np.load(os.path.join(root, "embed", f"train-{f:05d}.npz")) as e:
        np.testing.assert_array_equal(z["keys"], e["keys"])
        emb = e["emb"].astype(np.float32)
      assert z["fine"].dtype == np.int32 and z["expert"].dtype == np.int32
      d = ((emb[:, None] - fine[None]) ** 2).sum(-1)
      np.testing.assert_array_equal(z["fine"], d.argmin(1))
      np.testing.assert_array_equal(z["expert"], h.fine_to_expert[z["fine"]])
  assert report["n_points"] == 1200
  np.testing.assert_allclose(sum(report["shares"]), 1.0)
  summ = os.path.join(root, "cluster", "summary")
  for name in ("sizes.png", "experts.json", "experts.md", "captions.md"):
    assert os.path.exists(os.path.join(summ, name)), name
  caps = open(os.path.join(summ, "captions.md")).read()
  assert "## Expert" in caps and "## Fine cluster" in caps and "(caption not found)" not in caps
  assert caps.count("\n- a ") >= 3 * 10   # ten real captions per expert at least

  # resume: existing assignments are kept, a deleted one is rebuilt
  os.remove(os.path.join(root, "assign", "train-00001.npz"))
  keep = os.stat(os.path.join(root, "assign", "train-00000.npz")).st_mtime_ns
  assign_stage.run(_config(_cfg()), root)
  assert os.path.exists(os.path.join(root, "assign", "train-00001.npz"))
  assert os.stat(os.path.join(root, "assign", "train-00000.npz")).st_mtime_ns == keep


def test_changed_config_refits_and_no_shards_means_no_captions(tmp_path):
  root = str(tmp_path)
  _write_embed(root, n_files=2, shards=False)
  cluster_stage.run(_config(_cfg()), root)
  fp1 = wd.read_json(os.path.join(root, "cluster", "meta.json"))["fingerprint"]
  cluster_stage.run(_config(_cfg(seed=1, metric="cosine")), root)
  meta = wd.read_json(os.path.join(root, "cluster", "meta.json"))
  assert meta["fingerprint"] != fp1 and meta["metric"] == "cosine"
  report = assign_stage.run(_config(_cfg()), root)
  assert report["captions"] is False
  assert os.path.exists(os.path.join(root, "cluster", "summary", "experts.md"))
  assert not os.path.exists(os.path.join(root, "cluster", "summary", "captions.md"))


def test_read_rows_reads_a_row_block_of_an_embed_file(tmp_path):
  """The cluster stage's ranged read equals slicing the whole array (stored npz members)."""
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((37, 5)).astype(np.float16)
  f = str(tmp_path / "train-00000.npz")
  wd.save_npz(f, keys=np.asarray([f"k{i}" for i in range(37)]), emb=emb)
  for lo, hi in ((0, 37), (0, 1), (5, 19), (36, 37), (10, 10)):
    np.testing.assert_array_equal(embed_files.read_rows(f, lo, hi), emb[lo:hi])
  # A compressed member (not what wd.save_npz writes) falls back to a full read.
  g = str(tmp_path / "train-00001.npz")
  np.savez_compressed(g, keys=np.asarray(["a"] * 37), emb=emb)
  np.testing.assert_array_equal(embed_files.read_rows(g, 3, 30), emb[3:30])


def test_each_host_reads_its_block_of_every_chunk(tmp_path, monkeypatch):
  """Host blocks of a chunk are disjoint, cover its rows once, and concatenate in order."""
  from mode_jax import distributed
  rows = np.asarray([7, 0, 12, 5])
  files = []
  for i, n in enumerate(rows):
    files.append(str(tmp_path / f"train-{i:05d}.npz"))
    wd.save_npz(files[-1], keys=np.asarray([str(j) for j in range(n)]),
                emb=np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * i)
  whole = np.concatenate([wd.load_npz(f)["emb"] for f in files])
  for count in (1, 2, 3, 5):
    blocks, covered = [], []
    for p in range(count):
      monkeypatch.setattr(distributed, "process_index", lambda p=p: p)
      monkeypatch.setattr(distributed, "process_count", lambda c=count: c)
      x, read = embed_files.host_block(files, rows, 2, "float32")
      blocks.append(x)
      covered += [(name, a, b) for name, a, b in read]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    per_file = {}
    for name, a, b in covered:
      per_file.setdefault(name, []).append((a, b))
    for name, spans in per_file.items():
      spans.sort()
      assert spans[0][0] == 0 and all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
