"""Grain input pipeline: exact pixels, epochs, hosts, resume, bad data, eval order."""

import functools
import json
import os
import re

import numpy as np
import pytest

from mode_jax import constants
from mode_jax.data.io import loader, preprocess, shard_index
from mode_jax.data.io import wds_writer

N, PER_SHARD = 48, 10


def _img(i, h=16, w=16):
  return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _samples():
  for i in range(N):
    s = {"__key__": f"k{i:04d}", "png": _img(i)}
    if i == 5:
      s["png"] = b"corrupt"
      s["txt"] = "5 broken"
    elif i == 9:
      s["json"] = {"texts": ["  "], "label": 1}      # no usable caption
    else:
      s["json"] = {"texts": [f"{i} first", f"{i} second"], "label": i % 4}
    yield s


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = str(tmp_path_factory.mktemp("w"))
  wds_writer.write_shards(os.path.join(w, "shards/train-%05d.tar"), _samples(), PER_SHARD)
  return w


GOOD = [i for i in range(N) if i not in (5, 9)]


def tok(texts):
  """Test tokenizer: [sample number, caption variant]."""
  return np.array([[int(t.split()[0]), t.endswith("second")] for t in texts], np.int32)


def _cfg(**kw):
  c = loader.default_config()
  c.resolution, c.batch_size, c.shards = 16, 6, "shards/train-*.tar"
  c.update(kw)
  return c


def _it(workdir, pi=0, pc=1, **kw):
  return loader.train_iterator(_cfg(**kw), workdir, tok, process_index=pi, process_count=pc)


def _host_normalise(u8):
  """The old host-side preprocessing (OpenAI mean/std), an independent reference."""
  mean = np.array(constants.IMAGE_MEAN, np.float32) * 255
  std = np.array(constants.IMAGE_STD, np.float32) * 255
  return ((u8.astype(np.float32) - mean) / std).astype(np.float32)


def test_pixels_are_decoded_exactly_as_uint8(workdir):
  # scale (1, 1) on a square image: torchvision's RRC falls back to the full image
  it = _it(workdir, rrc_scale=(1.0, 1.0))
  b = next(it)
  assert b["image"].shape == (6, 16, 16, 3) and b["image"].dtype == np.uint8
  assert b["tokens"].dtype == np.int32
  for img, (i, _) in zip(b["image"], b["tokens"]):
    np.testing.assert_array_equal(img, _img(int(i)))


def test_uint8_batch_gives_the_loss_of_host_normalised_floats(workdir):
  import jax.numpy as jnp
  from flax import nnx
  from mode_jax.models import clip as clip_lib
  from mode_jax.train import losses
  from tests.test_models import tiny_config
  b = next(_it(workdir, resolution=32, batch_size=4))
  tokens = jnp.asarray(b["tokens"] % 100)
  model = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(0))
  loss = [losses.softmax_clip_loss(*model(jnp.asarray(x), tokens)[:3])
          for x in (b["image"], _host_normalise(b["image"]))]
  np.testing.assert_allclose(float(loss[0]), float(loss[1]), rtol=1e-5)


class _ClipAndPid:
  """CLIP BPE ids plus the id of the process that ran them (last column)."""

  def __init__(self):
    from mode_jax.text.clip_bpe import ClipTokenizer
    self.tok = functools.partial(ClipTokenizer(), context_length=8)

  def __call__(self, texts):
    ids = self.tok(texts)
    return np.concatenate([ids, np.full((len(ids), 1), os.getpid(), np.int32)], 1)


@pytest.mark.parametrize("workers", [0, 1])
def test_tokenisation_runs_in_the_pipeline(workdir, workers):
  tok = _ClipAndPid()
  it = loader.train_iterator(_cfg(shuffle=False, num_workers=workers), workdir, tok,
                             process_index=0, process_count=1)
  b = next(it)
  it.close()
  for row, i in zip(b["tokens"], [0, 1, 2, 3, 4, 6]):    # 5 is corrupt: replaced by 6
    assert re.fullmatch(rf"<start_of_text>{i} (first|second) <end_of_text>",
                        tok.tok.func.decode([t for t in row[:-1] if t]))
  # with a worker process the BPE runs there, not in the trainer's process
  assert (set(b["tokens"][:, -1]) == {os.getpid()}) == (workers == 0)


def _ids(it, steps):
  return [int(x) for _ in range(steps) for x in next(it)["tokens"][:, 0]]


def test_epochs_cover_all_good_samples_and_reshuffle(workdir):
  e1 = _ids(_it(workdir, batch_size=1), N)
  # each epoch of 48 positions yields the 46 good samples once; the bad ones
  # (5, 9) are replaced by other good samples, so positions stay aligned
  assert set(e1) == set(GOOD) and len(e1) == N
  again = _ids(_it(workdir, batch_size=1), 2 * N)
  assert again[:N] == e1                                       # deterministic
  assert set(again[N:]) == set(GOOD)                           # second epoch complete
  assert again[N:] != again[:N]                                # and reshuffled
  assert _ids(_it(workdir, batch_size=1, seed=1), 10) != e1[:10]


def test_no_shuffle_is_shard_order_with_bad_samples_replaced(workdir):
  got = _ids(_it(workdir, shuffle=False), 4)
  # N // 64 + 1 = 1: a bad sample is replaced by the next position's sample
  want = [i + 1 if i in (5, 9) else i for i in range(24)]
  assert got == want


def test_random_caption_and_crop(workdir):
  it = _it(workdir, batch_size=46)
  variants = np.concatenate([next(it)["tokens"][:, 1] for _ in range(3)])
  assert 0.3 < variants.mean() < 0.7        # both captions are picked
  # RRC at scale 0.9-1.0 changes pixels but keeps the image recognisable
  b = next(_it(workdir, batch_size=6))
  diffs = [np.abs(img.astype(int) - _img(int(i))).mean() for img, (i, _) in
           zip(b["image"], b["tokens"])]
  assert max(diffs) > 0.5


def test_hosts_hold_contiguous_blocks_of_the_one_host_stream(workdir):
  one = _it(workdir, 0, 1, batch_size=6)
  hosts = [_it(workdir, p, 2, batch_size=6) for p in range(2)]   # 3 rows per host and step
  for _ in range(10):
    want = next(one)
    got = [next(h) for h in hosts]
    for key in ("tokens", "image"):   # same samples, same captions, same crops, same layout
      np.testing.assert_array_equal(want[key], np.concatenate([g[key] for g in got]))
  # an epoch over both hosts: each good sample once, hosts disjoint within it
  a, b = (_ids(_it(workdir, p, 2, batch_size=2), N // 2) for p in range(2))
  assert set(a) | set(b) == set(GOOD) and len(a) + len(b) == N
  with pytest.raises(ValueError, match="divisible"):
    _it(workdir, 0, 4, batch_size=6)


def test_augmentation_draws_differ_across_hosts(tmp_path):
  """Regression: draws were seeded by each host's own element counter, so at every step
  all hosts drew the same crop box and the same caption choice."""
  w = str(tmp_path)
  wds_writer.write_shards(os.path.join(w, "shards/train-%05d.tar"), (
      {"__key__": f"k{i:04d}", "png": _img(i), "json": {"texts": [f"{i} first", f"{i} second"]}}
      for i in range(40)), 10)
  hosts = [_it(w, p, 2, batch_size=2) for p in range(2)]
  variants = [[int(next(h)["tokens"][0, 1]) for _ in range(20)] for h in hosts]
  assert variants[0] != variants[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_same_stream(workdir, workers):
  it = _it(workdir, num_workers=workers)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state["position"] == 18
  want = [next(it) for _ in range(4)]
  it.close()
  # the same stream with the other worker count, and on two hosts
  for resumed in ([_it(workdir, num_workers=1 - min(workers, 1))],
                  [_it(workdir, p, 2, num_workers=workers) for p in range(2)]):
    for r in resumed:
      r.set_state(state)
    for w in want:
      got = [next(r) for r in resumed]
      for key in ("tokens", "image"):
        np.testing.assert_array_equal(w[key], np.concatenate([g[key] for g in got]))
    for r in resumed:
      r.close()
  other = _it(workdir, seed=3)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


def test_expert_indices_restrict_the_stream(workdir):
  cfg = _cfg(batch_size=4)
  it = loader.train_iterator(cfg, workdir, tok, indices=np.array([0, 1, 2, 3, 5, 7, 11, 12]),
                             process_index=0, process_count=1)
  got = np.concatenate([next(it)["tokens"][:, 0] for _ in range(7)])
  assert set(got) == {0, 1, 2, 3, 7, 11, 12}


def test_index_is_cached_and_rebuilt_when_a_shard_changes(workdir, monkeypatch):
  cfg = _cfg()
  idx = loader.load_index(cfg, workdir)
  assert len(idx) == N and idx.key(13) == "k0013"
  calls = []
  real = shard_index.scan_shard
  monkeypatch.setattr(shard_index, "scan_shard", lambda p: calls.append(p) or real(p))
  loader.load_index(cfg, workdir)
  assert calls == []
  shard = idx.shards[0]
  os.utime(shard, ns=(1, 1))
  idx2 = loader.load_index(cfg, workdir)
  assert calls == [shard] and len(idx2) == N


def test_eval_batches_center_crop_in_order(tmp_path):
  w = str(tmp_path)
  wide = [_img(i, 16, 24) for i in range(7)]
  wds_writer.write_shards(os.path.join(w, "shards/eval/t-%05d.tar"),
                          ({"__key__": f"e{i}", "png": wide[i], "json": {"caption": f"c{i}",
                                                                         "label": i}}
                           for i in range(7)), 3)
  cfg = _cfg()
  out = list(loader.eval_batches(cfg, w, "shards/eval/t-*.tar", batch_size=4))
  assert [len(b["key"]) for b in out] == [4, 4]          # fixed shape, the last row padding
  valid = np.concatenate([b["valid"] for b in out])
  assert valid.tolist() == [True] * 7 + [False]
  assert np.concatenate([b["index"] for b in out]).tolist() == list(range(7)) + [-1]
  assert np.concatenate([b["label"] for b in out])[valid].tolist() == list(range(7))
  assert np.concatenate([b["key"] for b in out])[valid].tolist() == [f"e{i}" for i in range(7)]
  # two hosts: each its block of every global batch of 4, together the whole set
  halves = [list(loader.eval_batches(cfg, w, "shards/eval/t-*.tar", batch_size=4,
                                     process_index=p, process_count=2)) for p in range(2)]
  assert [len(b["key"]) for b in halves[0]] == [2, 2]
  got = sorted(int(i) for h in halves for b in h for i in b["index"] if i >= 0)
  assert got == list(range(7))
  assert halves[1][0]["index"].tolist() == [2, 3] and halves[1][1]["index"].tolist() == [6, -1]
  img = out[0]["image"][2]          # short side already 16: crop columns 4..20
  assert img.dtype == np.uint8
  np.testing.assert_array_equal(img, wide[2][:, 4:20])


def test_eval_batches_keep_labelled_samples_without_captions(tmp_path):
  """A classification set's samples carry a label and no caption (json label or a
  CLIP_benchmark .cls member); regression: they were dropped -> "no image batches"."""
  w = str(tmp_path)
  samples = [{"__key__": "a0", "png": _img(0), "json": {"label": 3}},
             {"__key__": "a1", "png": _img(1), "cls": "7"},
             {"__key__": "a2", "png": _img(2), "cls": "1", "txt": "with a caption"}]
  wds_writer.write_shards(os.path.join(w, "shards/eval/z-%05d.tar"), iter(samples), 10)
  out = list(loader.eval_batches(_cfg(), w, "shards/eval/z-*.tar", batch_size=4))
  valid = out[0]["valid"]
  assert valid.tolist() == [True, True, True, False]
  assert out[0]["label"][:3].tolist() == [3, 7, 1]
  assert out[0]["text"][:3].tolist() == ["", "", "with a caption"]
  # training still needs a caption: only a2 is a pair
  seen = []
  it = loader.train_iterator(_cfg(shards="shards/eval/z-*.tar", batch_size=2, shuffle=False),
                             w, lambda t: seen.extend(t) or np.zeros((len(t), 2), np.int32),
                             process_index=0, process_count=1)
  next(it)
  it.close()
  assert set(seen) == {"with a caption"}   # a2 substitutes for a0 and a1


def test_rrc_box_follows_torchvision_rules():
  rng = np.random.default_rng(0)
  for _ in range(500):
    h = int(rng.integers(50, 200))
    w = int(h * rng.uniform(0.76, 1.3))    # aspect in range: the fallback is the full image
    top, left, ch, cw = preprocess.rrc_box(h, w, rng)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    assert 0.9 * 0.97 < ch * cw / (h * w) <= 1.0     # scale 0.9-1.0, up to rounding
    assert 3 / 4 * 0.95 < cw / ch < 4 / 3 * 1.05 or (ch, cw) == (h, w)
  # an extreme aspect ratio never fits: central crop clamped to ratio 4/3
  assert preprocess.rrc_box(10, 100, np.random.default_rng(0)) == (0, 43, 10, 13)


def test_resize_center_crop_follows_torchvision_rule():
  img = _img(3, 30, 45)
  out = preprocess.resize_center_crop(img, 20)
  assert out.shape == (20, 20, 3)
  # torchvision's long-side rule: int(20 * 45 / 30) = 30; crop offset round((30-20)/2) = 5
  from PIL import Image
  ref = np.asarray(Image.fromarray(img).resize((30, 20), Image.BICUBIC))[:, 5:25]
  np.testing.assert_array_equal(out, ref)


def test_index_is_rebuilt_when_a_shard_is_rewritten_with_its_size_and_mtime(tmp_path,
                                                                             monkeypatch):
  """A shard rewritten in place with the same size and its old mtime restored (rsync -t,
  a restored backup) is re-indexed: the old byte offsets would point into other samples."""
  w = str(tmp_path)
  wds_writer.write_shards(os.path.join(w, "shards/train-%05d.tar"), _samples(), N)
  cfg = _cfg()
  shard = loader.load_index(cfg, w).shards[0]
  st = os.stat(shard)
  data = open(shard, "rb").read()
  os.remove(shard)                       # another file, same bytes, same size and times
  with open(shard, "wb") as f:
    f.write(data)
  os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
  calls = []
  real = shard_index.scan_shard
  monkeypatch.setattr(shard_index, "scan_shard", lambda p: calls.append(p) or real(p))
  loader.load_index(cfg, w)
  assert calls == [shard]
