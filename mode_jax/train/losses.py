"""Contrastive losses over the global batch.

Inside `jax.jit` the embeddings are global arrays sharded over the batch, so
the similarity matrix below already pairs every image with every caption of
every device: each device gets all the others' negatives, with the gathers
and reductions placed by XLA from the shardings (no hand-written all_gather).
"""

import jax
import jax.numpy as jnp


def softmax_clip_loss(img, txt, scale):
  """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropy.

  img, txt: [B, E] L2-normalised float32; scale: exp(logit_scale).
  """
  logits = scale * img @ txt.T
  labels = jnp.arange(logits.shape[0])
  i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], 1)
  t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], 0)
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def sigmoid_clip_loss(img, txt, scale, bias):
  """SigLIP (Zhai et al. 2023): independent binary terms, +1 on the diagonal, -1 off it.

  Normalised by the batch size, as SigLIP does (sum over pairs / B).
  """
  logits = scale * img @ txt.T + bias
  signs = 2 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


LOSSES = {"softmax": softmax_clip_loss, "sigmoid": sigmoid_clip_loss}


def check_name(loss_name):
  if loss_name not in LOSSES:
    raise ValueError(f"config.loss={loss_name!r}: use one of {sorted(LOSSES)}")


def clip_loss(loss_name, img, txt, scale, bias):
  """The loss named by config.loss over the global batch (bias is used by sigmoid only)."""
  check_name(loss_name)
  if loss_name == "sigmoid":
    return sigmoid_clip_loss(img, txt, scale, bias)
  return softmax_clip_loss(img, txt, scale)


def contrastive_accuracy(img, txt):
  """Fraction of images whose own caption is the top match in the batch."""
  return jnp.mean(jnp.argmax(img @ txt.T, axis=1) == jnp.arange(img.shape[0]))
