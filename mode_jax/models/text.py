"""Text tower in the OpenAI CLIP layout.

token embedding + learned positions -> causal pre-LN blocks -> ln_final ->
the feature at the end-of-text token -> projection (no bias).

Pooling: OpenAI takes the position of the largest token id (the EOT token is
the last id of its vocabulary); `eos_id` instead pools at the first occurrence
of that id, for vocabularies where EOT is not the largest id.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mode_jax.models import roles
from mode_jax.models.transformer import Transformer


class TextTransformer(nnx.Module):

  def __init__(self, *, vocab_size, context_length, width, depth, heads, embed_dim,
               mlp_ratio=4.0, act="quick_gelu", eos_id=None, dtype=jnp.float32, remat="none",
               attention="auto", scan_layers=False, rngs):
    self.context_length = context_length
    self.eos_id = eos_id
    self.dtype = dtype
    # OpenAI CLIP init: token std 0.02, positions std 0.01, projection width^-0.5.
    self.token_embedding = nnx.Embed(vocab_size, width, dtype=dtype,
                                     embedding_init=nnx.initializers.normal(0.02), rngs=rngs,
                                     embedding_metadata=roles.meta(roles.EMBEDDING))
    self.positional_embedding = nnx.Param(
        nnx.initializers.normal(0.01)(rngs.params(), (context_length, width)),
        **roles.meta(roles.POSITION))
    self.transformer = Transformer(width, depth, heads, mlp_ratio=mlp_ratio, act=act,
                                   dtype=dtype, remat=remat, attention=attention,
                                   scan_layers=scan_layers, tokens=context_length, rngs=rngs)
    self.ln_final = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs,
                                  **roles.layer_norm())
    self.text_projection = nnx.Param(
        nnx.initializers.normal(width ** -0.5)(rngs.params(), (width, embed_dim)),
        **roles.meta(roles.KERNEL))

  def __call__(self, tokens):
    """tokens: int [B, L] with L <= context_length -> [B, embed_dim] (not normalised)."""
    t = tokens.shape[1]
    if t > self.context_length:
      raise ValueError(f"{t} tokens exceed the context length {self.context_length}")
    x = self.token_embedding(tokens) + self.positional_embedding[:t].astype(self.dtype)
    x = self.ln_final(self.transformer(x, causal=True))
    if self.eos_id is None:
      pool = jnp.argmax(tokens, axis=-1)
    else:
      pool = jnp.argmax(tokens == self.eos_id, axis=-1)
    x = jnp.take_along_axis(x, pool[:, None, None], axis=1)[:, 0]
    return x @ self.text_projection.astype(x.dtype)


class FeatureText(nnx.Module):
  """A locked text tower (LiT, Zhai et al. 2022): the frozen sentence encoder's caption
  embeddings (config.embed, the ones the clustering reads) in, a trainable linear head out.

  The encoder itself never runs in training: its outputs for the training captions are the
  embed stage's (train/text_inputs.py), and evaluation encodes prompts with the same
  encoder. Only the head (and the image tower) learn; experts fork it like any parameter.
  """

  def __init__(self, *, features: int, embed_dim: int, rngs):
    self.text_projection = nnx.Param(
        nnx.initializers.normal(features ** -0.5)(rngs.params(), (features, embed_dim)),
        **roles.meta(roles.KERNEL))

  def __call__(self, x):
    """x: float [B, features] sentence embeddings -> [B, embed_dim] (not normalised)."""
    if x.ndim != 2 or x.shape[1] != self.text_projection.shape[0]:
      raise ValueError(f"the text tower takes [B, {self.text_projection.shape[0]}] sentence "
                       f"embeddings, not an array of shape {x.shape}")
    return x.astype(jnp.float32) @ self.text_projection.get_value()
