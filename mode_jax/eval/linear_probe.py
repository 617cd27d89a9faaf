"""Linear probe (paper Table 9): multinomial logistic regression on frozen image features.

The objective is full-batch mean cross-entropy + (l2 / 2) * ||W||^2, bias not
penalised, minimised with L-BFGS. sklearn's `LogisticRegression(C=...)`
minimises sum CE + 1 / (2C) * ||W||^2, the same problem scaled by N, so
l2 = 1 / (C * N). A mean (not a sum) keeps one l2 grid meaningful across
datasets of different sizes.

Unlabelled rows (label -1, zeroshot.labelled) neither fit nor score a probe.
Samples enter the loss through a 0/1 weight, so the validation sweep fits the
fit part of the train set without copying the features (up to ~100k x 4k
float32 for concatenated experts) and compiles once per train set shape.
Nothing here is mesh-specific: features sharded by rows over an Auto mesh (as
mode_jax's meshes are) go through the same jnp ops, and W, b come back
replicated. An Explicit mesh would reject the gradient's contraction over the
sharded rows.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from mode_jax.eval import zeroshot

# Log grid over the L2 strength, strongest first so each fit warm-starts from a
# nearby, simpler solution. CLIP (Radford et al. 2021, appendix A.3) instead
# sweeps the strength over 1e-6..1e6 in log space (its released probe refines
# around the best value); one fixed 8-point grid is our simplification, spanning
# W ~ 0 (1e1, on unit-norm features) to nearly unpenalised (1e-6).
L2_GRID = tuple(10.0 ** e for e in range(1, -7, -1))

# Gradient-norm stop of the mean objective. float32 reached it in a CPU check
# (N=20k, D=1024, C=100, l2 down to 1e-6); tests pass 1e-7 to match sklearn.
TOL = 1e-5
MAX_ITER = 1000


class Params(NamedTuple):
  W: jax.Array   # [D, C]
  b: jax.Array   # [C]


def predict(params: Params, x) -> jax.Array:
  """Logits float32 [N, C]."""
  return _logits(params, jnp.asarray(x))


def accuracy(params: Params, x, y) -> float:
  """Top-1 accuracy as a fraction, over the labelled rows."""
  x, y = labelled_rows(x, y, params.W.shape[1])
  return float(np.mean(np.asarray(_hits(params, jnp.asarray(x), jnp.asarray(y, jnp.int32)))))


def fit(x, y, n_classes: int, l2: float, *, max_iter: int = MAX_ITER, tol: float = TOL,
        init: Params | None = None) -> Params:
  """Minimise mean CE + (l2/2)||W||^2 over all of (x [N, D], y int [N]); l2 = 1/(C*N) for sklearn's C.

  `init` warm-starts from an earlier solution (zeros otherwise). Unlabelled rows are left out.
  """
  x, y = labelled_rows(x, y, n_classes)
  x = jnp.asarray(x)
  init = _zeros(x.shape[1], n_classes) if init is None else init
  return _fit(x, jnp.asarray(y, jnp.int32), jnp.ones(x.shape[0], jnp.float32), l2, init,
              max_iter=max_iter, tol=tol)


def labelled_rows(x, y, n_classes: int):
  """(features, labels) of the labelled rows (zeroshot.labelled: -1 has no class to learn)."""
  y = np.asarray(y)
  keep = zeroshot.labelled(y, n_classes)
  if keep.all():
    return x, y
  rows = np.flatnonzero(keep)
  return x[rows], y[rows]


def holdout_split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded stratified split into sorted (train_idx, test_idx), for tasks without a train split.

  Each class sends round(n_c * test_fraction) samples to the test side, clipped
  so that both sides keep min(2, n_c // 2) of it: every class with >= 4 samples
  is seen at least twice in training and in testing. Unlabelled rows go to neither side.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, test = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for c in np.unique(labels[zeroshot.labelled(labels)]):
    idx = rng.permutation(np.flatnonzero(labels == c))
    keep = min(2, len(idx) // 2)
    n_test = int(np.clip(round(len(idx) * test_fraction), keep, len(idx) - keep))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def select_and_fit(x_train, y_train, x_test, y_test, *, n_classes: int,
                   l2_grid: Sequence[float] = L2_GRID, val_fraction: float = 0.2,
                   seed: int = 0, max_iter: int = MAX_ITER, tol: float = TOL,
                   score=None) -> dict:
  """Pick l2 by the validation score on a stratified split of the train set, refit on all
  of it, score the test set.

  `score(logits, labels) -> float` is the task's metric (default top-1
  accuracy; the probe stage passes zeroshot.task_score's, e.g. mean
  per-class accuracy for Pets). Ties go to the larger l2 (the simpler
  model). Unlabelled rows of either set are left out. Returns {"score"
  (test), "l2", "val_scores" {l2: validation score}, "n_train" (refit
  size), "n_fit", "n_val", "n_test"}.
  """
  x_train, y_train = labelled_rows(x_train, y_train, n_classes)
  x_test, y_test = labelled_rows(x_test, y_test, n_classes)
  measure = (lambda p, x, y: accuracy(p, x, y)) if score is None else \
      (lambda p, x, y: float(score(np.asarray(predict(p, x)), np.asarray(y))))
  x_train, x_test = jnp.asarray(x_train), jnp.asarray(x_test)
  y_np = np.asarray(y_train)
  y_train = jnp.asarray(y_np, jnp.int32)
  fit_idx, val_idx = holdout_split(y_np, val_fraction, seed)
  if not len(val_idx) or not len(x_test):
    raise ValueError(f"too few images for a probe: {len(val_idx)} validation and "
                     f"{len(x_test)} test images (a class needs >= 2 on each side)")
  fit_mask = np.zeros(len(y_np), np.float32)
  fit_mask[fit_idx] = 1.0
  fit_mask = jnp.asarray(fit_mask)
  x_val, y_val = x_train[val_idx], y_train[val_idx]

  kw = dict(max_iter=max_iter, tol=tol)
  val_scores, solutions, params = {}, {}, _zeros(x_train.shape[1], n_classes)
  for l2 in sorted(map(float, l2_grid), reverse=True):   # strongest first: warm starts follow the path
    params = _fit(x_train, y_train, fit_mask, l2, params, **kw)
    val_scores[l2], solutions[l2] = measure(params, x_val, y_val), params
  best = max(val_scores, key=lambda l2: (val_scores[l2], l2))   # ties -> larger l2

  final = _fit(x_train, y_train, jnp.ones(len(y_np), jnp.float32), best, solutions[best], **kw)
  return {"score": measure(final, x_test, y_test), "l2": best, "val_scores": val_scores,
          "n_train": len(y_np), "n_fit": len(fit_idx), "n_val": len(val_idx),
          "n_test": int(x_test.shape[0])}


# HIGHEST: GPUs may otherwise run float32 matmuls in TF32, whose ~1e-3 relative
# error dwarfs the objective changes the line search compares near the optimum.
def _logits(params: Params, x) -> jax.Array:
  return jnp.dot(x.astype(jnp.float32), params.W, precision=jax.lax.Precision.HIGHEST) + params.b


@jax.jit
def _hits(params: Params, x, y) -> jax.Array:
  return jnp.argmax(_logits(params, x), axis=-1) == y


def _objective(params: Params, x, y, weight, l2) -> jax.Array:
  """Weighted mean cross-entropy + (l2/2)||W||^2, float32."""
  logits = _logits(params, x)
  ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  return jnp.sum(weight * ce) / jnp.sum(weight) + 0.5 * l2 * jnp.sum(params.W ** 2)


def _zeros(dim: int, n_classes: int) -> Params:
  return Params(jnp.zeros((dim, n_classes), jnp.float32), jnp.zeros((n_classes,), jnp.float32))


# l2, init, max_iter and tol are traced: one compile per feature shape serves the whole grid.
@jax.jit
def _fit(x, y, weight, l2, init: Params, *, max_iter: int, tol: float) -> Params:
  """L-BFGS on `_objective` until the gradient norm < tol or max_iter updates."""
  loss = lambda p: _objective(p, x, y, weight, jnp.float32(l2))
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  def running(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
    return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

  params, _ = jax.lax.while_loop(running, step, (init, solver.init(init)))
  return params
