"""Train state and the jitted train step.

The state is a plain pytree {"params", "opt", "step"} so that
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
from jax.sharding import NamedSharding, PartitionSpec as P

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
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

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
  loss = losses.clip_loss(loss_name, img, txt, scale, bias)
  return loss, {"logit_scale": scale, "batch_acc": losses.contrastive_accuracy(img, txt)}


def _features(graphdef, params, images, tokens):
  # copy: fresh Variables at this trace level; params are closed over from
  # outside the scan, and nnx.remat inside the towers may not update outer ones.
  model = nnx.merge(graphdef, params, copy=True)
  return model.encode_image(images), model.encode_text(tokens)


def _loss_from_features(graphdef, loss_name, params, img, txt):
  scale, bias = nnx.merge(graphdef, params).logit_terms()
  loss = losses.clip_loss(loss_name, img, txt, scale, bias)
  return loss, {"logit_scale": scale, "batch_acc": losses.contrastive_accuracy(img, txt)}


def to_micro(x, k, mesh):
  """[B, ...] sharded over the batch axes -> [k, B/k, ...]; micro-batch i is on-device rows.

  Device j holds rows [j B/D, (j+1) B/D); micro-batch i takes the i-th block of
  B/(D k) of those rows on every device: [B] -> [D, k, m] -> [k, D, m] -> [k, D m].
  Each step only splits or swaps dimensions that are whole on each device, so
  nothing moves between devices.
  """
  d = mesh.shape["data"] * mesh.shape["fsdp"]
  rest = x.shape[1:]
  m = x.shape[0] // (d * k)
  x = _constrain(x.reshape(d, k, m, *rest), mesh, P(sharding.BATCH_AXES))
  x = _constrain(jnp.swapaxes(x, 0, 1), mesh, P(None, sharding.BATCH_AXES))
  return _constrain(x.reshape(k, d * m, *rest), mesh, P(None, sharding.BATCH_AXES))


def from_micro(x, mesh):
  """Inverse of to_micro: [k, B/k, ...] -> [B, ...] in the original row order."""
  d = mesh.shape["data"] * mesh.shape["fsdp"]
  k, dm, *rest = x.shape
  x = _constrain(x.reshape(k, d, dm // d, *rest), mesh, P(None, sharding.BATCH_AXES))
  x = _constrain(jnp.swapaxes(x, 0, 1), mesh, P(sharding.BATCH_AXES))
  return _constrain(x.reshape(k * dm, *rest), mesh, P(sharding.BATCH_AXES))


def _constrain(x, mesh, spec):
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _accumulated_grads(graphdef, params, batch, *, loss_name, k, mesh, param_shardings):
  """GradCache (Gao et al. 2021) / open_clip accum_freq: the full-batch gradient in k passes.

  1. Features of every micro-batch, forward only (no activations kept).
  2. The loss over the whole global batch from those features, and its
     gradient with respect to the features and to logit_scale/logit_bias.
  3. Per micro-batch, recompute the features under jax.vjp and pull the
     feature cotangents back to the tower parameters; sum.
  The contrastive loss couples every pair, so plain per-micro-batch losses
  would see only B/k negatives; this update equals one full-batch step.
  """
  d = mesh.shape["data"] * mesh.shape["fsdp"]
  b = batch["image"].shape[0]
  if b % (d * k):
    raise ValueError(f"batch {b} is not divisible by accum_steps={k} x {d} devices")
  micro = jax.tree.map(lambda x: to_micro(x, k, mesh), batch)
  row = NamedSharding(mesh, P(sharding.BATCH_AXES))
  feats = functools.partial(_features, graphdef)

  def encode(_, mb):
    mb = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, row), mb)
    return None, feats(params, mb["image"], mb["tokens"])

  _, (img, txt) = jax.lax.scan(encode, None, micro)
  img, txt = from_micro(img, mesh), from_micro(txt, mesh)
  loss_fn = functools.partial(_loss_from_features, graphdef, loss_name)
  (loss, aux), (direct, d_img, d_txt) = jax.value_and_grad(
      loss_fn, argnums=(0, 1, 2), has_aux=True)(params, img, txt)
  cot = {"img": to_micro(d_img, k, mesh), "txt": to_micro(d_txt, k, mesh)}

  def backward(acc, xs):
    mb, c = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, row), xs)
    _, vjp = jax.vjp(lambda p: feats(p, mb["image"], mb["tokens"]), params)
    (g,) = vjp((c["img"], c["txt"]))
    acc = jax.tree.map(jnp.add, acc, g)
    return jax.lax.with_sharding_constraint(acc, param_shardings), None

  grads, _ = jax.lax.scan(backward, direct, (micro, cot))
  return (loss, aux), grads


def make_train_step(graphdef, tx, schedule, state_shardings, mesh, loss_name="softmax",
                    accum_steps=1):
  """A jitted step with explicit shardings and the state donated.

  accum_steps=k > 1 computes the same update in k micro-batches of B/k
  (_accumulated_grads), trading a second forward pass for activation memory.
  A non-finite loss or gradient leaves the state untouched (the step is
  skipped on device); the trainer sees the flag in the metrics and stops.
  """
  losses.check_name(loss_name)
  if int(accum_steps) < 1:
    raise ValueError(f"config.accum_steps={accum_steps} must be >= 1")

  def step_fn(state, batch):
    if accum_steps == 1:
      grad_fn = jax.value_and_grad(
          functools.partial(loss_and_metrics, graphdef, loss_name=loss_name), has_aux=True)
      (loss, aux), grads = grad_fn(state["params"], batch)
    else:
      (loss, aux), grads = _accumulated_grads(
          graphdef, state["params"], batch, loss_name=loss_name, k=int(accum_steps), mesh=mesh,
          param_shardings=state_shardings["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = clamp_logit_scale(optax.apply_updates(state["params"], updates))
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = {"params": params, "opt": opt, "step": state["step"] + 1}
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "finite": finite, **aux}
    return new, metrics

  return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def model_from_state(graphdef, state):
  return nnx.merge(graphdef, state["params"])
