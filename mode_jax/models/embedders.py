"""Plain embedding callables from a CLIP model, the interface evaluators consume.

Evaluators take `embed_images(np [B, H, W, 3]) -> [B, E]` and
`embed_texts(list[str]) -> [B, E]` (both L2-normalised) rather than a model,
so they work for any expert, the dense seed or a converted checkpoint.
"""

from __future__ import annotations

import numpy as np
from flax import nnx


@nnx.jit
def _encode_image(model, images):
  return model.encode_image(images)


@nnx.jit
def _encode_text(model, tokens):
  return model.encode_text(tokens)


def make_embedders(model, tokenizer, *, context_length: int, batch_size: int = 256):
  """Returns (embed_images, embed_texts) for `model`; batches are padded to one shape."""

  def batched(fn, x):
    outs = []
    for i in range(0, len(x), batch_size):
      chunk = x[i:i + batch_size]
      n = len(chunk)
      if n < batch_size:  # pad to a fixed shape: one compilation
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
      outs.append(np.asarray(fn(model, chunk))[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

  def embed_images(images):
    return batched(_encode_image, np.asarray(images, np.float32))

  def embed_texts(texts):
    return batched(_encode_text, tokenizer(list(texts), context_length=context_length))

  return embed_images, embed_texts
