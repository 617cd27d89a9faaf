"""Train state and the jitted train step.

The state is a plain pytree {"params", "opt", "step", "rng"} so that
`jax.jit` shardings, donation and Orbax all see ordinary arrays; the NNX
module is rebuilt from (graphdef, params) inside the step. Parameters are
created already sharded: `jax.eval_shape` gives the abstract state, the rule
table gives its shardings, and `jax.jit(init, out_shardings=...)` allocates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mode_jax import constants
from mode_jax.models.clip import CLIP
from mode_jax.train import losses, optimizer, sharding


def build(model_cfg, optim_cfg, *, schedule_steps, mesh, rules, seed=0):
  """Returns (graphdef, tx, abstract_state, state_shardings, init_fn).

  init_fn() creates the state directly in its shardings (no host copy).
  """
  tx = optimizer.make_optimizer(optim_cfg, schedule_steps)

  def init():
    model = CLIP(model_cfg, rngs=nnx.Rngs(seed))
    _, params = nnx.split(model, nnx.Param)
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed))}

  graphdef = nnx.split(nnx.eval_shape(lambda: CLIP(model_cfg, rngs=nnx.Rngs(seed))),
                       nnx.Param)[0]
  abstract = jax.eval_shape(init)
  shardings = sharding.tree_shardings(abstract, mesh, rules)
  init_fn = jax.jit(init, out_shardings=shardings)
  return graphdef, tx, abstract, shardings, init_fn


def clamp_logit_scale(params):
  """OpenAI/MetaCLIP clamp the logit-scale parameter to [0, ln 100] after each update.

  Addressed by structure (the CLIP module's `logit_scale` attribute), not by
  a path string: NNX paths end in .../value, and a string match that matched
  nothing once made this clamp a silent no-op.
  """
  params = jax.tree.map(lambda x: x, params)   # a new State: the input is left as is
  params["logit_scale"] = jax.tree.map(
      lambda x: jnp.clip(x, 0.0, constants.LOGIT_SCALE_MAX), params["logit_scale"])
  return params


def loss_and_metrics(graphdef, params, batch, loss_name):
  model = nnx.merge(graphdef, params)
  img, txt, scale, bias = model(batch["image"], batch["tokens"])
  if loss_name == "softmax":
    loss = losses.softmax_clip_loss(img, txt, scale)
  elif loss_name == "sigmoid":
    loss = losses.sigmoid_clip_loss(img, txt, scale, bias)
  else:
    raise ValueError(f"config.loss={loss_name!r}: use 'softmax' or 'sigmoid'")
  return loss, {"logit_scale": scale, "batch_acc": losses.contrastive_accuracy(img, txt)}


def make_train_step(graphdef, tx, schedule, state_shardings, mesh, loss_name="softmax"):
  """A jitted step with explicit shardings and the state donated.

  A non-finite loss or gradient leaves the state untouched (the step is
  skipped on device); the trainer sees the flag in the metrics and stops.
  """

  def step_fn(state, batch):
    grad_fn = jax.value_and_grad(
        functools.partial(loss_and_metrics, graphdef, loss_name=loss_name), has_aux=True)
    (loss, aux), grads = grad_fn(state["params"], batch)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = clamp_logit_scale(optax.apply_updates(state["params"], updates))
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = {"params": params, "opt": opt, "step": state["step"] + 1, "rng": state["rng"]}
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "finite": finite, **aux}
    return new, metrics

  return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def model_from_state(graphdef, state):
  return nnx.merge(graphdef, state["params"])
