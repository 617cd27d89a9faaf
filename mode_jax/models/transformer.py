"""The pre-LN residual transformer shared by both CLIP towers (OpenAI CLIP layout).

Block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), mlp = c_fc -> act -> c_proj.
Attention keeps q, k and v in one fused `qkv` projection (one matmul instead of
three; the OpenAI state dict stores them fused as `in_proj_weight` too).
Compute runs in `dtype` (bfloat16 on accelerators) with float32 parameters.

Three knobs, all from `config.model` (see clip.py):
  attention    which kernel computes softmax(q k^T) v (ATTENTION; "auto" picks per backend)
  remat        what the backward pass recomputes (REMAT_POLICIES)
  scan_layers  stack the blocks' parameters on a leading depth axis and run one
               compiled block under a scan: compile time stops growing with depth
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from mode_jax import constants
from mode_jax.models import roles


def quick_gelu(x):
  """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(constants.QUICK_GELU_ALPHA * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# --- attention kernels ----------------------------------------------------------------
# einsum      two einsums, float32 softmax (attend_einsum): fastest on XLA:CPU
# xla         jax.nn.dot_product_attention(implementation="xla"): XLA's own fusion
# cudnn       cuDNN flash attention (GPU, bf16/fp16 only)
# pallas_tpu  the Pallas flash kernel, jax.experimental.pallas.ops.tpu (TPU only;
#             tokens are padded to a multiple of constants.TPU_FLASH_BLOCK)
ATTENTION = ("auto", "einsum", "xla", "cudnn", "pallas_tpu")
ATTENTION_PLATFORM = {"cudnn": "gpu", "pallas_tpu": "tpu"}   # kernels tied to one backend


def resolve_attention(name, *, backend, dtype, head_dim, tokens) -> str:
  """'auto' -> the kernel for this backend and shape; any other name is returned as is.

  CPU keeps einsum (see attend_einsum). GPU takes cuDNN flash when it accepts
  the dtype and head width, else XLA. TPU takes the Pallas kernel when the
  tokens tile its blocks without padding; CLIP's token counts (50, 197, 257
  image; 77 text) never do, so "auto" on TPU runs XLA's attention for CLIP
  ("pallas_tpu" by name pads, at up to 6.5x the score entries for B/32).
  """
  if name != "auto":
    return name
  if backend == "gpu":
    fits = (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
            and head_dim % constants.CUDNN_HEAD_DIM_MULTIPLE == 0
            and head_dim <= constants.CUDNN_MAX_HEAD_DIM)
    return "cudnn" if fits else "xla"
  if backend == "tpu":
    return "pallas_tpu" if tokens and tokens % constants.TPU_FLASH_BLOCK == 0 else "xla"
  return "einsum"


def attend(q, k, v, *, causal, impl="einsum"):
  """softmax(q k^T / sqrt(head_dim) [+ causal mask]) v over [batch, tokens, heads, head_dim]."""
  scale = q.shape[-1] ** -0.5
  if impl == "einsum":
    return attend_einsum(q * scale, k, v, causal=causal)
  if impl == "pallas_tpu":
    return attend_pallas_tpu(q, k, v, causal=causal, scale=scale)
  return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                      implementation=impl)


def attend_pallas_tpu(q, k, v, *, causal, scale):
  """attend() with the Pallas TPU flash kernel, tokens padded up to its block size.

  The padding gets segment id 0 and the tokens 1, so neither attends to the
  other (the kernel masks across segments); the padded rows are dropped.
  """
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
  b, t = q.shape[:2]
  pad = -t % constants.TPU_FLASH_BLOCK
  bhtd = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  ids = jnp.broadcast_to((jnp.arange(t + pad) < t).astype(jnp.int32), (b, t + pad))
  y = tpu_flash.flash_attention(bhtd(q), bhtd(k), bhtd(v), causal=causal, sm_scale=scale,
                                segment_ids=tpu_flash.SegmentIds(q=ids, kv=ids) if pad else None)
  return y.transpose(0, 2, 1, 3)[:, :t]


def attend_einsum(q, k, v, *, causal):
  """attend() as two einsums with q pre-scaled; the softmax runs in float32.

  On XLA:CPU this lowers with fewer layout copies than
  `jax.nn.dot_product_attention`, and the demo model's train step ran ~8%
  faster (benchmarks/train_throughput.py).
  """
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  if causal:
    t = q.shape[1]
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, jnp.finfo(jnp.float32).min)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v)


# --- rematerialisation ----------------------------------------------------------------
# What each block keeps for the backward pass (jax.checkpoint_policies); the
# rest is recomputed. "qkv" and "attention" are checkpoint_name tags in Attention.
_cp = jax.checkpoint_policies
REMAT_POLICIES = {
    "none": None,                        # no remat: keep every activation
    "full": _cp.nothing_saveable,        # keep only each block's input
    "dots_saveable": _cp.dots_saveable,  # keep every matmul output, recompute elementwise ops
    # keep the weight matmuls (qkv, out, MLP); recompute attention's batched einsums
    "dots_with_no_batch_dims_saveable": _cp.dots_with_no_batch_dims_saveable,
    # keep q, k, v and the attention output; recompute LayerNorms and the 4x-wide MLP
    "save_attention": _cp.save_only_these_names("qkv", "attention"),
}


def remat_name(value) -> str:
  """Older configs set remat to a bool: True meant "full", False "none"."""
  if isinstance(value, bool):
    return "full" if value else "none"
  return value


def _normal(std):
  return nnx.initializers.normal(stddev=std)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection; `impl` names the kernel."""

  def __init__(self, width, heads, *, depth, dtype, impl="einsum", rngs):
    if width % heads:
      raise ValueError(f"width {width} is not divisible by heads {heads}")
    self.heads = heads
    self.impl = impl
    # OpenAI CLIP init: attn std width^-0.5, out-proj scaled by (2 depth)^-0.5.
    std = width ** -0.5
    self.qkv = nnx.Linear(width, 3 * width, dtype=dtype, kernel_init=_normal(std), rngs=rngs,
                          **roles.linear())
    self.out = nnx.Linear(width, width, dtype=dtype,
                          kernel_init=_normal(std * (2 * depth) ** -0.5), rngs=rngs,
                          **roles.linear())

  def __call__(self, x, *, causal):
    b, t, w = x.shape
    qkv = checkpoint_name(self.qkv(x), "qkv").reshape(b, t, 3, self.heads, w // self.heads)
    y = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=causal, impl=self.impl)
    return self.out(checkpoint_name(y, "attention").reshape(b, t, w))


class Block(nnx.Module):
  """One pre-LN residual attention block."""

  def __init__(self, width, heads, *, depth, mlp_ratio, act, dtype, attention="einsum", rngs):
    self.ln_1 = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs, **roles.layer_norm())
    self.attn = Attention(width, heads, depth=depth, dtype=dtype, impl=attention, rngs=rngs)
    self.ln_2 = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs, **roles.layer_norm())
    hidden = int(width * mlp_ratio)
    self.c_fc = nnx.Linear(width, hidden, dtype=dtype, kernel_init=_normal((2 * width) ** -0.5),
                           rngs=rngs, **roles.linear())
    self.c_proj = nnx.Linear(hidden, width, dtype=dtype,
                             kernel_init=_normal(width ** -0.5 * (2 * depth) ** -0.5), rngs=rngs,
                             **roles.linear())
    self.act = ACTIVATIONS[act]

  def __call__(self, x, causal=False):
    x = x + self.attn(self.ln_1(x), causal=causal)
    return x + self.c_proj(self.act(self.c_fc(self.ln_2(x))))


class Transformer(nnx.Module):
  """A stack of `depth` blocks.

  Loop layout: `blocks` is an nnx.List, parameters blocks.{i}.*. Scanned
  layout (`scan_layers`): `blocks` is one Block whose parameters carry a
  leading depth axis (made by nnx.vmap), applied with nnx.scan. `attention`
  is resolved here, once, for this backend and `tokens` (the tower's sequence
  length); `remat` names a REMAT_POLICIES entry applied to each block.
  """

  def __init__(self, width, depth, heads, *, mlp_ratio=4.0, act="quick_gelu",
               dtype=jnp.float32, remat="none", attention="auto", scan_layers=False,
               tokens=None, rngs):
    if act not in ACTIVATIONS:
      raise ValueError(f"unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
    impl = resolve_attention(attention, backend=jax.default_backend(), dtype=dtype,
                             head_dim=width // heads, tokens=tokens)
    make = lambda rngs: Block(width, heads, depth=depth, mlp_ratio=mlp_ratio, act=act,
                              dtype=dtype, attention=impl, rngs=rngs)
    if scan_layers:
      self.blocks = nnx.split_rngs(splits=depth)(nnx.vmap(make, in_axes=0, out_axes=0))(rngs)
    else:
      self.blocks = nnx.List([make(rngs) for _ in range(depth)])
    self.remat = remat_name(remat)
    self.scan_layers = scan_layers

  def __call__(self, x, *, causal=False):
    body = lambda block, y: block(y, causal)
    if self.remat != "none":
      # Inside a scan the loop already keeps XLA from merging recomputation away.
      body = nnx.remat(body, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
    if self.scan_layers:
      step = nnx.scan(lambda y, block: body(block, y), in_axes=(nnx.Carry, 0),
                      out_axes=nnx.Carry)
      return step(x, self.blocks)
    for block in self.blocks:
      x = body(block, x)
    return x
