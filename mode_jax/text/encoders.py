"""Caption and class-name embedders by name: the `embed` config section and its encoders.

docs/method.md step 1: captions (and, at routing time, class names) are embedded
with a frozen sentence encoder and L2-normalised. Encoders: 'minilm'
(default) and other names from a small registry (`register_encoder`); any
local Hugging Face BERT folder (e.g. supervised SimCSE with pooling='pooler',
the paper's choice); or 'clip:<weights>', the text tower of public CLIP
weights (paper Table 7, clip_text_encoder.py). `fingerprint(cfg)` is what the
embeddings depend on.
"""

from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

import ml_collections
import numpy as np

from mode_jax import constants
from mode_jax import provenance
from mode_jax import sections
from mode_jax.text import clip_text_encoder, sentence_encoder


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


# embed fields that change how, not what, is computed (left out of every fingerprint)
HOW_FIELDS = ("batch_size", "chunk", "cache_size")


def what_fields(cfg) -> dict:
  """The embed config fields the embeddings depend on."""
  return {k: v for k, v in cfg.items() if k not in HOW_FIELDS}


def weights_fingerprint(cfg) -> str:
  """The encoder's files by content: every file of a model folder (config, weights,
  tokenizer, pooling settings), or a CLIP weights file ('' for a registered encoder
  without files)."""
  if cfg.encoder.startswith(clip_text_encoder.PREFIX):
    path = clip_text_encoder.weights_path(cfg.encoder)
  else:
    try:
      path = sentence_encoder.resolve_model_dir(cfg.encoder)
    except FileNotFoundError:
      return ""
  return provenance.tree_digest(path, provenance.MACHINE_MEMO) if os.path.exists(path) else ""


def fingerprint(cfg: ml_collections.ConfigDict) -> str:
  """What the embeddings depend on: the config's what_fields and the encoder's files."""
  return provenance.digest([what_fields(cfg), weights_fingerprint(cfg)])


def resolve_config(cfg) -> ml_collections.ConfigDict:
  merged = sections.overlay(default_config(), cfg, "embed")
  if merged.dtype not in ("float16", "float32"):
    raise ValueError(f"embed.dtype must be 'float16' or 'float32', not {merged.dtype!r}")
  return merged
