"""Training and evaluation input pipelines over webdataset shards, on Grain.

Train pipeline (per process):
  sample indices (all, or an expert's subset)
    -> global shuffle by seed           grain index shuffle, reshuffled every epoch
    -> [process_index::process_count]   disjoint per-host slice of each epoch
    -> repeat forever
    -> read + decode + RandomResizedCrop + one random caption (seeded per element)
    -> threads (ReadOptions) -> batch (per-process batch, drop remainder)
    -> worker processes (mp_prefetch; 0 = in-process)
    -> normalise + tokenize in the main process
A global shuffle of the random-access index replaces webdataset's shard-order
shuffle plus shuffle buffer: every epoch is a uniform permutation of all
samples, and any position is reachable without replay, so the position is a
small JSON dict. Bad samples (corrupt image, no caption) are dropped inside
the pipeline and counted with a warning; batches stay full.

The stream is a function of (seed, sample set, per-process batch, process
count and index, num_workers): the workers batch their own slices, so resuming
needs the same num_workers (checked in `set_state`). Workers are spawned
processes (grain), so a script that sets num_workers > 0 needs the usual
`if __name__ == "__main__":` guard; close() iterators to free their shared memory.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Sequence

import grain
import ml_collections
import numpy as np

from mode_jax import constants
from mode_jax import workdir as wd
from mode_jax.data import preprocess
from mode_jax.data import shard_index
from mode_jax.data import webdataset as wds

log = logging.getLogger(__name__)
Tokenize = Callable[[list[str]], np.ndarray]


def default_config() -> ml_collections.ConfigDict:
  """Fields of the training / evaluation input (config.input)."""
  c = ml_collections.ConfigDict()
  c.shards = "shards/train-*.tar"   # brace/glob pattern; relative = inside the workdir
  c.resolution = 224                # output images are resolution^2
  c.batch_size = 256                # global; each process gets batch_size / process_count
  c.seed = 0
  c.shuffle = True                  # global per-epoch shuffle (False: shard, then tar order)
  c.num_workers = 0                 # decoding processes; 0 = in the main process
  c.read_threads = 4                # reader threads per process
  c.prefetch = 128                  # samples read ahead (Grain scans this buffer per element)
  c.worker_buffer = 2               # batches each worker prepares ahead
  c.rrc_scale = constants.RRC_SCALE
  c.caption_keys = "texts,caption,txt"   # caption sources, in order
  c.index_dir = ""                  # "" = <workdir>/index; cached per-shard indexes
  c.index_threads = 8               # shards scanned in parallel when building the index
  return c


def _resolve(pattern: str, workdir: str | None) -> str:
  if workdir and "://" not in pattern and not os.path.isabs(os.path.expanduser(pattern)):
    return "::".join(os.path.join(workdir, p) for p in pattern.split("::"))
  return pattern


def load_index(cfg, workdir: str | None, pattern: str | None = None,
               progress: bool = True) -> shard_index.SampleIndex:
  """Expands `cfg.shards` (or `pattern`) and builds / loads the cached sample index."""
  shards = wds.expand_shards(_resolve(pattern or cfg.shards, workdir))
  index_dir = cfg.index_dir or (wd.path(workdir, "index") if workdir else None)
  return shard_index.build_index(shards, index_dir, cfg.index_threads, progress)


class _Read:
  """Index -> decoded sample, or None (dropped and counted) when the data is bad."""

  def __init__(self, reader, caption_keys, draft_size):
    self.reader, self.caption_keys, self.draft_size = reader, caption_keys, draft_size
    self.stats = wds.Stats()

  def __len__(self) -> int:
    return len(self.reader)

  def load(self, i):
    try:
      key, members = self.reader.read(int(i))
    except (OSError, wds.TruncatedShard) as e:
      self.stats.unreadable_shards += 1
      log.warning("cannot read sample %d: %s", i, e)
      return None
    s = wds.make_sample(key, members, with_images=True, stats=self.stats,
                        caption_keys=self.caption_keys, draft_size=self.draft_size)
    if s is None and self.stats.skipped & (self.stats.skipped - 1) == 0:   # 1, 2, 4, 8...
      self.stats.warn(f"loader process {os.getpid()}")
    return s


class _TrainMap(grain.transforms.RandomMap):
  def __init__(self, read: _Read, res: int, scale):
    self.read, self.res, self.scale = read, res, tuple(scale)

  def random_map(self, i, rng: np.random.Generator):
    s = self.read.load(i)
    if s is None:
      return None
    image = preprocess.random_resized_crop(s["image"], self.res, rng, self.scale)
    text = s["texts"][int(rng.integers(len(s["texts"])))]
    return {"image": image, "text": text}


class _EvalMap(grain.transforms.Map):
  def __init__(self, read: _Read, res: int):
    self.read, self.res = read, res

  def map(self, i):
    s = self.read.load(i)
    if s is None:
      return None
    return {"image": preprocess.resize_center_crop(s["image"], self.res),
            "label": np.int32(-1 if s["label"] is None else s["label"]),
            "key": s["__key__"], "text": s["texts"][0]}


def _jsonable(x):
  """Grain states are nested dicts of ints/strs; make sure they survive JSON."""
  return json.loads(json.dumps(x))


class TrainIterator:
  """Per-process batches {"image": float32[b, H, W, 3], "tokens": int32[b, L]}.

  get_state() is a small JSON-able dict; set_state() on a fresh iterator built
  from the same config continues the same stream.
  """

  def __init__(self, ds: grain.IterDataset, tokenize: Tokenize, meta: dict):
    self._ds, self._tokenize, self.meta = ds, tokenize, meta
    self._it = iter(ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    b = next(self._it)
    tokens = np.asarray(self._tokenize([str(t) for t in b["text"]]), np.int32)
    return {"image": preprocess.normalize(b["image"]), "tokens": tokens}

  def get_state(self) -> dict:
    return {"grain": _jsonable(self._it.get_state()), **self.meta}

  def set_state(self, state: dict) -> None:
    diff = {k: (state.get(k), v) for k, v in self.meta.items() if state.get(k) != v}
    if diff:
      raise ValueError(f"cannot resume this input stream: (saved, now) differ in {diff}")
    self._it.set_state(state["grain"])

  def close(self):
    close = getattr(self._it, "close", None)
    if close:
      close()


def _absl_flags_parsed():
  """Grain's worker processes read absl flags; outside absl.app they are never parsed."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _processes(process_index, process_count):
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  return process_index, process_count


def train_iterator(cfg, workdir: str | None, tokenize: Tokenize, *,
                   index: shard_index.SampleIndex | None = None,
                   indices: Sequence[int] | np.ndarray | None = None,
                   source=None,
                   process_index: int | None = None,
                   process_count: int | None = None) -> TrainIterator:
  """The endless, shuffled training stream of this process.

  `indices`: restrict to these sample numbers of the index (an expert's
  stream, see expert_stream.py); default all samples. `source`: instead of
  shards, any object with len() and load(i) -> {"image", "texts", ...} | None
  (e.g. tfds_source.TfdsSamples).
  """
  pi, pc = _processes(process_index, process_count)
  if cfg.batch_size % pc:
    raise ValueError(f"batch_size={cfg.batch_size} is not divisible by {pc} processes")
  if source is None:
    index = index if index is not None else load_index(cfg, workdir)
    source = _Read(index.reader(), tuple(cfg.caption_keys.split(",")), cfg.resolution)
  order = np.arange(len(source), dtype=np.int64) if indices is None else \
      np.asarray(indices, np.int64)
  if len(order) < pc:
    raise ValueError(f"{len(order)} samples cannot feed {pc} processes")
  ds = grain.MapDataset.source(order)
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds[pi::pc].repeat(None)
  ds = ds.random_map(_TrainMap(source, cfg.resolution, cfg.rrc_scale), seed=cfg.seed)
  per_process = cfg.batch_size // pc
  ds = (ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                             prefetch_buffer_size=min(4 * per_process, cfg.prefetch)))
        .batch(per_process, drop_remainder=True))
  if cfg.num_workers > 0:
    _absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer))
  meta = {"seed": int(cfg.seed), "num_workers": int(cfg.num_workers),
          "per_process_batch": per_process, "num_samples": int(len(order)),
          "process_index": pi, "process_count": pc, "shuffle": bool(cfg.shuffle)}
  return TrainIterator(ds, tokenize, meta)


def eval_batches(cfg, workdir: str | None, pattern: str | None, *,
                 batch_size: int | None = None,
                 index: shard_index.SampleIndex | None = None, source=None):
  """Evaluation batches in shard order: no augmentation, no shuffle, last batch partial.

  Yields {"image": float32[b, res, res, 3] (resize short side + center crop),
  "label": int32[b] (-1 when absent), "key": str[b], "text": str[b] (first
  caption)}. Samples with bad data are skipped (counted and warned about).
  """
  if source is None:
    index = index if index is not None else load_index(cfg, workdir, pattern)
    source = _Read(index.reader(), tuple(cfg.caption_keys.split(",")), cfg.resolution)
  ds = (grain.MapDataset.source(np.arange(len(source), dtype=np.int64))
        .map(_EvalMap(source, cfg.resolution))
        .to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads)))
  if cfg.num_workers > 0:   # workers take samples round-robin; batching here keeps the order
    _absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  it = iter(ds.batch(batch_size or cfg.batch_size, drop_remainder=False))
  try:
    for b in it:
      yield {"image": preprocess.normalize(b["image"]), "label": b["label"],
             "key": np.asarray(b["key"]), "text": np.asarray(b["text"])}
  finally:
    close = getattr(it, "close", None)
    if close:
      close()
