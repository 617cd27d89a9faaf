"""The pre-LN residual transformer shared by both CLIP towers (OpenAI CLIP layout).

Block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), mlp = c_fc -> act -> c_proj.
Attention keeps q, k and v in one fused `qkv` projection (one matmul instead of
three; the OpenAI state dict stores them fused as `in_proj_weight` too).
Compute runs in `dtype` (bfloat16 on accelerators) with float32 parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import constants


def quick_gelu(x):
  """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(constants.QUICK_GELU_ALPHA * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def _normal(std):
  return nnx.initializers.normal(stddev=std)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection."""

  def __init__(self, width, heads, *, depth, dtype, rngs):
    if width % heads:
      raise ValueError(f"width {width} is not divisible by heads {heads}")
    self.heads = heads
    # OpenAI CLIP init: attn std width^-0.5, out-proj scaled by (2 depth)^-0.5.
    std = width ** -0.5
    self.qkv = nnx.Linear(width, 3 * width, dtype=dtype, kernel_init=_normal(std), rngs=rngs)
    self.out = nnx.Linear(width, width, dtype=dtype,
                          kernel_init=_normal(std * (2 * depth) ** -0.5), rngs=rngs)

  def __call__(self, x, *, causal):
    b, t, w = x.shape
    dh = w // self.heads
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    y = attend(q * dh ** -0.5, k, v, causal=causal)
    return self.out(y.reshape(b, t, w))


def attend(q, k, v, *, causal):
  """softmax(q k^T [+ causal mask]) v over [batch, tokens, heads, head_dim] (q pre-scaled).

  Written as two einsums rather than `jax.nn.dot_product_attention`: on
  XLA:CPU this lowers with fewer layout copies, and the demo model's train step
  ran ~8% faster (benchmarks/train_throughput.py). The softmax runs in float32.
  """
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  if causal:
    t = q.shape[1]
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v)


class Block(nnx.Module):
  """One pre-LN residual attention block."""

  def __init__(self, width, heads, *, depth, mlp_ratio, act, dtype, rngs):
    self.ln_1 = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.attn = Attention(width, heads, depth=depth, dtype=dtype, rngs=rngs)
    self.ln_2 = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    hidden = int(width * mlp_ratio)
    self.c_fc = nnx.Linear(width, hidden, dtype=dtype, kernel_init=_normal((2 * width) ** -0.5),
                           rngs=rngs)
    self.c_proj = nnx.Linear(hidden, width, dtype=dtype,
                             kernel_init=_normal(width ** -0.5 * (2 * depth) ** -0.5), rngs=rngs)
    self.act = ACTIVATIONS[act]

  def __call__(self, x, causal=False):
    x = x + self.attn(self.ln_1(x), causal=causal)
    return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


class Transformer(nnx.Module):
  """A stack of blocks; `remat` recomputes each block's activations in the backward pass."""

  def __init__(self, width, depth, heads, *, mlp_ratio=4.0, act="quick_gelu",
               dtype=jnp.float32, remat=False, rngs):
    if act not in ACTIVATIONS:
      raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
    self.blocks = nnx.List([
        Block(width, heads, depth=depth, mlp_ratio=mlp_ratio, act=act, dtype=dtype, rngs=rngs)
        for _ in range(depth)])
    self.remat = remat

  def __call__(self, x, *, causal=False):
    for block in self.blocks:
      if self.remat:
        x = nnx.remat(lambda blk, y: blk(y, causal), static_argnums=())(block, x)
      else:
        x = block(x, causal)
    return x
