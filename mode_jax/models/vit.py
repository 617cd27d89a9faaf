"""ViT image tower in the OpenAI CLIP layout.

patch embedding (no bias) -> [class token; patches] + learned positions ->
ln_pre -> pre-LN blocks -> ln_post on the class token -> projection (no bias).
The patch embedding is a reshape plus one matmul, which equals OpenAI's
stride-p convolution (the converter reorders the conv kernel accordingly).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mode_jax.models.transformer import Transformer


class VisionTransformer(nnx.Module):

  def __init__(self, *, image_size, patch_size, width, depth, heads, embed_dim,
               mlp_ratio=4.0, act="quick_gelu", dtype=jnp.float32, remat=False, rngs):
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    self.patch_size = patch_size
    self.dtype = dtype
    grid = image_size // patch_size
    scale = width ** -0.5
    self.patch_embed = nnx.Linear(3 * patch_size * patch_size, width, use_bias=False,
                                  dtype=dtype, rngs=rngs)
    self.class_embedding = nnx.Param(scale * nnx.initializers.normal(1.0)(rngs.params(), (width,)))
    self.positional_embedding = nnx.Param(
        scale * nnx.initializers.normal(1.0)(rngs.params(), (grid * grid + 1, width)))
    self.ln_pre = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.transformer = Transformer(width, depth, heads, mlp_ratio=mlp_ratio, act=act,
                                   dtype=dtype, remat=remat, rngs=rngs)
    self.ln_post = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.proj = nnx.Param(scale * nnx.initializers.normal(1.0)(rngs.params(), (width, embed_dim)))

  def __call__(self, images):
    """images: [B, H, W, 3] normalised floats -> [B, embed_dim] (not normalised)."""
    b, h, w, c = images.shape
    p = self.patch_size
    x = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
    x = self.patch_embed(x)
    cls = jnp.broadcast_to(self.class_embedding.astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)
    x = self.transformer(self.ln_pre(x), causal=False)
    return self.ln_post(x[:, 0]) @ self.proj.astype(x.dtype)
