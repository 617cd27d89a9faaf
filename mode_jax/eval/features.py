"""Shared pieces of the evaluators: prompt pooling and cosine logits.

Evaluators take plain callables (`embed_images`, `embed_texts`, see
mode_jax/models/embedders.py), so they work for any expert, the dense seed,
a converted checkpoint, or the sentence encoder that embeds class metadata.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mode_jax.eval import templates as templates_lib
from mode_jax.models import clip as clip_lib

EPS = clip_lib.L2_EPS
l2_normalize = clip_lib.l2_normalize   # one normalisation for training, evaluation, routing


@functools.partial(jax.jit, static_argnames="n_groups")
def pool_prompts(prompt_emb, group_ids, n_groups: int):
  """docs/method.md step 7: normalise every prompt, average per group (class), re-normalise."""
  e = l2_normalize(prompt_emb.astype(jnp.float32))
  total = jax.ops.segment_sum(e, group_ids, num_segments=n_groups)
  return l2_normalize(total)   # the mean's direction; the count cancels


def embed_texts_batched(embed_texts: Callable, texts: Sequence[str], chunk: int = 2048,
                        desc: str = "texts") -> np.ndarray:
  """Embeds many strings in chunks with a progress bar -> float32 [len(texts), E]."""
  out = []
  for i in tqdm(range(0, len(texts), chunk), desc=desc, leave=False,
                disable=len(texts) <= chunk):
    out.append(np.asarray(embed_texts(list(texts[i:i + chunk])), np.float32))
  return np.concatenate(out)


def class_features(embed_texts: Callable, classnames, templates: Sequence[str], *,
                   chunk: int = 2048) -> np.ndarray:
  """Class feature per class: mean over names x templates of normalised prompt features,
  re-normalised -> float32 [N_cls, E]. Also makes metadata embeddings e_l (step 8) when
  `embed_texts` is the sentence encoder."""
  prompts = templates_lib.class_prompts(classnames, templates)
  flat = [p for ps in prompts for p in ps]
  ids = np.repeat(np.arange(len(prompts), dtype=np.int32), [len(ps) for ps in prompts])
  emb = embed_texts_batched(embed_texts, flat, chunk, desc="class prompts")
  return np.asarray(pool_prompts(emb, ids, len(prompts)))


def _cosine(image_feats, text_feats):
  return l2_normalize(image_feats.astype(jnp.float32)) @ text_feats.astype(jnp.float32).T


_cosine_jit = jax.jit(_cosine)


def cosine_logits(image_feats, text_feats, pad_to: int | None = None) -> np.ndarray:
  """Raw cosine similarities [B, T] (no logit scale, no softmax; docs/method.md step 7).

  Padded to `pad_to` rows so every batch shares one compile. The features
  were already computed over all devices (models/embedders.py); this is a
  small matmul. `text_feats` are expected L2-normalised; image features are
  re-normalised.
  """
  image_feats = np.asarray(image_feats, np.float32)
  b = len(image_feats)
  target = max(b, pad_to or 0)
  if target > b:
    pad = np.zeros((target - b, image_feats.shape[1]), np.float32)
    pad[:, 0] = 1.0
    image_feats = np.concatenate([image_feats, pad])
  return np.asarray(_cosine_jit(image_feats, jnp.asarray(text_feats, jnp.float32)))[:b]


def gather_rows(index: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  """Rows of every host, in `index` order, on every host; rows with index < 0 dropped.

  Each host passes its rows (the same number on every host, as
  loader.eval_batches gives) and their positions in the evaluation set.
  """
  from mode_jax import distributed
  index = distributed.allgather(np.asarray(index, np.int64)).reshape(-1)
  arrays = [distributed.allgather(a) for a in arrays]
  arrays = [a.reshape((-1,) + a.shape[2:]) for a in arrays]
  keep = np.flatnonzero(index >= 0)
  order = keep[np.argsort(index[keep], kind="stable")]
  return (index[order],) + tuple(a[order] for a in arrays)


def image_logits(embed_images: Callable, text_feats, batches: Iterable, *,
                 desc: str = "images", return_index: bool = False):
  """Streams batches through `embed_images` -> (logits [N, T], labels [N][, index [N]]).

  `batches` yields (images, labels) or (images, labels, index). With an
  index (each row's position in the evaluation set, -1 for rows to drop:
  padding, bad samples) the rows of every host are gathered in index order,
  so every host returns the whole set (multi-host evaluation).
  `return_index`: also the position of every returned row (0..N-1 without
  an index), which is how a caller lines up per-sample data (captions).
  """
  logits, labels, index, pad_to = [], [], [], None
  text_feats = jnp.asarray(text_feats, jnp.float32)
  for batch in tqdm(batches, desc=desc, leave=False):
    images, y = batch[0], batch[1]
    feats = np.asarray(embed_images(np.asarray(images)), np.float32)   # uint8 or floats
    pad_to = pad_to or len(feats)   # the first batch's size: one compile for all
    logits.append(cosine_logits(feats, text_feats, pad_to))
    labels.append(np.asarray(y, np.int32).reshape(-1))
    if len(batch) > 2:
      index.append(np.asarray(batch[2], np.int64).reshape(-1))
  if not logits:
    raise ValueError("no image batches")
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  pos = np.arange(len(logits), dtype=np.int64)
  if index:
    pos, logits, labels = gather_rows(np.concatenate(index), logits, labels)
    if not len(logits):
      raise ValueError("no valid images")
  return (logits, labels, pos) if return_index else (logits, labels)
