"""ViT image tower in the OpenAI CLIP layout.

patch embedding (no bias) -> [class token; patches] + learned positions ->
ln_pre -> pre-LN blocks -> ln_post on the class token -> projection (no bias).
The patch embedding is a reshape plus one matmul, which equals OpenAI's
stride-p convolution (the converter reorders the conv kernel accordingly).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mode_jax import constants
from mode_jax.models import roles
from mode_jax.models.transformer import Transformer

_MEAN = np.asarray(constants.IMAGE_MEAN, np.float32) * 255
_INV_STD = 1 / (np.asarray(constants.IMAGE_STD, np.float32) * 255)


def normalize_uint8(images):
  """uint8 [..., 3] -> float32 with OpenAI CLIP mean/std, on the device.

  Images travel host -> device as uint8 (4x fewer bytes than float32) and the
  host does no per-pixel arithmetic.
  """
  return (images.astype(jnp.float32) - _MEAN) * _INV_STD


class VisionTransformer(nnx.Module):

  def __init__(self, *, image_size, patch_size, width, depth, heads, embed_dim,
               mlp_ratio=4.0, act="quick_gelu", dtype=jnp.float32, remat="none",
               attention="auto", scan_layers=False, rngs):
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    self.patch_size = patch_size
    self.dtype = dtype
    grid = image_size // patch_size
    scale = width ** -0.5
    self.patch_embed = nnx.Linear(3 * patch_size * patch_size, width, use_bias=False,
                                  dtype=dtype, rngs=rngs, **roles.linear(bias=False))
    self.class_embedding = nnx.Param(scale * nnx.initializers.normal(1.0)(rngs.params(), (width,)),
                                     **roles.meta(roles.CLASS_TOKEN))
    self.positional_embedding = nnx.Param(
        scale * nnx.initializers.normal(1.0)(rngs.params(), (grid * grid + 1, width)),
        **roles.meta(roles.POSITION))
    self.ln_pre = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs, **roles.layer_norm())
    self.transformer = Transformer(width, depth, heads, mlp_ratio=mlp_ratio, act=act,
                                   dtype=dtype, remat=remat, attention=attention,
                                   scan_layers=scan_layers, tokens=grid * grid + 1, rngs=rngs)
    self.ln_post = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs, **roles.layer_norm())
    self.proj = nnx.Param(scale * nnx.initializers.normal(1.0)(rngs.params(), (width, embed_dim)),
                          **roles.meta(roles.KERNEL))

  def __call__(self, images):
    """images: [B, H, W, 3] uint8 (normalised here) or normalised floats -> [B, embed_dim]."""
    if images.dtype == jnp.uint8:
      images = normalize_uint8(images)
    b, h, w, c = images.shape
    p = self.patch_size
    x = images.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
    x = self.patch_embed(x)
    cls = jnp.broadcast_to(self.class_embedding.astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)
    x = self.transformer(self.ln_pre(x), causal=False)
    return self.ln_post(x[:, 0]) @ self.proj.astype(x.dtype)
