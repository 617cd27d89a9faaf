"""Weight decay by parameter role: the same mask with and without scanned layers,
equal to the reference rule (MetaCLIP's training code) on the unstacked model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mode_jax import constants
from mode_jax.models import clip as clip_lib
from mode_jax.models import roles
from mode_jax.train import optimizer
from tests.test_models import tiny_config


def _params(scan_layers):
  """(config, the abstract parameters of a tiny CLIP): shapes and roles, nothing computed."""
  cfg = tiny_config(scan_layers=scan_layers, logit_bias=True)
  model = nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0)))
  return cfg, nnx.split(model, nnx.Param)[1]


def _flat(tree):
  """{('visual', 'transformer', 'blocks', ...): leaf}, dropping the trailing '.value' key."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
    out[keys[:-1] if keys[-1] == "value" else keys] = leaf
  return out


def _unstack(flat, depths):
  """A scanned model's leaves -> the loop layout's, block i taking slice i of the depth axis."""
  out = {}
  for keys, leaf in flat.items():
    if keys[1:3] == ("transformer", "blocks"):
      for i in range(depths[keys[0]]):
        out[keys[:3] + (i,) + keys[3:]] = leaf[i] if hasattr(leaf, "shape") else leaf
    else:
      out[keys] = leaf
  return out


# ---- an independent transcription of the reference rule -------------------------------
# MetaCLIP src/training/main.py (as OpenCLIP's main.py before 2026-06):
#   exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n
#                          or 'logit_scale' in n or 'norm' in n or 'layer_norm' in n
# applied to OpenAI/OpenCLIP parameter names; decay = not exclude.

def _reference_excludes(name, ndim):
  return (ndim < 2 or "bn" in name or "ln" in name or "bias" in name
          or "logit_scale" in name or "norm" in name or "layer_norm" in name)


_BLOCK = {("ln_1", "scale"): "ln_1.weight", ("ln_1", "bias"): "ln_1.bias",
          ("ln_2", "scale"): "ln_2.weight", ("ln_2", "bias"): "ln_2.bias",
          ("attn", "qkv", "kernel"): "attn.in_proj_weight",
          ("attn", "qkv", "bias"): "attn.in_proj_bias",
          ("attn", "out", "kernel"): "attn.out_proj.weight",
          ("attn", "out", "bias"): "attn.out_proj.bias",
          ("c_fc", "kernel"): "mlp.c_fc.weight", ("c_fc", "bias"): "mlp.c_fc.bias",
          ("c_proj", "kernel"): "mlp.c_proj.weight", ("c_proj", "bias"): "mlp.c_proj.bias"}
_TOP = {("visual", "patch_embed", "kernel"): "visual.conv1.weight",
        ("visual", "class_embedding"): "visual.class_embedding",
        ("visual", "positional_embedding"): "visual.positional_embedding",
        ("visual", "ln_pre", "scale"): "visual.ln_pre.weight",
        ("visual", "ln_pre", "bias"): "visual.ln_pre.bias",
        ("visual", "ln_post", "scale"): "visual.ln_post.weight",
        ("visual", "ln_post", "bias"): "visual.ln_post.bias",
        ("visual", "proj"): "visual.proj",
        ("text", "token_embedding", "embedding"): "token_embedding.weight",
        ("text", "positional_embedding"): "positional_embedding",
        ("text", "ln_final", "scale"): "ln_final.weight",
        ("text", "ln_final", "bias"): "ln_final.bias",
        ("text", "text_projection"): "text_projection",
        ("logit_scale",): "logit_scale", ("logit_bias",): "logit_bias"}


def _openai_name(keys):
  """Our loop-layout path -> the OpenAI/OpenCLIP state-dict name (KeyError if unknown)."""
  if keys[1:3] == ("transformer", "blocks"):
    prefix = "visual.transformer" if keys[0] == "visual" else "transformer"
    return f"{prefix}.resblocks.{keys[3]}.{_BLOCK[keys[4:]]}"
  return _TOP[keys]


def test_scanned_and_unscanned_models_decay_the_same_parameters():
  """Regression: decay was `p.ndim >= 2`, and scanning stacks every bias and LayerNorm
  gain into a 2-d array, so a scanned model decayed 16 exempt leaves per tower."""
  cfg, loop = _params(scan_layers=False)
  _, scanned = _params(scan_layers=True)
  flat_scanned = _flat(scanned)
  assert any(k[-1] == "bias" and v.ndim == 2 for k, v in flat_scanned.items())  # why rank fails
  depths = {"visual": cfg.vision.depth, "text": cfg.text.depth}
  want = _flat(optimizer.decay_mask(loop))
  got = _unstack(_flat(optimizer.decay_mask(scanned)), depths)
  assert set(got) == set(want) == set(_flat(loop))
  assert {k: got[k] for k in sorted(got, key=str)} == {k: want[k] for k in sorted(want, key=str)}


def test_unscanned_mask_equals_the_reference_rule():
  _, loop = _params(scan_layers=False)
  flat = _flat(loop)
  mask = _flat(optimizer.decay_mask(loop))
  want = {k: not _reference_excludes(_openai_name(k), v.ndim) for k, v in flat.items()}
  assert mask == want
  decayed = {_openai_name(k) for k, d in want.items() if d}
  # what the rule means for CLIP, spelled out: embeddings that are matrices decay ...
  assert {"positional_embedding", "visual.positional_embedding", "token_embedding.weight",
          "visual.conv1.weight", "visual.proj", "text_projection"} <= decayed
  # ... and no bias, gain, class embedding or logit term does
  assert not decayed & {"visual.class_embedding", "logit_scale", "logit_bias",
                        "ln_final.weight", "visual.ln_pre.bias"}
  assert not any(n.endswith("bias") or ".ln_" in n for n in decayed)


def test_adamw_on_a_scanned_model_decays_exactly_the_reference_weights():
  """Zero gradients, one AdamW step: only decayed parameters move, by lr * wd * p."""
  cfg, abstract = _params(scan_layers=True)
  rng = np.random.default_rng(0)   # the values do not matter, only that they move or not
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), abstract)
  _, loop = _params(scan_layers=False)
  reference = {k: not _reference_excludes(_openai_name(k), v.ndim)
               for k, v in _flat(loop).items()}
  ocfg = optimizer.default_config()
  ocfg.lr, ocfg.warmup_steps = 0.1, 0
  tx = optimizer.make_optimizer(ocfg, 100)

  @jax.jit
  def step(p):
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    return optax.apply_updates(p, updates)

  new = step(params)
  depths = {"visual": cfg.vision.depth, "text": cfg.text.depth}
  before = _unstack({k: np.asarray(v) for k, v in _flat(params).items()}, depths)
  after = _unstack({k: np.asarray(v) for k, v in _flat(new).items()}, depths)
  for k, decays in reference.items():
    factor = 1 - ocfg.lr * ocfg.weight_decay if decays else 1.0
    np.testing.assert_allclose(after[k], before[k] * factor, rtol=1e-6, err_msg=str(k))


def test_a_parameter_without_a_role_is_refused_by_name():
  _, params = _params(scan_layers=False)
  params["visual"]["proj"] = nnx.Param(jnp.zeros((4, 4)))
  with pytest.raises(ValueError, match=r"\['visual'\]\['proj'\].*param_role"):
    optimizer.decay_mask(params)
  with pytest.raises(ValueError, match="param_role"):
    optimizer.decay_mask({"w": jnp.zeros((3, 3))})   # bare arrays carry no role either
  with pytest.raises(ValueError, match="unknown parameter role"):
    roles.meta("gain")


def test_every_role_the_constants_decay_exists():
  assert set(constants.WEIGHT_DECAY_ROLES) <= set(roles.ROLES)
