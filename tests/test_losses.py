"""Losses against a plain numpy transcription; optimiser recipe details."""

import numpy as np
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from mode_jax.models import roles
from mode_jax.train import losses, optimizer


def _normed(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_clip_loss(img, txt, scale):
  logits = scale * img @ txt.T
  def ce_rows(l):
    l = l - l.max(1, keepdims=True)
    logp = l - np.log(np.exp(l).sum(1, keepdims=True))
    return -np.mean(np.diag(logp))
  return 0.5 * (ce_rows(logits) + ce_rows(logits.T))


def numpy_siglip_loss(img, txt, scale, bias):
  logits = scale * img @ txt.T + bias
  z = 2 * np.eye(len(img)) - 1
  return np.sum(np.log1p(np.exp(-z * logits))) / len(img)


def test_softmax_loss_matches_numpy():
  rng = np.random.default_rng(0)
  img, txt = _normed(rng, 12, 8), _normed(rng, 12, 8)
  for scale in (1.0, 14.3, 100.0):
    ours = losses.softmax_clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                    scale)
    np.testing.assert_allclose(ours, numpy_clip_loss(img, txt, scale), rtol=1e-5)


def test_sigmoid_loss_matches_numpy():
  rng = np.random.default_rng(1)
  img, txt = _normed(rng, 10, 6), _normed(rng, 10, 6)
  ours = losses.sigmoid_clip_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                  10.0, -10.0)
  np.testing.assert_allclose(ours, numpy_siglip_loss(img, txt, 10.0, -10.0), rtol=1e-5)


def test_perfect_alignment_has_low_loss():
  eye = jnp.eye(8)
  assert losses.softmax_clip_loss(eye, eye, 100.0) < 1e-3
  assert losses.contrastive_accuracy(eye, eye) == 1.0


def test_schedule_warmup_then_cosine_over_whole_run():
  cfg = ml_collections.ConfigDict(dict(optimizer.default_config()))
  cfg.lr, cfg.warmup_steps = 1.0, 10
  s = optimizer.lr_schedule(cfg, 110)
  np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(s(60), 0.5, atol=1e-6)   # cosine midpoint
  np.testing.assert_allclose(s(110), 0.0, atol=1e-6)


def _param(x, role):
  return nnx.Param(jnp.asarray(x), **roles.meta(role))


def test_weight_decay_only_on_weight_roles():
  """Decay by the role a parameter carries (tests/test_weight_decay.py: scanned models)."""
  cfg = optimizer.default_config()
  cfg.lr, cfg.warmup_steps = 0.1, 0
  tx = optimizer.make_optimizer(cfg, 100)
  params = {"w": _param(np.ones((3, 3)), roles.KERNEL), "b": _param(np.ones((3,)), roles.BIAS),
            "logit_scale": _param(np.ones(()), roles.LOGIT)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["w"][...], 1 - 0.1 * 0.2, rtol=1e-6)   # decoupled decay lr*wd
  np.testing.assert_allclose(new["b"][...], 1.0)
  np.testing.assert_allclose(new["logit_scale"][...], 1.0)


def test_adam_hyperparameters_match_pytorch_adamw():
  torch = __import__("pytest").importorskip("torch", reason="pip install torch==2.13.0")
  cfg = optimizer.default_config()
  cfg.lr, cfg.warmup_steps, cfg.end_lr_ratio = 1e-2, 0, 1.0  # constant LR for the peer
  tx = optimizer.make_optimizer(cfg, 100)
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(4, 5)).astype(np.float32)
  grads = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(5)]
  p, st = {"w": _param(w0, roles.KERNEL)}, None
  st = tx.init(p)
  for g in grads:
    u, st = tx.update({"w": _param(g, roles.KERNEL)}, st, p)
    p = optax.apply_updates(p, u)
  tw = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.AdamW([tw], lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
  for g in grads:
    tw.grad = torch.tensor(g)
    opt.step()
  np.testing.assert_allclose(p["w"][...], tw.detach().numpy(), atol=1e-5)


def test_clip_loss_dispatches_by_name_and_refuses_unknown():
  rng = np.random.default_rng(2)
  img, txt = (jnp.asarray(_normed(rng, 6, 4), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(losses.clip_loss("softmax", img, txt, 10.0, None),
                             losses.softmax_clip_loss(img, txt, 10.0))
  np.testing.assert_allclose(losses.clip_loss("sigmoid", img, txt, 10.0, -5.0),
                             losses.sigmoid_clip_loss(img, txt, 10.0, -5.0))
  __import__("pytest").raises(ValueError, losses.clip_loss, "hinge", img, txt, 1.0, None)
