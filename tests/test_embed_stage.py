"""The embed stage on tiny tar shards: alignment, caption pick, resume, bad shards."""

import io
import json
import os
import tarfile

import jax
import ml_collections
import numpy as np
import pytest

from mode_jax import workdir as wd
from mode_jax.stages import embed as embed_stage
from mode_jax.text import captions, encoders, random_bert, sentence_encoder

WORDS = "a photo of the red blue green cat dog car truck house tree icon".split()


def write_tiny_bert(folder, seed=0):
  """A random 2-layer BERT in Hugging Face layout (config.json, safetensors, tokenizer.json)."""
  return random_bert.write_random_bert(str(folder), WORDS, seed=seed)


def write_shard(path, samples):
  """samples: (key, {ext: bytes}) in order."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w") as tf:
    for key, members in samples:
      for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def js(obj):
  return json.dumps(obj).encode()


PNG = b"\x89PNG fake image bytes" * 10


def make_workdir(root):
  rng = np.random.default_rng(0)
  caption = lambda: " ".join(rng.choice(WORDS, size=rng.integers(2, 9)))
  shard0 = [(f"s0_{i:03d}", {"png": PNG, "json": js({"texts": [caption() for _ in range(3)]})})
            for i in range(12)]
  shard0.insert(3, ("s0_nocap", {"png": PNG, "json": js({"texts": ["  ", ""]})}))
  shard0.insert(5, ("s0_noimg", {"json": js({"caption": "a cat"})}))
  shard1 = [(f"s1_{i:03d}", {"png": PNG, "txt": caption().encode()}) for i in range(5)]
  shard1.append(("s1_cap", {"jpg": PNG, "json": js({"caption": "the red truck", "label": 3})}))
  write_shard(os.path.join(root, "shards", "train-00000.tar"), shard0)
  write_shard(os.path.join(root, "shards", "train-00001.tar"), shard1)
  return {k: m for k, m in shard0 + shard1}


def run_embed(cfg, workdir, shards=None, caption_keys=None):
  """The embed stage on a config with this embed section (and training shards)."""
  c = {"embed": dict(cfg)}
  if shards is not None or caption_keys is not None:
    c["input"] = {"shards": shards or wd.TRAIN_SHARDS}
  if caption_keys is not None:
    c["input"]["caption_keys"] = caption_keys
  return embed_stage.run(ml_collections.ConfigDict(c), workdir)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def cfg_for(model, **kw):
  c = encoders.default_config()
  c.encoder, c.batch_size = model, 8
  c.update(kw)
  return c


def test_alignment_pick_and_meta(tmp_path, tiny_model):
  samples = make_workdir(str(tmp_path))
  stats = run_embed(cfg_for(tiny_model, dtype="float32"), str(tmp_path))
  assert stats["samples"] == 18 and stats["no_caption"] == 1 and stats["no_image"] == 1
  meta = wd.read_json(str(tmp_path / "embed" / "meta.json"))
  assert meta["encoder"] == tiny_model and meta["dim"] == 32 and meta["dtype"] == "float32"
  assert len(meta["fingerprint"]) == 16

  enc = sentence_encoder.SentenceEncoder(tiny_model)
  for stem, n in (("train-00000", 12), ("train-00001", 6)):
    with np.load(tmp_path / "embed" / f"{stem}.npz") as z:
      keys, emb = list(z["keys"]), z["emb"]
    assert len(keys) == n and emb.shape == (n, 32) and emb.dtype == np.float32
    assert keys == sorted(keys) and "s0_nocap" not in keys and "s0_noimg" not in keys
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    for key, row in zip(keys, emb):
      m = samples[key]
      cands = (json.loads(m["json"]).get("texts") or [json.loads(m["json"])["caption"]]
               if "json" in m else [m["txt"].decode()])
      want = enc.encode(cands)
      sims = want @ row
      # The row is exactly one candidate's embedding: the one the seeded hash picks.
      assert sims.max() > 1 - 1e-5
      assert cands[int(np.argmax(sims))] == captions.pick_caption(cands, key, 0)


def test_pick_is_seeded_and_varied():
  texts = ["one", "two", "three"]
  picks = [captions.pick_caption(texts, f"k{i}", 0) for i in range(60)]
  assert picks == [captions.pick_caption(texts, f"k{i}", 0) for i in range(60)]
  assert set(picks) == set(texts)                          # not always the first one
  other = [captions.pick_caption(texts, f"k{i}", 1) for i in range(60)]
  assert other != picks
  counts = np.bincount([texts.index(p) for p in picks])
  assert counts.min() >= 8                                 # roughly uniform


class FakeEncoder:
  """Deterministic 'embedding': normalised letter counts. Counts calls."""
  dim = 26
  calls = 0

  encoded = 0

  def encode(self, texts, batch_size=256, progress=False):
    FakeEncoder.calls += 1
    FakeEncoder.encoded += len(texts)
    out = np.zeros((len(texts), 26), np.float32) + 1e-3
    for i, t in enumerate(texts):
      for ch in t:
        if "a" <= ch <= "z":
          out[i, ord(ch) - 97] += 1
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def fake(monkeypatch):
  monkeypatch.setitem(encoders._ENCODERS, "fake", lambda cfg: FakeEncoder())
  FakeEncoder.calls = FakeEncoder.encoded = 0
  return cfg_for("fake")


def test_registry_resume_and_fingerprint(tmp_path, fake):
  make_workdir(str(tmp_path))
  stats = run_embed(fake, str(tmp_path))
  assert stats["skipped_done"] == 0 and FakeEncoder.calls == 2
  with np.load(tmp_path / "embed" / "train-00001.npz") as z:
    assert z["emb"].dtype == np.float16 and list(z["keys"])[-1] == "s1_cap"
    first = z["emb"].copy()
  assert wd.read_json(str(tmp_path / "embed" / "meta.json"))["dim"] == 26

  stats = run_embed(fake, str(tmp_path))          # all done: nothing recomputed
  assert stats["skipped_done"] == 2 and FakeEncoder.calls == 2
  os.remove(tmp_path / "embed" / "train-00001.npz")
  stats = run_embed(fake, str(tmp_path))          # only the missing shard
  assert stats["skipped_done"] == 1 and FakeEncoder.calls == 3
  with np.load(tmp_path / "embed" / "train-00001.npz") as z:
    np.testing.assert_array_equal(z["emb"], first)
  assert not [f for f in os.listdir(tmp_path / "embed") if f.endswith(".tmp")]



def test_changed_bytes_or_config_reembed_exactly_what_they_touch(tmp_path, fake, capsys):
  """Provenance: a shard rewritten with other bytes is embedded again, the others are kept; a
  shard gone from the data has its file moved to stale/; another config embeds all again."""
  w = str(tmp_path)
  make_workdir(w)
  run_embed(fake, w)
  capsys.readouterr()
  assert FakeEncoder.calls == 2 and wd.read_json(f"{w}/embed/manifest.json")["state"] == "done"
  kept = os.path.getmtime(tmp_path / "embed" / "train-00000.npz")
  write_shard(os.path.join(w, "shards", "train-00001.tar"),
              [("n_000", {"png": PNG, "txt": b"a brand new caption"})])
  stats = run_embed(fake, w)
  assert stats["skipped_done"] == 1 and FakeEncoder.calls == 3
  assert os.path.getmtime(tmp_path / "embed" / "train-00000.npz") == kept
  with np.load(tmp_path / "embed" / "train-00001.npz") as z:
    assert list(z["keys"]) == ["n_000"]
  assert "embed: training captions changed; embedding" in capsys.readouterr().out
  os.remove(os.path.join(w, "shards", "train-00001.tar"))
  run_embed(fake, w)
  assert not os.path.exists(tmp_path / "embed" / "train-00001.npz")
  assert [f for f in os.listdir(tmp_path / "stale") if f.startswith("embed__train-00001.npz")]
  assert wd.read_json(f"{w}/embed/manifest.json")["facts"]["files"] == ["train-00000.npz"]
  capsys.readouterr()
  fake.seed = 1                                                # another config: all again
  stats = run_embed(fake, w)
  assert stats["skipped_done"] == 0 and FakeEncoder.calls == 4
  assert "embed: config changed (embed.seed 0 -> 1)" in capsys.readouterr().out


def test_captions_come_from_the_caption_keys_training_reads(tmp_path, fake, capsys):
  """config.input.caption_keys picks where training reads captions; embed clusters the same
  captions (it read the fixed default order whatever the config said) and re-embeds when
  the keys change."""
  w = str(tmp_path)
  write_shard(os.path.join(w, "shards", "train-00000.tar"), [
      (f"k{i}", {"png": PNG, "txt": f"cat {i}".encode(), "json": js({"caption": f"dog {i}"})})
      for i in range(4)])
  run_embed(fake, w)
  with np.load(tmp_path / "embed" / "train-00000.npz") as z:
    default = z["emb"].copy()
  assert FakeEncoder.encoded == 4
  run_embed(fake, w, caption_keys="txt")
  assert "config changed (input.caption_keys" in capsys.readouterr().out
  with np.load(tmp_path / "embed" / "train-00000.npz") as z:
    np.testing.assert_allclose(z["emb"], FakeEncoder().encode([f"cat {i}" for i in range(4)]),
                               atol=1e-3)
    assert not np.allclose(z["emb"], default, atol=1e-3)   # the default: "caption" first


def test_missing_shards_and_bad_config(tmp_path, fake):
  with pytest.raises(wd.MissingInput) as e:
    run_embed(fake, str(tmp_path))
  assert e.value.stage == "prepare"
  make_workdir(str(tmp_path))
  with pytest.raises(ValueError, match="unknown config field"):
    run_embed({"encodr": "fake"}, str(tmp_path))
  with pytest.raises(ValueError, match="neither a registered encoder"):
    run_embed(cfg_for("no-such-encoder"), str(tmp_path))


def test_multi_host_split(tmp_path, fake, monkeypatch):
  make_workdir(str(tmp_path))
  from mode_jax import distributed
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(distributed, "barrier", lambda name: None)   # no peer process here
  stats = run_embed(fake, str(tmp_path))
  assert stats["shards"] == 1
  assert sorted(os.listdir(tmp_path / "embed")) == ["hosts", "train-00001.npz"]  # meta: proc 0
  host = wd.read_json(str(tmp_path / "embed" / "hosts" / "process-1-of-2.json"))
  assert host["read"] == ["train-00001"] and host["samples"] == stats["samples"]


@pytest.mark.parametrize("cut", ["in_data", "in_header", "at_boundary"])
def test_truncated_shard(tmp_path, fake, cut):
  make_workdir(str(tmp_path))
  p = tmp_path / "shards" / "train-00000.tar"
  raw = p.read_bytes()
  with tarfile.open(p) as tf:
    at = tf.getmember("s0_006.png").offset      # header of the 7th good sample
  n = {"in_data": at + 600, "in_header": at + 100, "at_boundary": at}[cut]
  p.write_bytes(raw[:n])
  stats = run_embed(fake, str(tmp_path))
  # The sample being read at the cut is dropped: s0_006 (cut in its image) or
  # s0_005 (which may have had more members after the cut).
  kept = 6 if cut == "in_data" else 5
  assert stats["truncated_shards"] == 1 and stats["samples"] == kept + 6
  with np.load(tmp_path / "embed" / "train-00000.npz") as z:
    assert list(z["keys"]) == [f"s0_{i:03d}" for i in range(kept)]
  p.write_bytes(b"not a tar at all")
  os.remove(tmp_path / "embed" / "train-00000.npz")
  stats = run_embed(fake, str(tmp_path))
  assert stats["truncated_shards"] == 1
  with np.load(tmp_path / "embed" / "train-00000.npz") as z:
    assert len(z["keys"]) == 0


def test_candidate_captions_rules():
  """The embed stage sees the training reader's caption candidates."""
  from mode_jax.data.io import webdataset as wds
  texts = lambda j, t: wds.parse_texts({"json": j, "txt": t})[0]
  assert texts(js({"texts": [" a ", "b", "a"], "caption": "c"}), b"d\n") == ["a", "b", "c", "d"]
  assert texts(js({"texts": "solo"}), None) == ["solo"]
  assert texts(b"{broken", b"txt") == ["txt"]
  assert texts(js([1, 2]), None) == []
  assert wds.split_name("dir/abc.seg.png") == ("dir/abc", "seg.png")
  assert wds.split_name("abc.JPG") == ("abc", "jpg")


def test_repeated_captions_are_encoded_once(tmp_path, fake):
  """Templated and web captions repeat: distinct strings are encoded once, rows still aligned."""
  texts = ["a photo of a cat", "a photo of a dog", "a photo of a cat"] * 4
  for s in range(2):
    write_shard(str(tmp_path / "shards" / f"train-0000{s}.tar"),
                [(f"s{s}_{i:02d}", {"png": PNG, "json": js({"caption": t})})
                 for i, t in enumerate(texts)])
  run_embed(fake, str(tmp_path))
  assert FakeEncoder.encoded == 2                     # two distinct captions in 24 samples
  ref = FakeEncoder().encode(texts)
  for s in range(2):
    with np.load(tmp_path / "embed" / f"train-0000{s}.npz") as z:
      np.testing.assert_allclose(z["emb"].astype(np.float32), ref, atol=1e-3)


def test_captions_past_the_cache_size_are_still_embedded(tmp_path, fake):
  """Regression: once cache_size captions were cached, new captions got None and
  np.stack failed (with web captions around the 20th shard)."""
  make_workdir(str(tmp_path))
  small = cfg_for("fake", cache_size=3, dtype="float32")
  stats = run_embed(small, str(tmp_path))
  assert stats["samples"] == 18
  full = tmp_path / "full"
  make_workdir(str(full))
  run_embed(cfg_for("fake", dtype="float32"), str(full))
  for stem in ("train-00000", "train-00001"):
    a, b = (wd.load_npz(str(d / "embed" / f"{stem}.npz")) for d in (tmp_path, full))
    assert list(a["keys"]) == list(b["keys"])
    np.testing.assert_array_equal(a["emb"], b["emb"])
