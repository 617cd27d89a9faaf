"""Grain input pipeline: exact pixels, epochs, hosts, resume, bad data, eval order."""

import json
import os

import numpy as np
import pytest

from mode_jax import constants
from mode_jax.data import loader, preprocess, shard_index
from mode_jax.data import wds_writer

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


def test_pixels_are_decoded_and_normalised_exactly(workdir):
  # scale (1, 1) on a square image: torchvision's RRC falls back to the full image
  it = _it(workdir, rrc_scale=(1.0, 1.0))
  b = next(it)
  assert b["image"].shape == (6, 16, 16, 3) and b["image"].dtype == np.float32
  assert b["tokens"].dtype == np.int32
  mean = np.array(constants.IMAGE_MEAN) * 255
  std = np.array(constants.IMAGE_STD) * 255
  for img, (i, _) in zip(b["image"], b["tokens"]):
    np.testing.assert_allclose(img, (_img(int(i)) - mean) / std, rtol=1e-5, atol=1e-5)


def test_epochs_cover_all_good_samples_once_and_reshuffle(workdir):
  it = _it(workdir, batch_size=1)
  e1 = [int(next(it)["tokens"][0, 0]) for _ in range(len(GOOD) + 2)]
  # bad samples (5, 9) are dropped; each epoch of 48 indices yields the 46 good ones
  assert sorted(e1[:len(GOOD)]) == GOOD
  it2 = _it(workdir, batch_size=1)
  again = [int(next(it2)["tokens"][0, 0]) for _ in range(2 * len(GOOD))]
  assert again[:len(GOOD)] == e1[:len(GOOD)]                   # deterministic
  assert sorted(again[len(GOOD):]) == GOOD                     # second epoch complete
  assert again[len(GOOD):] != again[:len(GOOD)]                # and reshuffled
  it3 = _it(workdir, batch_size=1, seed=1)
  assert [int(next(it3)["tokens"][0, 0]) for _ in range(10)] != e1[:10]


def test_no_shuffle_is_shard_order(workdir):
  it = _it(workdir, shuffle=False)
  got = np.concatenate([next(it)["tokens"][:, 0] for _ in range(4)]).tolist()
  assert got == GOOD[:24]


def test_random_caption_and_crop(workdir):
  it = _it(workdir, batch_size=46)
  variants = np.concatenate([next(it)["tokens"][:, 1] for _ in range(3)])
  assert 0.3 < variants.mean() < 0.7        # both captions are picked
  # RRC at scale 0.9-1.0 changes pixels but keeps the image recognisable
  b = next(_it(workdir, batch_size=6))
  mean = np.array(constants.IMAGE_MEAN) * 255
  std = np.array(constants.IMAGE_STD) * 255
  diffs = [np.abs(img - (_img(int(i)) - mean) / std).mean() for img, (i, _) in
           zip(b["image"], b["tokens"])]
  assert max(diffs) > 1e-3


def test_hosts_get_disjoint_halves(workdir):
  a = _it(workdir, 0, 2, batch_size=2)
  b = _it(workdir, 1, 2, batch_size=2)   # one sample per host and step
  ka = [int(next(a)["tokens"][0, 0]) for _ in range(22)]
  kb = [int(next(b)["tokens"][0, 0]) for _ in range(22)]
  # each host's epoch is 24 indices (22 or more good): no repeats, no overlap
  assert len(set(ka)) == len(set(kb)) == 22 and not set(ka) & set(kb)
  assert set(ka) | set(kb) <= set(GOOD)
  with pytest.raises(ValueError, match="divisible"):
    _it(workdir, 0, 4, batch_size=6)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_same_stream(workdir, workers):
  it = _it(workdir, num_workers=workers)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(4)]
  it.close()
  fresh = _it(workdir, num_workers=workers)
  fresh.set_state(state)
  got = [next(fresh) for _ in range(4)]
  fresh.close()
  for w, g in zip(want, got):
    np.testing.assert_array_equal(w["tokens"], g["tokens"])
    np.testing.assert_array_equal(w["image"], g["image"])
  other = _it(workdir, num_workers=1 - min(workers, 1))
  with pytest.raises(ValueError, match="num_workers"):
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
  assert [len(b["key"]) for b in out] == [4, 3]
  assert np.concatenate([b["label"] for b in out]).tolist() == list(range(7))
  assert np.concatenate([b["key"] for b in out]).tolist() == [f"e{i}" for i in range(7)]
  mean = np.array(constants.IMAGE_MEAN) * 255
  std = np.array(constants.IMAGE_STD) * 255
  img = out[0]["image"][2]          # short side already 16: crop columns 4..20
  np.testing.assert_allclose(img, (wide[2][:, 4:20] - mean) / std, rtol=1e-5, atol=1e-5)


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
