"""The `embed` stage: shards/train-*.tar -> embed/<stem>.npz + embed/meta.json.

DESIGN.md step 1: one caption per pair (a seeded pick when a sample has
several) is embedded with a frozen sentence encoder and L2-normalised; the
cluster stage reads these rows. Formats: mode_jax/workdir.py.

Encoders: 'minilm' (default) and other names from a small registry
(`register_encoder`); any local Hugging Face BERT folder (e.g. supervised
SimCSE with pooling='pooler', the paper's choice); or 'clip:<weights>', the
text tower of public CLIP weights (paper Table 7, clip_text_encoder.py).

Shards come from config.input.shards (a pattern or list, local or remote;
relative = inside the workdir). Resumable: a shard whose npz exists is
skipped; npz files are written atomically (mode_jax.workdir). Multi-host:
process i embeds shards i::process_count, batches split over its local
devices, and writes embed/<stem>.npz for those shards only plus
embed/hosts/process-<i>-of-<n>.json (what it read and wrote); process 0
writes meta.json. Distinct captions are encoded once across shards while
they fit in `cache_size` (memory stays bounded: later ones are encoded per
shard).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from mode_jax import constants, workdir as wd
from mode_jax.data.io import webdataset as wds
from mode_jax.text import captions, clip_text_encoder, sentence_encoder

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.encoder = constants.DEFAULT_SENTENCE_ENCODER   # registered name, HF BERT folder, 'clip:<weights>'
  c.pooling = constants.DEFAULT_SENTENCE_POOLING   # 'mean' | 'cls' | 'pooler' (SimCSE, paper)
  c.batch_size = 256            # captions per forward pass (split over local devices)
  c.dtype = "float16"           # storage dtype of embed/*.npz: 'float16' | 'float32'
  c.compute_dtype = "float32"   # encoder compute dtype: 'float32' | 'bfloat16'
  c.seed = 0                    # caption pick among several: hash(seed, key)
  c.max_length = 0              # tokens incl. specials; 0 = the encoder's default
  c.chunk = 8192                # captions per encode call (progress-bar granularity)
  c.cache_size = 200_000        # distinct captions remembered across shards (encoded once)
  return c


class TextEncoder(Protocol):
  dim: int

  def encode(self, texts: Sequence[str], batch_size: int = ..., progress: bool = ...
             ) -> np.ndarray:
    """float32 [N, dim], rows L2-normalised."""


_ENCODERS: dict[str, Callable[[ml_collections.ConfigDict], TextEncoder]] = {}


def register_encoder(name: str):
  """Decorator: `factory(cfg) -> TextEncoder` becomes cfg.encoder=name."""
  def wrap(factory):
    _ENCODERS[name] = factory
    return factory
  return wrap


@register_encoder(sentence_encoder.MINILM)
def _minilm(cfg):
  return _hf_folder(cfg)


def _hf_folder(cfg):
  return sentence_encoder.SentenceEncoder(
      cfg.encoder, pooling=cfg.pooling, dtype=cfg.compute_dtype,
      max_length=cfg.max_length or None)


def make_encoder(cfg: ml_collections.ConfigDict) -> TextEncoder:
  if cfg.encoder in _ENCODERS:
    return _ENCODERS[cfg.encoder](cfg)
  if cfg.encoder.startswith(clip_text_encoder.PREFIX):   # Table 7: a CLIP text tower
    return clip_text_encoder.ClipTextEncoder(
        clip_text_encoder.weights_path(cfg.encoder), dtype=cfg.compute_dtype,
        max_length=cfg.max_length or None)
  if os.path.isdir(cfg.encoder):
    return _hf_folder(cfg)
  raise ValueError(f"embed.encoder={cfg.encoder!r} is neither a registered encoder "
                   f"({', '.join(sorted(_ENCODERS))}), 'clip:<CLIP weights>' nor a model folder")


def fingerprint(cfg: ml_collections.ConfigDict) -> str:
  """What the embeddings depend on: the config and, for a model folder, its
  config.json and weight-file size (cheap; no hashing of gigabytes)."""
  model = {}
  folder = None
  if cfg.encoder.startswith(clip_text_encoder.PREFIX):
    path = clip_text_encoder.weights_path(cfg.encoder)
    if os.path.isfile(path):
      model["weights_bytes"] = os.path.getsize(path)
    else:
      folder = path if os.path.isdir(path) else None
  else:
    try:
      folder = sentence_encoder.resolve_model_dir(cfg.encoder)
    except FileNotFoundError:
      pass
  if folder is not None:
    with open(os.path.join(folder, "config.json"), "rb") as f:
      model["config"] = hashlib.sha256(f.read()).hexdigest()
    weights = os.path.join(folder, "model.safetensors")
    model["weights_bytes"] = os.path.getsize(weights) if os.path.exists(weights) else None
  keys = ("encoder", "pooling", "dtype", "compute_dtype", "seed", "max_length")
  blob = json.dumps([{k: cfg[k] for k in keys}, model], sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _with_defaults(cfg) -> ml_collections.ConfigDict:
  merged = default_config()
  for k, v in (cfg or {}).items():
    if k not in merged:
      raise ValueError(f"embed: unknown config field {k!r}; fields: {', '.join(merged)}")
    merged[k] = v
  if merged.dtype not in ("float16", "float32"):
    raise ValueError(f"embed.dtype must be 'float16' or 'float32', not {merged.dtype!r}")
  return merged


def shard_outputs(shards: Sequence[str], workdir: str) -> dict[str, str]:
  """shard -> embed/<stem>.npz; two shards with one stem would overwrite each other."""
  out, seen = {}, {}
  for shard in shards:
    stem = wd.shard_stem(shard)
    if stem in seen:
      raise ValueError(f"shards {seen[stem]} and {shard} share the name {stem!r}: embed/ and "
                       "assign/ files are named by shard; rename one")
    seen[stem] = shard
    out[shard] = wd.path(workdir, "embed", stem + ".npz")
  return out


def run_embed(cfg: ml_collections.ConfigDict, workdir: str,
              shards: str | Sequence[str] = wd.TRAIN_SHARDS) -> dict:
  """Embeds one caption per sample of this host's share of `shards`; returns counts."""
  from mode_jax import distributed
  from mode_jax.data.io import loader
  cfg = _with_defaults(cfg)
  try:
    shard_list = loader.shard_paths(shards, workdir)
  except FileNotFoundError:
    raise wd.MissingInput(loader.describe_shards(shards, workdir), "prepare") from None
  target = shard_outputs(shard_list, workdir)
  out_dir = wd.path(workdir, "embed")
  meta_path = wd.path(out_dir, "meta.json")
  fp = fingerprint(cfg)
  if wd.exists(meta_path) and wd.read_json(meta_path).get("fingerprint") != fp:
    raise ValueError(f"{out_dir} holds embeddings from another embed config "
                     f"(fingerprint {wd.read_json(meta_path).get('fingerprint')} != {fp}); "
                     f"delete it or run with the same config")

  mine = distributed.share(shard_list)
  pending = [s for s in mine if not wd.exists(target[s])]
  stats = dict(shards=len(mine), skipped_done=len(mine) - len(pending), samples=0,
               no_caption=0, no_image=0, truncated_shards=0, encoded=0)
  encoder = make_encoder(cfg) if pending or not wd.exists(meta_path) else None
  if encoder is not None and distributed.is_primary():
    wd.write_json(meta_path, dict(encoder=cfg.encoder, dim=int(encoder.dim), dtype=cfg.dtype,
                                  fingerprint=fp))

  bar = tqdm(desc="embed", unit="sample", disable=not pending)
  seen: dict[str, np.ndarray] = {}   # caption -> embedding, across shards, at most cache_size
  for shard in pending:
    st = wds.Stats()
    keys, cands = [], []
    for sample in wds.iter_shard(shard, with_images=False, stats=st):
      keys.append(sample["__key__"])
      cands.append(sample["texts"])
    if st.truncated_shards or st.unreadable_shards:
      stats["truncated_shards"] += 1
      log.warning("embed: %s is truncated or corrupt; kept %d samples before the break",
                  shard, len(keys))
    texts = [captions.pick_caption(t, k, cfg.seed) for k, t in zip(keys, cands)]
    # Web and templated captions repeat: each distinct string is encoded once
    # (the encoder is deterministic, so rows are identical either way).
    here: dict[str, np.ndarray] = {}   # this shard's captions that are not in `seen`
    new = [t for t in dict.fromkeys(texts) if t not in seen]
    for i in range(0, len(new), cfg.chunk):
      chunk = new[i:i + cfg.chunk]
      for t, e in zip(chunk, encoder.encode(chunk, batch_size=cfg.batch_size)):
        if len(seen) < cfg.cache_size:
          seen[t] = e
        else:
          here[t] = e
      stats["encoded"] += len(chunk)
    emb = np.stack([seen[t] if t in seen else here[t] for t in texts]) if texts else \
        np.zeros((0, encoder.dim), np.float32)
    bar.update(len(texts))
    wd.save_npz(target[shard], keys=np.asarray(keys, dtype=str), emb=emb.astype(cfg.dtype))
    stats["samples"] += len(texts)
    stats["no_caption"] += st.missing_captions
    stats["no_image"] += st.missing_images
  bar.close()
  if stats["no_caption"] or stats["no_image"]:
    log.warning("embed: skipped %d samples without a caption and %d without an image",
                stats["no_caption"], stats["no_image"])
  distributed.host_report(out_dir, **stats, read=[wd.shard_stem(s) for s in pending])
  distributed.barrier("embed")
  return stats
