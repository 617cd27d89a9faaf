"""A BERT-family encoder in Flax NNX that loads Hugging Face weights from a local folder.

MoDE embeds captions with a frozen sentence encoder (paper: supervised SimCSE
BERT-base; our default: all-MiniLM-L6-v2, the same architecture, smaller).
Layout of Hugging Face `BertModel`: word + position + token-type embeddings,
LayerNorm, then post-LN layers (x = LN(x + attn(x)); x = LN(x + ffn(x))) with
exact-erf GELU, and a pooler tanh(W h_CLS + b). Inference only: no dropout.
Query, key and value are fused into one projection (one matmul, not three).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),   # HF "gelu" is the erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BERT config.json that the forward pass needs."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    with open(path) as f:
      raw = json.load(f)
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise NotImplementedError(f"{path}: only absolute position embeddings are supported")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


class Embeddings(nnx.Module):
  def __init__(self, cfg: BertConfig, *, dtype, rngs):
    d = cfg.hidden_size
    self.word = nnx.Embed(cfg.vocab_size, d, dtype=dtype, rngs=rngs)
    self.position = nnx.Embed(cfg.max_position_embeddings, d, dtype=dtype, rngs=rngs)
    self.token_type = nnx.Embed(cfg.type_vocab_size, d, dtype=dtype, rngs=rngs)
    self.ln = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

  def __call__(self, input_ids, token_type_ids):
    x = self.word(input_ids) + self.token_type(token_type_ids)
    x = x + self.position(jnp.arange(input_ids.shape[1]))[None]
    return self.ln(x)


class Layer(nnx.Module):
  """One post-LN transformer layer."""

  def __init__(self, cfg: BertConfig, *, dtype, rngs):
    d = cfg.hidden_size
    self.heads = cfg.num_attention_heads
    lin = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)
    ln = lambda: nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
    self.qkv, self.attn_out, self.attn_ln = lin(d, 3 * d), lin(d, d), ln()
    self.ffn_in, self.ffn_out, self.ffn_ln = lin(d, cfg.intermediate_size), lin(
        cfg.intermediate_size, d), ln()
    self.act = ACTIVATIONS[cfg.hidden_act]

  def __call__(self, x, mask):
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
    # XLA attention; softmax in float32 even for bfloat16 inputs.
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=mask)
    x = self.attn_ln(x + self.attn_out(y.reshape(b, t, d)))
    return self.ffn_ln(x + self.ffn_out(self.act(self.ffn_in(x))))


class Bert(nnx.Module):
  """`BertModel`: returns (last hidden states [B, T, D], pooler output [B, D])."""

  def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])
    self.pooler = nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask, token_type_ids=None):
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids)
    mask = attention_mask[:, None, None, :] > 0   # [B, 1, 1, T]: padding keys are ignored
    for layer in self.layers:
      x = layer(x, mask)
    return x, jnp.tanh(self.pooler(x[:, 0]))


# --- Hugging Face safetensors -> NNX state -------------------------------------

_LN = {"weight": "scale", "gamma": "scale", "bias": "bias", "beta": "bias"}
_LAYER_MAP = {
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_ln",
    "intermediate.dense": "ffn_in", "output.dense": "ffn_out", "output.LayerNorm": "ffn_ln",
}


def hf_to_pure_dict(tensors: dict[str, np.ndarray], cfg: BertConfig) -> tuple[dict, bool]:
  """Maps HF BertModel tensors to our parameter tree; returns (tree, has_pooler).

  Accepts a `bert.` prefix (BertFor* checkpoints, SimCSE) and old gamma/beta
  LayerNorm names; ignores heads (cls.*, lm_head) and buffers (position_ids)."""
  t = {re.sub(r"^bert\.", "", k): np.asarray(v, np.float32) for k, v in tensors.items()
       if not k.endswith("position_ids")}
  lin = lambda p: {"kernel": t[p + ".weight"].T, "bias": t[p + ".bias"]}
  ln = lambda p: {ours: t[f"{p}.{theirs}"] for theirs, ours in _LN.items() if f"{p}.{theirs}" in t}
  e = "embeddings."
  tree = {"embeddings": {
      "word": {"embedding": t[e + "word_embeddings.weight"]},
      "position": {"embedding": t[e + "position_embeddings.weight"]},
      "token_type": {"embedding": t[e + "token_type_embeddings.weight"]},
      "ln": ln(e + "LayerNorm")}}
  layers = {}
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layer.{i}."
    qkv = [lin(p + f"attention.self.{n}") for n in ("query", "key", "value")]
    layer = {"qkv": {"kernel": np.concatenate([w["kernel"] for w in qkv], axis=1),
                     "bias": np.concatenate([w["bias"] for w in qkv])}}
    for theirs, ours in _LAYER_MAP.items():
      layer[ours] = ln(p + theirs) if theirs.endswith("LayerNorm") else lin(p + theirs)
    layers[i] = layer
  tree["layers"] = layers
  has_pooler = "pooler.dense.weight" in t
  if has_pooler:
    tree["pooler"] = lin("pooler.dense")
  return tree, has_pooler


def load_pretrained(folder: str, *, dtype=jnp.float32) -> tuple[Bert, bool]:
  """Builds a Bert from folder/config.json + folder/model.safetensors; returns (model, has_pooler).

  Parameters stay float32 (`dtype` is the compute dtype). Without trained
  pooler weights the pooler is zero and has_pooler is False."""
  from safetensors.numpy import load_file   # local: only loading needs it
  cfg = BertConfig.from_json(os.path.join(folder, "config.json"))
  weights = os.path.join(folder, "model.safetensors")
  if not os.path.exists(weights):
    raise FileNotFoundError(f"{weights} not found (only safetensors checkpoints are read)")
  tree, has_pooler = hf_to_pure_dict(load_file(weights), cfg)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Bert(cfg, dtype=dtype, rngs=nnx.Rngs(0))))
  want = dict(_flatten(abstract.to_pure_dict()))
  got = dict(_flatten(tree))
  if not has_pooler:   # zeros, never used: pooling='pooler' refuses a model without one
    got.update({k: np.zeros(v.shape, v.dtype) for k, v in want.items() if k[0] == "pooler"})
  missing = sorted(".".join(map(str, k)) for k in want.keys() - got.keys())
  if missing:
    raise KeyError(f"{weights}: no weights for {missing[:5]}")
  for k, v in want.items():
    if got[k].shape != v.shape:
      raise ValueError(f"{weights}: {'.'.join(map(str, k))} has shape {got[k].shape}, "
                       f"expected {v.shape}")
  abstract.replace_by_pure_dict(_unflatten({k: got[k] for k in want}))
  return nnx.merge(graphdef, abstract), has_pooler


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _unflatten(flat):
  out = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = jnp.asarray(v)
  return out
