"""Zero-shot classification (DESIGN.md step 7): class features, raw cosine logits, accuracy.

Logits are raw cosine similarities, not scaled and not softmaxed, because
the MoDE ensemble (step 8) sums experts' cosines with routing weights; a
per-expert logit scale or softmax would change what is being averaged.
Metrics are fractions in [0, 1]. A prediction's rank is the number of classes
scoring strictly higher than the true class, so exact ties count in favour of
the true class (float ties are vanishingly rare with real features).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mode_jax.eval import features

class_features = features.class_features   # re-exported: step 7's template averaging


def zeroshot_logits(embed_images: Callable, class_features,
                    batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
  """(logits float32 [N_img, N_cls] raw cosines, labels int32 [N_img]) over all batches.

  `batches` yields (images uint8 [B, H, W, 3] as loader.eval_batches gives, labels int [B]).
  """
  return features.image_logits(embed_images, class_features, batches, desc="zero-shot")


@jax.jit
def true_class_rank(logits, labels):
  """Per image, how many classes score strictly above the true class (0 = top-1 correct)."""
  true = jnp.take_along_axis(logits, labels[:, None], axis=1)
  return jnp.sum(logits > true, axis=1)


def accuracy(logits, labels, k: int = 1) -> float:
  """Top-k accuracy."""
  return float(np.mean(np.asarray(true_class_rank(logits, labels)) < k))


def mean_per_class_accuracy(logits, labels) -> float:
  """Top-1 recall of each class present in `labels`, averaged over those classes."""
  labels = np.asarray(labels)
  hit = np.asarray(true_class_rank(logits, labels)) == 0
  classes = np.unique(labels)
  return float(np.mean([hit[labels == c].mean() for c in classes]))


def metrics(logits, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """{'top1', 'top5', 'mean_per_class'} of one task's logits."""
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  rank = np.asarray(true_class_rank(logits, labels))
  out = {f"top{k}": float(np.mean(rank < k)) for k in ks}
  y = np.asarray(labels)
  out["mean_per_class"] = float(np.mean([(rank[y == c] == 0).mean() for c in np.unique(y)]))
  return out
