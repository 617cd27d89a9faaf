"""Training and evaluation input pipelines over webdataset shards, on Grain.

The training stream is defined globally, once for any number of hosts:
  sample indices (all, or an expert's subset)      N samples
    -> global shuffle by seed        grain index shuffle, reshuffled every epoch
    -> repeat forever                global position g = epoch * N + slot
    -> read + decode                 a bad sample (corrupt image, no caption) is
                                     replaced by the one at g + s (then g + 2s, ...,
                                     s = N // 64 + 1): counted and warned about,
                                     batches stay full
    -> RandomResizedCrop + one random caption, seeded by g
    -> batch, tokenize               uint8 images (normalised on the device,
                                     models/vit.py), int32 tokens
Global batch k is positions [start + kB, start + (k+1)B). Host p of P reads
only its contiguous block of each global batch (rows p*B/P .. (p+1)*B/P), so
the global array is laid out exactly as on one process, every host draws
different crops (the draw follows g, not the host's own counter), and the
data position is one number, `position`, the same on every host. A resumed
run (on any number of hosts, with any num_workers) rebuilds the stream at
that position without replaying anything.

Per host: threads (ReadOptions) decode and tokenize whole batches (grain
MapDataset.batch then a Map, so worker processes, mp_prefetch, keep the
batch order and run the BPE too); the main process only hands batches on.
The host does no per-pixel arithmetic: images stay uint8 (4x fewer bytes to
the device). Workers are spawned processes (grain sends them the pipeline,
tokenizer included, with cloudpickle), so a script that sets num_workers > 0
needs the usual `if __name__ == "__main__":` guard; close() iterators to free
their shared memory.

Evaluation batches keep every position too: host p yields its block of each
global batch of the shard-order stream, padded to B/P rows with `valid` 0,
and a bad sample stays as an invalid row, so hosts always agree on shapes.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import grain
import ml_collections
import numpy as np

from mode_jax import constants
from mode_jax import workdir as wd
from mode_jax.data.io import preprocess
from mode_jax.data.io import shard_index
from mode_jax.data.io import webdataset as wds

log = logging.getLogger(__name__)
Tokenize = Callable[[list[str]], np.ndarray]


def default_config() -> ml_collections.ConfigDict:
  """Fields of the training / evaluation input (config.input)."""
  c = ml_collections.ConfigDict()
  c.shards = wd.TRAIN_SHARDS        # brace/glob pattern; relative = inside the workdir
  c.resolution = 224                # output images are resolution^2
  c.batch_size = 256                # global; each process gets batch_size / process_count
  c.seed = 0
  c.shuffle = True                  # global per-epoch shuffle (False: shard, then tar order)
  c.num_workers = 0                 # decoding processes; 0 = in the main process
  c.read_threads = 4                # reader threads per process
  c.prefetch = 128                  # samples read ahead per process (at least read_threads batches)
  c.worker_buffer = 2               # batches each worker prepares ahead
  c.rrc_scale = constants.RRC_SCALE
  c.caption_keys = "texts,caption,txt"   # caption sources, in order
  c.index_dir = ""                  # "" = <workdir>/index; cached per-shard indexes
  c.index_threads = 8               # shards scanned in parallel when building the index
  return c


def _resolve(pattern: str, workdir: str | None) -> str:
  """Relative patterns (each of a '::' list) are inside the workdir; absolute and URLs as is."""
  def one(p):
    p = p.strip()
    if not workdir or wd.is_remote(p) or os.path.isabs(os.path.expanduser(p)):
      return p
    return wd.path(workdir, p)
  return "::".join(one(p) for p in pattern.split("::"))


def _patterns(shards) -> list[str]:
  return [shards] if isinstance(shards, str) else [str(s) for s in shards]


def shard_paths(shards, workdir: str | None) -> list[str]:
  """config.input.shards (a pattern, '::'-joined patterns, or a list of them) -> paths.

  Relative patterns are inside the workdir. When nothing matches: MissingInput
  naming `prepare` (the stage that writes the workdir's shards) for patterns
  inside the workdir, else FileNotFoundError.
  """
  out = []
  for p in _patterns(shards):
    try:
      out += wds.expand_shards(_resolve(p, workdir))
    except FileNotFoundError:
      if workdir and _resolve(p, workdir) != p:
        raise wd.MissingInput(_resolve(p, workdir), "prepare") from None
      raise
  return out


def describe_shards(shards, workdir: str | None) -> str:
  return " ".join(_resolve(p, workdir) for p in _patterns(shards))


def load_index(cfg, workdir: str | None, pattern: str | None = None,
               progress: bool = True) -> shard_index.SampleIndex:
  """Expands `cfg.shards` (or `pattern`) and builds / loads the cached sample index."""
  shards = shard_paths(pattern or cfg.shards, workdir)
  index_dir = cfg.index_dir or (wd.path(workdir, "index") if workdir else None)
  return shard_index.build_index(shards, index_dir, cfg.index_threads, progress)


class _Read:
  """Index -> decoded sample, or None (counted) when the data is bad."""

  def __init__(self, reader, caption_keys, draft_size, require_caption: bool = True):
    self.reader, self.caption_keys, self.draft_size = reader, caption_keys, draft_size
    self.require_caption = require_caption
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
                        caption_keys=self.caption_keys, draft_size=self.draft_size,
                        require_caption=self.require_caption)
    if s is None and self.stats.skipped & (self.stats.skipped - 1) == 0:   # 1, 2, 4, 8...
      self.stats.warn(f"loader process {os.getpid()}")
    return s


class _Load(grain.transforms.Map):
  def __init__(self, read: _Read):
    self.read = read

  def map(self, i):
    return self.read.load(i)


MAX_SUBSTITUTES = 64   # a position whose 64 candidates are all bad stops the run


class _Substitute(grain.MapDataset):
  """A bad sample at global position g is replaced by the one at g + s, g + 2s, ...

  s = N // MAX_SUBSTITUTES + 1 spreads the candidates over the epoch (other
  shards, even unshuffled); the choice is deterministic and every position
  still yields exactly one sample, so positions, batches and hosts never
  drift apart.
  """

  def __init__(self, parent: grain.MapDataset, epoch_length: int):
    super().__init__(parent)
    self._n = epoch_length
    self._step = epoch_length // MAX_SUBSTITUTES + 1

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"_Substitute(epoch_length={self._n})"

  def __getitem__(self, g):
    if isinstance(g, slice):
      return self.slice(g)
    for t in range(MAX_SUBSTITUTES):
      s = self._parent[g + t * self._step]
      if s is not None:
        return s
    raise RuntimeError(f"input position {g}: {MAX_SUBSTITUTES} candidate samples in a row are "
                       "unreadable or have no caption; check the shards (warnings above)")


class _Augment(grain.transforms.RandomMap):
  def __init__(self, res: int, scale):
    self.res, self.scale = res, tuple(scale)

  def random_map(self, s, rng: np.random.Generator):
    image = preprocess.random_resized_crop(s["image"], self.res, rng, self.scale)
    text = s["texts"][int(rng.integers(len(s["texts"])))]
    return {"image": image, "text": text, "key": s["__key__"]}


class _Tokenize(grain.transforms.Map):
  """A batch's captions -> int32 tokens, inside the pipeline (loader threads or workers).

  `tokenize` travels to spawned workers with the pipeline; ClipTokenizer (or a
  functools.partial of it) pickles by value, caches included. A `tokenize` with
  `by_key` set (train/text_inputs.py CaptionFeatures: a locked text tower's inputs) is
  called with the samples' keys too and returns float32 features.
  """

  def __init__(self, tokenize: Tokenize):
    self.tokenize = tokenize

  def map(self, b):
    texts = [str(t) for t in b["text"]]
    if getattr(self.tokenize, "by_key", False):
      tokens = np.asarray(self.tokenize(texts, keys=[str(k) for k in b["key"]]), np.float32)
    else:
      tokens = np.asarray(self.tokenize(texts), np.int32)
    return {"image": b["image"], "tokens": tokens}


class _HostView(grain.MapDataset):
  """This host's rows of every global batch, as one endless stream.

  Element j is global position start + (j // b) * B + p * b + j % b, with
  B the global batch, b = B / P the per-host batch and p this host.
  """

  def __init__(self, parent: grain.MapDataset, *, start: int, global_batch: int,
               per_host: int, host: int):
    super().__init__(parent)
    self._start, self._big, self._b, self._host = start, global_batch, per_host, host

  def __len__(self) -> int:   # endless: 2**40 batches (exact in float, as grain's batch needs)
    return self._b * 2 ** 40

  def __str__(self) -> str:
    return f"_HostView(start={self._start}, host={self._host}, {self._b} of {self._big})"

  def position(self, j: int) -> int:
    k, r = divmod(j, self._b)
    return self._start + k * self._big + self._host * self._b + r

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    return self._parent[self.position(j)]

  def _getitems(self, js):
    return self._parent._getitems([self.position(j) for j in js])  # pylint: disable=protected-access


class TrainIterator:
  """Per-process batches {"image": uint8[b, H, W, 3], "tokens": int32[b, L]} (float32[b, F]
  sentence features for a locked text tower).

  get_state() is {"position": global samples consumed, ...identity}; the
  same on every host. set_state() rebuilds the stream at that position.
  """

  def __init__(self, make, meta: dict, global_batch: int):
    self._make, self.meta = make, meta
    self._global_batch = global_batch
    self._position = 0
    self._it = iter(make(0))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    b = next(self._it)
    self._position += self._global_batch
    return b

  def get_state(self) -> dict:
    return {"position": int(self._position), **self.meta}

  def set_state(self, state: dict) -> None:
    if "position" not in state:
      raise ValueError("cannot resume this input stream: the checkpoint's data state has no "
                       "'position' (written by an older mode_jax); start a new run directory")
    diff = {k: (state.get(k), v) for k, v in self.meta.items() if state.get(k) != v}
    if diff:
      raise ValueError(f"cannot resume this input stream: (saved, now) differ in {diff}")
    self.close()
    self._position = int(state["position"])
    self._it = iter(self._make(self._position))

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


def _source(cfg, workdir, index, source):
  if source is not None:
    return source
  index = index if index is not None else load_index(cfg, workdir)
  return _Read(index.reader(), tuple(cfg.caption_keys.split(",")), cfg.resolution)


def train_iterator(cfg, workdir: str | None, tokenize: Tokenize, *,
                   index: shard_index.SampleIndex | None = None,
                   indices: Sequence[int] | np.ndarray | None = None,
                   source=None,
                   process_index: int | None = None,
                   process_count: int | None = None) -> TrainIterator:
  """This process's share of the endless, shuffled global training stream.

  `indices`: restrict to these sample numbers of the index (an expert's
  stream, see expert_stream.py); default all samples. `source`: instead of
  shards, any object with len() and load(i) -> {"image", "texts", ...} | None
  (e.g. tfds_source.TfdsSamples).
  """
  pi, pc = _processes(process_index, process_count)
  if cfg.batch_size % pc:
    raise ValueError(f"batch_size={cfg.batch_size} is not divisible by {pc} processes")
  source = _source(cfg, workdir, index, source)
  order = np.arange(len(source), dtype=np.int64) if indices is None else \
      np.asarray(indices, np.int64)
  if not len(order):
    raise ValueError("the training stream has no samples")
  stream = grain.MapDataset.source(order)
  if cfg.shuffle:
    stream = stream.shuffle(seed=cfg.seed)
  stream = stream.repeat(None).map(_Load(source))
  stream = _Substitute(stream, len(order)).random_map(_Augment(cfg.resolution, cfg.rrc_scale),
                                                      seed=cfg.seed)
  per_host = cfg.batch_size // pc
  threads = max(1, cfg.read_threads)

  def make(start: int):
    ds = _HostView(stream, start=start, global_batch=cfg.batch_size, per_host=per_host, host=pi)
    ds = ds.batch(per_host).map(_Tokenize(tokenize)).to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(threads, -(-cfg.prefetch // per_host))))
    if cfg.num_workers > 0:
      _absl_flags_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer))
    return ds

  meta = {"seed": int(cfg.seed), "num_samples": int(len(order)), "shuffle": bool(cfg.shuffle)}
  return TrainIterator(make, meta, cfg.batch_size)


class _EvalLoad(grain.transforms.Map):
  """Position -> sample dict; padding and bad samples become rows with valid=False."""

  def __init__(self, read, res: int, n: int):
    self.read, self.res, self.n = read, res, n

  def map(self, pos):
    pos = int(pos)
    s = self.read.load(pos) if pos < self.n else None
    if s is None:
      return {"image": np.zeros((self.res, self.res, 3), np.uint8), "label": np.int32(-1),
              "key": "", "text": "", "index": np.int64(pos if pos < self.n else -1),
              "valid": False}
    return {"image": preprocess.resize_center_crop(s["image"], self.res),
            "label": np.int32(-1 if s["label"] is None else s["label"]),
            "key": s["__key__"], "text": s["texts"][0] if s["texts"] else "",
            "index": np.int64(pos), "valid": True}


def eval_batches(cfg, workdir: str | None, pattern: str | None, *,
                 batch_size: int | None = None,
                 index: shard_index.SampleIndex | None = None, source=None,
                 process_index: int | None = None, process_count: int | None = None):
  """Evaluation batches in shard order (no augmentation, no shuffle), split over hosts.

  Global batches of `batch_size` positions (rounded up to a multiple of the
  process count); this host yields its contiguous block of each, always
  b = batch_size / process_count rows. Yields {"image": uint8[b, res, res, 3]
  (resize short side + center crop; the model normalises), "label": int32[b] (-1 when absent),
  "key": str[b], "text": str[b] (first caption, "" if none), "index": int64[b] (position
  in the set, -1 on padding), "valid": bool[b]} where padding rows and bad
  samples (counted and warned about) have valid False.
  """
  pi, pc = _processes(process_index, process_count)
  if source is None:
    index = index if index is not None else load_index(cfg, workdir, pattern)
    source = _Read(index.reader(), tuple(cfg.caption_keys.split(",")), cfg.resolution,
                   require_caption=False)   # zero-shot samples carry a label, no caption
  n = len(source)
  b = -(-(batch_size or cfg.batch_size) // pc)
  big = b * pc
  batches = -(-n // big)
  positions = np.array([k * big + pi * b + r for k in range(batches) for r in range(b)],
                       np.int64)
  ds = (grain.MapDataset.source(positions).map(_EvalLoad(source, cfg.resolution, n))
        .batch(b).to_iter_dataset(grain.ReadOptions(num_threads=max(1, cfg.read_threads))))
  if cfg.num_workers > 0:   # workers take batches round-robin; the order is kept
    _absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
  it = iter(ds)
  try:
    for x in it:
      yield {"image": x["image"], "label": x["label"],
             "key": np.asarray(x["key"]), "text": np.asarray(x["text"]),
             "index": np.asarray(x["index"], np.int64), "valid": np.asarray(x["valid"], bool)}
  finally:
    close = getattr(it, "close", None)
    if close:
      close()
