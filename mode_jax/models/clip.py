"""CLIP: two towers, L2-normalised embeddings and a learnable logit scale.

Models are chosen by name from the config ("mu/8", "Ti/16", "B/32", "L/14"),
so trainers stay generic. A data expert in MoDE is a full CLIP of its own.

Config fields (`config.model`):
  variant         "<size>/<patch>", size in VISION_SIZES (mu is CPU-sized)
  image_size      input resolution (224 in the paper)
  vocab_size      49,408 for OpenAI BPE
  context_length  77 for OpenAI CLIP
  act             "quick_gelu" (paper) or "gelu"
  dtype           compute dtype, "bfloat16" or "float32"; parameters stay float32
  remat           what the backward pass recomputes: a transformer.REMAT_POLICIES name,
                  "none" | "full" | "dots_saveable" | "dots_with_no_batch_dims_saveable"
                  | "save_attention" (a bool from older configs: True = "full")
  attention       "auto" | "einsum" | "xla" | "cudnn" | "pallas_tpu" (transformer.ATTENTION);
                  "auto": einsum on CPU, cuDNN or XLA on GPU, Pallas or XLA on TPU
  scan_layers     stack each tower's blocks on a depth axis and scan one compiled block
                  (parameters then live at transformer.blocks.* with a leading depth axis)
  logit_bias      add SigLIP's learnable bias (used with the sigmoid loss)
  eos_id          None: pool at argmax(token id) (OpenAI); else at that id
  vision, text    optional overrides of width/depth/heads, e.g. vision.width=128
  text.features   > 0: a locked text tower (models/text.py FeatureText, LiT): the model
                  takes that many sentence-encoder features per caption instead of tokens
  embed_dim       optional override of the joint embedding size
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mode_jax import constants
from mode_jax.models import roles
from mode_jax.models.text import FeatureText, TextTransformer
from mode_jax.models.vit import VisionTransformer


@dataclasses.dataclass(frozen=True)
class TowerSize:
  width: int
  depth: int
  heads: int


L2_EPS = 1e-12   # the norm floor of l2_normalize: an all-zero row stays zero, never NaN
MLP_RATIO = 4.0  # hidden width of every block's MLP / width: ViT and OpenAI CLIP

# Vision tower sizes: Ti/S/B/L from ViT (Dosovitskiy et al.; Steiner et al.);
# "mu" is a CPU-sized tower for tests and the laptop demo.
VISION_SIZES = {
    "mu": TowerSize(192, 6, 3),
    "Ti": TowerSize(192, 12, 3),
    "S": TowerSize(384, 12, 6),
    "B": TowerSize(768, 12, 12),
    "L": TowerSize(1024, 24, 16),
}
# Text towers paired with each size: B and L as OpenAI CLIP (512/12/8, 768/12/12).
TEXT_SIZES = {
    "mu": TowerSize(128, 4, 2),
    "Ti": TowerSize(256, 12, 4),
    "S": TowerSize(384, 12, 6),
    "B": TowerSize(512, 12, 8),
    "L": TowerSize(768, 12, 12),
}
EMBED_DIMS = {"mu": 128, "Ti": 256, "S": 384, "B": 512, "L": 768}


def parse_variant(variant: str) -> tuple[str, int]:
  """'B/32' -> ('B', 32); raises ValueError naming the field otherwise."""
  size, _, patch = str(variant).partition("/")
  if size not in VISION_SIZES or not patch.isdigit() or int(patch) <= 0:
    raise ValueError(
        f"config.model.variant={variant!r} is not '<size>/<patch>' with size in "
        f"{sorted(VISION_SIZES)}, e.g. 'B/32'")
  return size, int(patch)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.variant = "B/32"
  c.image_size = 224
  c.vocab_size = constants.VOCAB_SIZE
  c.context_length = constants.CONTEXT_LENGTH
  c.act = "quick_gelu"
  c.dtype = "float32"
  c.remat = "none"
  c.attention = "auto"
  c.scan_layers = False
  c.logit_bias = False
  c.eos_id = ml_collections.config_dict.placeholder(int)
  c.embed_dim = ml_collections.config_dict.placeholder(int)
  # Per-tower overrides of the variant's sizes (0 = the variant's); mlp_ratio 0 = MLP_RATIO
  # (public weights with another MLP width set it: models/convert.py config_from_params).
  c.vision = ml_collections.ConfigDict({"width": 0, "depth": 0, "heads": 0, "mlp_ratio": 0.0})
  c.text = ml_collections.ConfigDict({"width": 0, "depth": 0, "heads": 0, "mlp_ratio": 0.0,
                                      "features": 0})
  return c


def text_features(cfg) -> int:
  """Sentence-encoder features the text tower takes (0: it takes tokens)."""
  return int(cfg.get("text", {}).get("features", 0) or 0)


def _size(table, size, override) -> TowerSize:
  base = table[size]
  return TowerSize(override.get("width") or base.width, override.get("depth") or base.depth,
                   override.get("heads") or base.heads)


def validate(cfg) -> None:
  """Checks a model config without building anything (fails before compute)."""
  size, patch = parse_variant(cfg.variant)
  if cfg.image_size % patch:
    raise ValueError(f"config.model.image_size={cfg.image_size} is not divisible by the "
                     f"patch size {patch} of config.model.variant={cfg.variant!r}")
  if cfg.dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"config.model.dtype={cfg.dtype!r}: use float32, bfloat16 or float16")
  from mode_jax.models import transformer
  if cfg.act not in transformer.ACTIVATIONS:
    raise ValueError(f"config.model.act={cfg.act!r}: choose from "
                     f"{sorted(transformer.ACTIVATIONS)}")
  remat = transformer.remat_name(cfg.get("remat", "none"))
  if remat not in transformer.REMAT_POLICIES:
    raise ValueError(f"config.model.remat={remat!r}: choose from "
                     f"{list(transformer.REMAT_POLICIES)}")
  attention = cfg.get("attention", "auto")
  if attention not in transformer.ATTENTION:
    raise ValueError(f"config.model.attention={attention!r}: choose from {transformer.ATTENTION}")
  platform, backend = transformer.ATTENTION_PLATFORM.get(attention), jax.default_backend()
  if platform and platform != backend:
    raise ValueError(f"config.model.attention={attention!r} runs on {platform} only, and this "
                     f"backend is {backend}: use 'auto' or 'xla'")
  if attention == "cudnn" and cfg.dtype == "float32":
    raise ValueError("config.model.attention='cudnn' needs config.model.dtype bfloat16 or "
                     "float16: use 'xla' for float32")
  if int(cfg.get("text", {}).get("features", 0) or 0) < 0:
    raise ValueError(f"config.model.text.features={cfg.text.features} must be >= 0 "
                     "(0 = a token text tower)")
  for name, table in (("vision", VISION_SIZES), ("text", TEXT_SIZES)):
    t = _size(table, size, cfg.get(name, {}))
    if t.width % t.heads:
      raise ValueError(f"config.model.{name}: width {t.width} not divisible by heads {t.heads}")


class CLIP(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    validate(cfg)
    size, patch = parse_variant(cfg.variant)
    dtype = jnp.dtype(cfg.dtype)
    embed_dim = cfg.get("embed_dim") or EMBED_DIMS[size]
    v = _size(VISION_SIZES, size, cfg.get("vision", {}))
    t = _size(TEXT_SIZES, size, cfg.get("text", {}))
    blocks = dict(remat=cfg.get("remat", "none"), attention=cfg.get("attention", "auto"),
                  scan_layers=cfg.get("scan_layers", False), rngs=rngs)
    self.visual = VisionTransformer(
        image_size=cfg.image_size, patch_size=patch, width=v.width, depth=v.depth,
        heads=v.heads, embed_dim=embed_dim, act=cfg.act, dtype=dtype,
        mlp_ratio=cfg.get("vision", {}).get("mlp_ratio") or MLP_RATIO, **blocks)
    if text_features(cfg):
      self.text = FeatureText(features=text_features(cfg), embed_dim=embed_dim, rngs=rngs)
    else:
      self.text = TextTransformer(
          vocab_size=cfg.vocab_size, context_length=cfg.context_length, width=t.width,
          depth=t.depth, heads=t.heads, embed_dim=embed_dim, act=cfg.act,
          eos_id=cfg.get("eos_id"), dtype=dtype,
          mlp_ratio=cfg.get("text", {}).get("mlp_ratio") or MLP_RATIO, **blocks)
    init_scale = constants.SIGLIP_SCALE_INIT if cfg.logit_bias else constants.LOGIT_SCALE_INIT
    self.logit_scale = nnx.Param(jnp.asarray(init_scale, jnp.float32), **roles.meta(roles.LOGIT))
    self.logit_bias = (nnx.Param(jnp.asarray(constants.SIGLIP_BIAS_INIT, jnp.float32),
                                 **roles.meta(roles.LOGIT)) if cfg.logit_bias else None)

  def encode_image(self, images):
    return l2_normalize(self.visual(images))

  def encode_text(self, tokens):
    return l2_normalize(self.text(tokens))

  def __call__(self, images, tokens):
    """Returns float32 (image_emb, text_emb, logit_scale, logit_bias or None).

    The scale is exp(logit_scale) with logit_scale clamped at ln 100 (OpenAI
    CLIP); the trainer also clamps the parameter itself after each update.
    """
    scale, bias = self.logit_terms()
    return self.encode_image(images), self.encode_text(tokens), scale, bias

  def logit_terms(self):
    """(exp(logit_scale) clamped at ln 100, logit_bias or None), without running the towers.

    The accumulated train step (train/state.py) needs them apart from the features.
    """
    scale = jnp.exp(jnp.minimum(self.logit_scale.get_value(), constants.LOGIT_SCALE_MAX))
    bias = None if self.logit_bias is None else self.logit_bias.get_value()
    return scale, bias


def l2_normalize(x, axis: int = -1, eps: float = L2_EPS):
  """x / max(||x||, eps) along `axis`, in float32: every embedding of the project goes through it."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)
