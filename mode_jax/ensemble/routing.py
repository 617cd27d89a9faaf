"""Routing weights: how much each data expert counts for a task (docs/method.md steps 8-9).

Per task, from its class-name metadata embeddings e_l [N, D] (sentence
encoder, same as clustering), the fine centers mu_s [m, D] and the fine ->
expert map pi [m]. Two formulas:

* 'reference' (default; MetaCLIP `mode/post_report_ensemble.py`):
    d_l = min_s ||e_l - mu_s||_2 (unsquared), c_l = pi(argmin_s)
    a   = exp(0.5 - sqrt(N)) if N < 10 else 0
    tau = 5 log10(max(10, N - 200))
    u_c = sum_{l: c_l = c} exp((a - d_l) tau)      (0 when no class routes to c)
    w   = softmax(u / 8)
* 'paper' (Sec. 3.3, Eq. 5-6): A_ls = exp(-||e_l - mu_s||^2 / lambda),
  lambda = 0.2 (divided by ln N when N > 200), only each class's nearest
  center kept, A multiplied by exp(0.5 - sqrt(N)) when N < 10;
  w = softmax(u) with u_c = sum_l sum_{s in S_c} A_ls.

`top_k` generalises "nearest center" to the k nearest centers of each class:
every one of them adds its own term (reference: exp((a - d_ls) tau) with the
unsquared distance to that center; paper: A_ls) to the expert that owns it.
k = 1 is exactly the formulas above; paper mode with k = m is the paper's sum
over all centers without the nearest-only filter.

Retrieval (Eq. 7, no reference code): image->text uses one weight vector
from the whole caption corpus (`routing_weights` over the captions);
text->image uses per-query weights (`query_routing_weights`): each query is
scored as a one-class task. In reference mode that is the formula with N = 1
(a = exp(-0.5), tau = 5); in paper mode it is Eq. 7,
p(c|q) propto exp(sum_{s in S_c} A_qs), without the few-class factor.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from clustering import kmeans
from mode_jax import constants as C

MODES = ("reference", "paper")


def reference_shift_and_tau(n_classes: int) -> tuple[float, float]:
  """(a, tau) of the reference formula for a task with N classes (static, Python floats)."""
  a = (math.exp(C.SMALL_TASK_SHIFT - math.sqrt(n_classes))
       if n_classes < C.SMALL_TASK_CLASSES else 0.0)
  tau = C.TAU_SCALE * math.log10(max(C.TAU_MIN_ARG, n_classes - C.TAU_OFFSET))
  return a, tau


def paper_lambda_and_prior(n_classes: int, query: bool = False) -> tuple[float, float]:
  """(lambda, multiplier of A) of the paper formula; a retrieval query gets no prior."""
  lam = C.PAPER_LAMBDA
  if n_classes > C.PAPER_LARGE_TASK_CLASSES:
    lam /= math.log(n_classes)
  prior = 1.0
  if not query and n_classes < C.SMALL_TASK_CLASSES:
    prior = math.exp(C.SMALL_TASK_SHIFT - math.sqrt(n_classes))
  return lam, prior


def nearest_centers(class_emb, fine_centers, top_k: int = 1):
  """(squared distances [N, k], center ids [N, k]) of each class's k nearest fine centers."""
  e = class_emb.astype(jnp.float32)
  mu = fine_centers.astype(jnp.float32)
  dot = jnp.matmul(e, mu.T, precision=jax.lax.Precision.HIGHEST)
  d2 = jnp.sum(e * e, -1, keepdims=True) + jnp.sum(mu * mu, -1)[None, :] - 2.0 * dot
  d2 = jnp.maximum(d2, 0.0)
  if top_k == 1:
    best, idx = kmeans.min_argmin_rows(d2)
    return best[:, None], idx[:, None]
  neg, idx = jax.lax.top_k(-d2, top_k)
  return -neg, idx


def _task_weights(class_emb, fine_centers, fine_to_expert, n_experts, mode, top_k, query):
  """Weights [n] of one task with class embeddings [N, D]."""
  n_classes = class_emb.shape[0]
  d2, idx = nearest_centers(class_emb, fine_centers, top_k)
  experts = fine_to_expert[idx]                                   # [N, k]
  if mode == "reference":
    a, tau = reference_shift_and_tau(n_classes)
    terms = jnp.exp((a - jnp.sqrt(d2)) * tau)
    temperature = C.ENSEMBLE_TEMPERATURE
  elif mode == "paper":
    lam, prior = paper_lambda_and_prior(n_classes, query)
    terms = prior * jnp.exp(-d2 / lam)
    temperature = 1.0
  else:
    raise ValueError(f"routing mode {mode!r}; expected one of {MODES}")
  u = jnp.zeros((n_experts,), jnp.float32).at[experts.reshape(-1)].add(terms.reshape(-1))
  return jax.nn.softmax(u / temperature)


@functools.partial(jax.jit, static_argnames=("n_experts", "mode", "top_k"))
def routing_weights(class_emb, fine_centers, fine_to_expert, n_experts: int,
                    mode: str = "reference", top_k: int = 1):
  """Expert weights [n] for a task's class embeddings [N, D], or [T, n] for [T, N, D].

  Tasks batched on a leading axis must share N (vmapped); loop over tasks of
  different sizes (one compile per N).
  """
  fn = functools.partial(_task_weights, fine_centers=fine_centers,
                         fine_to_expert=fine_to_expert.astype(jnp.int32), n_experts=n_experts,
                         mode=mode, top_k=top_k, query=False)
  if class_emb.ndim == 3:
    return jax.vmap(fn)(class_emb)
  return fn(class_emb)


@functools.partial(jax.jit, static_argnames=("n_experts", "mode", "top_k"))
def query_routing_weights(query_emb, fine_centers, fine_to_expert, n_experts: int,
                          mode: str = "reference", top_k: int = 1):
  """Per-query weights [Q, n] for text->image retrieval (Eq. 7): each query a one-class task."""
  fn = functools.partial(_task_weights, fine_centers=fine_centers,
                         fine_to_expert=fine_to_expert.astype(jnp.int32), n_experts=n_experts,
                         mode=mode, top_k=top_k, query=True)
  return jax.vmap(lambda q: fn(q[None, :]))(query_emb)


def task_routing_weights(class_embs: dict, fine_centers, fine_to_expert, n_experts: int,
                         mode: str = "reference", top_k: int = 1) -> dict:
  """{task: weights [n]} for tasks of different sizes (a Python loop; one compile per N)."""
  return {t: routing_weights(jnp.asarray(e), fine_centers, fine_to_expert, n_experts,
                             mode, top_k) for t, e in class_embs.items()}
