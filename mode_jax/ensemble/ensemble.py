"""The MoDE ensemble: routed sums of experts' raw cosine logits, and its baselines.

expert_logits is float32 [n, N_img, N_cls] (or [n, N_img, N_txt] for
retrieval): expert c's raw cosine similarities (docs/method.md step 7).

* MoDE: logits = sum_c w_c logits_c with routing weights w (step 8).
* uniform: the plain mean over experts.
* best single: the expert with the highest score on the task. This is an
  oracle choice (it looks at test labels) and is reported as such.
* prior selection: the expert the routing weights favour most, used alone
  (paper Sec. 4.4 / Table 8: choose experts from class names, no labels).
* progressive: the first k experts of cluster/expert_order.json (widest
  spread first), their weights renormalised over that subset. Renormalising
  w over a subset S equals the routing softmax over u restricted to S, so it
  is exactly "routing over the subset": classes whose nearest fine center
  belongs to an expert outside S simply contribute nothing.
* retrieval: image->text uses one corpus-level weight vector; text->image
  uses per-query weights, one per caption (paper Eq. 7, step 9).
* combine_features*: the same MoDE logits built straight from the experts'
  features as one matmul over the concatenated n*E axis, for evaluation
  without a stored-logits pass (benchmarks/routing.py: no overhead).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def combine(expert_logits, weights):
  """sum_c weights[c] * expert_logits[c] -> [N_img, N_cls]; one fused pass over the logits."""
  weights = weights.astype(jnp.float32)
  out = weights[0] * expert_logits[0]
  for c in range(1, expert_logits.shape[0]):
    out = out + weights[c] * expert_logits[c]
  return out


def uniform(expert_logits):
  """The plain average of the experts (the 'all_unit' baseline of the reference)."""
  n = expert_logits.shape[0]
  return combine(expert_logits, jnp.full((n,), 1.0 / n, jnp.float32))


@jax.jit
def combine_per_query(expert_logits, query_weights):
  """Text->image: column t (a caption query) is sum_c query_weights[t, c] * logits_c[:, t]."""
  q = query_weights.astype(jnp.float32)
  out = q[None, :, 0] * expert_logits[0]
  for c in range(1, expert_logits.shape[0]):
    out = out + q[None, :, c] * expert_logits[c]
  return out


@jax.jit
def combine_features(image_feats, text_feats, weights):
  """MoDE logits straight from features [n, N_img, E], [n, N_cls, E]: one matmul over the
  concatenated n*E axis, so the ensemble costs nothing beyond the experts' logits (no
  per-expert logits are materialised). Equals combine(stack of img_c @ txt_c^T, weights)."""
  scaled = image_feats.astype(jnp.float32) * weights.astype(jnp.float32)[:, None, None]
  return jnp.einsum("cie,cke->ik", scaled, text_feats.astype(jnp.float32))


@jax.jit
def combine_features_per_query(image_feats, text_feats, query_weights):
  """Text->image from features: caption t's features scaled by its weights [N_txt, n]."""
  scaled = text_feats.astype(jnp.float32) * query_weights.T.astype(jnp.float32)[:, :, None]
  return jnp.einsum("cie,cke->ik", image_feats.astype(jnp.float32), scaled)


def restrict(weights, subset: Sequence[int]):
  """Weights ([n] or [Q, n]) zeroed outside `subset` and renormalised over it."""
  w = np.asarray(weights, np.float64)
  mask = np.zeros(w.shape[-1], bool)
  mask[list(subset)] = True
  w = np.where(mask, w, 0.0)
  return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def prior_selection(weights) -> int:
  """The expert with the largest routing weight (ties: the lowest id)."""
  return int(np.argmax(np.asarray(weights)))


def best_single(scores: Sequence[float]) -> int:
  """Oracle: the expert with the best test score on this task."""
  return int(np.argmax(np.asarray(scores)))


def progressive(expert_logits, order: Sequence[int], weights) -> Iterator[tuple[int, object]]:
  """Yields (k, logits of MoDE over the first k experts of `order`) for k = 1..n."""
  for k in range(1, len(order) + 1):
    yield k, combine(expert_logits, restrict(weights, order[:k]))


def retrieval_ensemble(expert_logits, corpus_weights, query_weights):
  """(image->text logits with corpus weights, text->image logits with per-query weights)."""
  return (combine(expert_logits, corpus_weights),
          combine_per_query(expert_logits, query_weights))


def progressive_retrieval(expert_logits, order, corpus_weights, query_weights):
  """Yields (k, i2t logits, t2i logits) over the first k experts of `order`."""
  for k in range(1, len(order) + 1):
    s = order[:k]
    yield (k, combine(expert_logits, restrict(corpus_weights, s)),
           combine_per_query(expert_logits, restrict(query_weights, s)))
