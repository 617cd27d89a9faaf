"""Image-text retrieval: recall@K with several captions per image, from logits.

The caption corpus is flat: caption j belongs to image `txt_to_img[j]`
(e.g. 5 per image for COCO and Flickr). Image->text: an image is a hit at K
when any of its captions is among the K highest-scoring captions.
Text->image: a caption is a hit when its image is among the K highest-scoring
images. A rank counts candidates scoring strictly higher than the (best)
positive, so exact ties favour the positive. Recalls are fractions in [0, 1].

The MoDE ensemble gives image->text and text->image different logits (corpus
weights vs per-query weights, docs/method.md step 9), hence separate functions.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mode_jax.eval import features

KS = (1, 5, 10)
TASK_METRIC = "mean_R@1"   # a retrieval task's score: mean of image->text and text->image R@1


def caption_index(captions_per_image: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
  """[[c00, c01], [c10]] -> (['c00', 'c01', 'c10'], txt_to_img int32 [0, 0, 1])."""
  texts = [c for caps in captions_per_image for c in caps]
  txt_to_img = np.repeat(np.arange(len(captions_per_image), dtype=np.int32),
                         [len(c) for c in captions_per_image])
  return texts, txt_to_img


def retrieval_logits(embed_images: Callable, embed_texts: Callable, batches: Iterable,
                     captions_per_image: Sequence[Sequence[str]]):
  """(logits float32 [N_img, N_txt] raw cosines, labels int32 [N_img], txt_to_img int32 [N_txt],
  txt_index int32 [N_txt]).

  `captions_per_image[p]` are the captions of the sample at position p of
  the evaluation set (the loader's index order); `batches` yields (images,
  labels[, index]). Images the loader drops (unreadable) are dropped with
  their captions, so every caption stays with its own image. txt_index[j]
  is column j's caption in caption_index order: its row of the task's
  metadata embeddings (eval/meta_emb, one row per caption of every sample).
  """
  texts, txt_to_pos = caption_index(captions_per_image)
  txt = features.embed_texts_batched(embed_texts, texts, desc="captions")
  txt = np.asarray(features.l2_normalize(jnp.asarray(txt)))
  logits, labels, pos = features.image_logits(embed_images, txt, batches, desc="retrieval",
                                              return_index=True)
  if len(pos) and pos.max() >= len(captions_per_image):
    raise ValueError(f"image position {pos.max()} but captions for "
                     f"{len(captions_per_image)} images")
  row = np.full(len(captions_per_image), -1, np.int64)
  row[pos] = np.arange(len(pos))
  keep = row[txt_to_pos] >= 0          # captions of the images that were read
  return (logits[:, keep], labels, row[txt_to_pos[keep]].astype(np.int32),
          np.flatnonzero(keep).astype(np.int32))


@jax.jit
def _i2t_rank(logits, txt_to_img):
  n_img = logits.shape[0]
  positive = txt_to_img[None, :] == jnp.arange(n_img)[:, None]
  best = jnp.max(jnp.where(positive, logits, -jnp.inf), axis=1, keepdims=True)
  has = jnp.any(positive, axis=1)
  return jnp.sum(logits > best, axis=1), has


@jax.jit
def _t2i_rank(logits, txt_to_img):
  true = jnp.take_along_axis(logits, txt_to_img[None, :], axis=0)   # [1, N_txt]
  return jnp.sum(logits > true, axis=0)


def image_to_text_recall(logits, txt_to_img, ks: Sequence[int] = KS) -> dict[str, float]:
  """{'i2t_R@k'}: images without any caption are left out."""
  rank, has = _i2t_rank(jnp.asarray(logits, jnp.float32), jnp.asarray(txt_to_img, jnp.int32))
  rank = np.asarray(rank)[np.asarray(has)]
  return {f"i2t_R@{k}": float(np.mean(rank < k)) for k in ks}


def text_to_image_recall(logits, txt_to_img, ks: Sequence[int] = KS) -> dict[str, float]:
  """{'t2i_R@k'} over all captions."""
  rank = np.asarray(_t2i_rank(jnp.asarray(logits, jnp.float32),
                              jnp.asarray(txt_to_img, jnp.int32)))
  return {f"t2i_R@{k}": float(np.mean(rank < k)) for k in ks}


def recall(logits, txt_to_img, ks: Sequence[int] = KS, t2i_logits=None) -> dict[str, float]:
  """Both directions; `t2i_logits` (default `logits`) scores text->image."""
  out = image_to_text_recall(logits, txt_to_img, ks)
  out.update(text_to_image_recall(logits if t2i_logits is None else t2i_logits, txt_to_img, ks))
  return out
