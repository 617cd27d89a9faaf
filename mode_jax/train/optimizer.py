"""The CLIP optimiser: AdamW (0.9, 0.98, 1e-6), decay 0.2 on weights by role, warmup + cosine.

The schedule is a function of the optimiser's own step count over the whole
planned run (`total_steps`), not of the current job: a run resumed or an
expert forked from the seed at step s continues the same curve from s
(docs/method.md step 6).

Config fields (`config.optim`): lr, warmup_steps, b1, b2, eps, weight_decay,
end_lr_ratio (cosine floor as a fraction of lr; 0 in the paper), grad_clip
(global norm; 0 disables; the paper uses none).

Weight decay follows the reference rule (MetaCLIP's training code: rank >= 2
weights of the unstacked model; constants.WEIGHT_DECAY_ROLES says which roles
that is). It is read from the role each parameter carries (models/roles.py),
not from its rank: with `scan_layers` every bias and LayerNorm gain is stacked
into a 2-d array, and a rank test decayed them.
"""

import jax
import ml_collections
import optax
from flax import nnx

from mode_jax import constants
from mode_jax.models import roles


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      lr=constants.PEAK_LR["B/32"], warmup_steps=constants.WARMUP_STEPS,
      b1=constants.ADAM_B1, b2=constants.ADAM_B2, eps=constants.ADAM_EPS,
      weight_decay=constants.WEIGHT_DECAY, end_lr_ratio=0.0, grad_clip=0.0))


def validate(cfg) -> None:
  """ValueError naming the config.optim field whose value cannot train."""
  checks = (("lr", cfg.lr > 0, "> 0"), ("warmup_steps", cfg.warmup_steps >= 0, ">= 0"),
            ("b1", 0 <= cfg.b1 < 1, "in [0, 1)"), ("b2", 0 <= cfg.b2 < 1, "in [0, 1)"),
            ("eps", cfg.eps > 0, "> 0"), ("weight_decay", cfg.weight_decay >= 0, ">= 0"),
            ("end_lr_ratio", 0 <= cfg.end_lr_ratio <= 1, "in [0, 1]"),
            ("grad_clip", cfg.grad_clip >= 0, ">= 0 (0 disables)"))
  for name, ok, want in checks:
    if not ok:
      raise ValueError(f"config.optim.{name}={cfg[name]!r} must be {want}")


def lr_schedule(cfg, total_steps: int) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.end_lr_ratio)


def decay_mask(params):
  """True where weight decay applies: a bool per nnx.Param of `params` (an nnx.State).

  Decided by each parameter's role (constants.WEIGHT_DECAY_ROLES), so a model
  with scanned layers gets the same mask as one without. A parameter without
  a role raises rather than silently taking or escaping decay.
  """
  is_param = lambda x: isinstance(x, nnx.Variable)
  decays = lambda path, p: roles.role_of(p, jax.tree_util.keystr(path)) in (
      constants.WEIGHT_DECAY_ROLES)
  return jax.tree.map_with_path(decays, params, is_leaf=is_param)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  adamw = optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.grad_clip:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
  return adamw
