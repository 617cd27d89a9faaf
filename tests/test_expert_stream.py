"""Expert streams: in-cluster samples, reference-style OOC sampling, Random-n ablation."""

import os

import numpy as np
import pytest

from mode_jax import constants, workdir as wd
from mode_jax.data import expert_stream as es
from mode_jax.data.io import loader, wds_writer
from mode_jax.data.io.shard_index import SampleIndex
from mode_jax.data.io.webdataset import Stats

SHARD_SIZES = [400, 300, 500]


def _index(tmp_path):
  keys = [np.array([f"s{s}_{i:04d}" for i in range(n)]) for s, n in enumerate(SHARD_SIZES)]
  n = sum(SHARD_SIZES)
  return SampleIndex(shards=[str(tmp_path / f"shards/train-{s:05d}.tar") for s in range(3)],
                     offsets=np.concatenate([[0], np.cumsum(SHARD_SIZES)]),
                     start=np.zeros(n, np.int64), length=np.zeros(n, np.int64),
                     keys=keys, stats=Stats())


def _write_assign(workdir, index, experts_of, drop=()):
  """Writes assign/<stem>.npz in a shuffled row order, leaving out keys in `drop`."""
  rng = np.random.default_rng(0)
  for s, shard in enumerate(index.shards):
    keys = index.keys[s]
    e = np.array([experts_of(k) for k in keys], np.int32)
    keep = np.array([k not in drop for k in keys])
    order = rng.permutation(int(keep.sum()))
    os.makedirs(wd.path(workdir, "assign"), exist_ok=True)
    np.savez(wd.path(workdir, "assign", f"{wd.shard_stem(shard)}.npz"),
             keys=keys[keep][order], fine=e[keep][order] * 10, expert=e[keep][order])


def _expert(k):
  return int(k.split("_")[1]) % 4


def _cfg(**kw):
  c = es.default_config()
  c.update(kw)
  return c


def test_in_cluster_plus_reference_ooc(tmp_path):
  index = _index(tmp_path)
  w = str(tmp_path)
  _write_assign(w, index, _expert, drop={"s1_0007"})
  st = es.expert_stream(_cfg(expert=3), w, index)
  all_keys = np.concatenate(index.keys)
  experts = np.array([_expert(k) for k in all_keys])
  inside = set(np.flatnonzero(experts == 3)) - {400 + 7}
  got = set(st.indices.tolist())
  assert inside <= got and st.num_in_cluster == len(inside)
  ooc = got - inside
  assert all(experts[i] != 3 for i in ooc) and 400 + 7 not in got
  # reference: per shard, int(ratio * that shard's out-of-cluster count)
  for s, (lo, n) in enumerate(zip([0, 400, 700], SHARD_SIZES)):
    n_out = sum(1 for i in range(lo, lo + n) if experts[i] != 3 and i != 407)
    assert sum(1 for i in ooc if lo <= i < lo + n) == int(n_out * constants.OOC_RATIO)
  assert st.num_ooc == len(ooc) and st.epoch_samples == 1200
  assert st.passes_per_epoch == pytest.approx(1200 / len(got))


def test_deterministic_by_seed_and_ooc_options(tmp_path):
  index = _index(tmp_path)
  w = str(tmp_path)
  _write_assign(w, index, _expert)
  a = es.expert_stream(_cfg(expert=1, seed=3), w, index).indices
  b = es.expert_stream(_cfg(expert=1, seed=3), w, index).indices
  c = es.expert_stream(_cfg(expert=1, seed=4), w, index).indices
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  none = es.expert_stream(_cfg(expert=1, ooc_ratio=0.0), w, index)
  assert none.num_ooc == 0 and none.num_in_cluster == 300
  inc = es.expert_stream(_cfg(expert=1, ooc_ratio=0.1, ooc_base="in_cluster"), w, index)
  assert inc.num_ooc == 30
  with pytest.raises(ValueError, match="no samples"):
    es.expert_stream(_cfg(expert=7), w, index)


def test_random_ablation_keeps_sizes_and_is_disjoint(tmp_path):
  index = _index(tmp_path)
  w = str(tmp_path)
  skewed = lambda k: min(int(k.split("_")[1]) // 100, 2)    # sizes 300, 300, 600
  _write_assign(w, index, skewed)
  streams = [es.expert_stream(_cfg(expert=c, ablation="random", ooc_ratio=0.0), w, index)
             for c in range(3)]
  clustered = [es.expert_stream(_cfg(expert=c, ooc_ratio=0.0), w, index) for c in range(3)]
  assert [len(s.indices) for s in streams] == [len(s.indices) for s in clustered] == \
      [300, 300, 600]
  union = np.concatenate([s.indices for s in streams])
  assert len(np.unique(union)) == 1200
  assert not np.array_equal(streams[0].indices, clustered[0].indices)
  with pytest.raises(ValueError, match="ablation"):
    es.expert_stream(_cfg(ablation="bogus"), w, index)


def test_missing_assignment_names_the_stage(tmp_path):
  with pytest.raises(wd.MissingInput, match="assign"):
    es.expert_stream(_cfg(), str(tmp_path), _index(tmp_path))


def test_loader_streams_only_the_expert(tmp_path):
  w = str(tmp_path)
  rng = np.random.default_rng(0)
  wds_writer.write_shards(
      os.path.join(w, "shards/train-%05d.tar"),
      ({"__key__": f"k{i:03d}", "png": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "txt": f"{i} cap"} for i in range(60)), 20)
  cfg = loader.default_config()
  cfg.resolution, cfg.batch_size = 8, 5
  index = loader.load_index(cfg, w)
  _write_assign(w, index, lambda k: int(k[1:]) % 3)
  st = es.expert_stream(_cfg(expert=2, ooc_ratio=0.0), w, index)
  it = loader.train_iterator(cfg, w, lambda t: np.array([[int(x.split()[0])] for x in t]),
                             index=index, indices=st.indices, process_index=0, process_count=1)
  got = np.concatenate([next(it)["tokens"][:, 0] for _ in range(8)])
  assert set(got.tolist()) == set(range(2, 60, 3))
