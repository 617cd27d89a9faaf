"""Load public CLIP weights into our parameters, from local files only.

The paper's seed checkpoints were never released, so users fork experts from
a public MetaCLIP/OpenCLIP/OpenAI checkpoint. Two layouts are understood:

* Hugging Face `CLIPModel` (`model.safetensors` + `config.json` in a folder):
  keys `vision_model.*`, `text_model.*`, `visual_projection`, ...
* OpenAI / OpenCLIP state dicts (`*.safetensors`, or a torch `.pt`/`.bin`
  read only when torch is installed): keys `visual.conv1.weight`,
  `transformer.resblocks.N.attn.in_proj_weight`, `ln_final`, ...

`load_pretrained(path)` returns (model config, parameter dict) where the dict
has the nested layout of `nnx.to_pure_dict(nnx.state(CLIP))`: blocks.{i}.* for
the loop layout, or with `scan_layers=True` one blocks.* whose leaves are
stacked on a leading depth axis (`stack_blocks`). Heads are not
stored in state dicts; OpenAI's convention of 64-wide heads is used unless the
HF config says otherwise.

The inverse, `hf_from_params` + `hf_config`, writes our parameters as a HF
`CLIPModel` (mode_jax/eval/bundle.py exports every finished model that way).
"""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

from mode_jax import constants
from mode_jax.models import clip as clip_lib


def _t(x):
  return np.ascontiguousarray(np.asarray(x, np.float32).T)


def _ln(sd, prefix):
  return {"scale": np.asarray(sd[prefix + ".weight"], np.float32),
          "bias": np.asarray(sd[prefix + ".bias"], np.float32)}


def _linear(sd, prefix):
  return {"kernel": _t(sd[prefix + ".weight"]), "bias": np.asarray(sd[prefix + ".bias"], np.float32)}


def _patch_kernel(w):
  """conv weight [out, 3, p, p] -> our patch matmul kernel [(p_h, p_w, c), out]."""
  w = np.asarray(w, np.float32)
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


# --- Hugging Face CLIPModel --------------------------------------------------------

def _hf_block(sd, p):
  qkv_w = np.concatenate([sd[f"{p}.self_attn.{n}_proj.weight"] for n in "qkv"], 0)
  qkv_b = np.concatenate([sd[f"{p}.self_attn.{n}_proj.bias"] for n in "qkv"], 0)
  return {
      "ln_1": _ln(sd, f"{p}.layer_norm1"),
      "attn": {"qkv": {"kernel": _t(qkv_w), "bias": np.asarray(qkv_b, np.float32)},
               "out": _linear(sd, f"{p}.self_attn.out_proj")},
      "ln_2": _ln(sd, f"{p}.layer_norm2"),
      "c_fc": _linear(sd, f"{p}.mlp.fc1"),
      "c_proj": _linear(sd, f"{p}.mlp.fc2"),
  }


def _depth(sd, pattern):
  ids = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
  return max(ids) + 1 if ids else 0


def params_from_hf(sd) -> dict:
  v, t = "vision_model", "text_model"
  vd = _depth(sd, rf"{v}\.encoder\.layers\.(\d+)\.")
  td = _depth(sd, rf"{t}\.encoder\.layers\.(\d+)\.")
  return {
      "visual": {
          "patch_embed": {"kernel": _patch_kernel(sd[f"{v}.embeddings.patch_embedding.weight"])},
          "class_embedding": np.asarray(sd[f"{v}.embeddings.class_embedding"], np.float32),
          "positional_embedding": np.asarray(
              sd[f"{v}.embeddings.position_embedding.weight"], np.float32),
          "ln_pre": _ln(sd, f"{v}.pre_layrnorm"),
          "transformer": {"blocks": {
              i: _hf_block(sd, f"{v}.encoder.layers.{i}") for i in range(vd)}},
          "ln_post": _ln(sd, f"{v}.post_layernorm"),
          "proj": _t(sd["visual_projection.weight"]),
      },
      "text": {
          "token_embedding": {"embedding": np.asarray(
              sd[f"{t}.embeddings.token_embedding.weight"], np.float32)},
          "positional_embedding": np.asarray(
              sd[f"{t}.embeddings.position_embedding.weight"], np.float32),
          "transformer": {"blocks": {
              i: _hf_block(sd, f"{t}.encoder.layers.{i}") for i in range(td)}},
          "ln_final": _ln(sd, f"{t}.final_layer_norm"),
          "text_projection": _t(sd["text_projection.weight"]),
      },
      "logit_scale": np.asarray(sd["logit_scale"], np.float32).reshape(()),
  }


# --- OpenAI / OpenCLIP state dict ---------------------------------------------------

def _oai_block(sd, p):
  return {
      "ln_1": _ln(sd, f"{p}.ln_1"),
      "attn": {"qkv": {"kernel": _t(sd[f"{p}.attn.in_proj_weight"]),
                       "bias": np.asarray(sd[f"{p}.attn.in_proj_bias"], np.float32)},
               "out": _linear(sd, f"{p}.attn.out_proj")},
      "ln_2": _ln(sd, f"{p}.ln_2"),
      "c_fc": _linear(sd, f"{p}.mlp.c_fc"),
      "c_proj": _linear(sd, f"{p}.mlp.c_proj"),
  }


def params_from_openai(sd) -> dict:
  vd = _depth(sd, r"visual\.transformer\.resblocks\.(\d+)\.")
  td = _depth(sd, r"transformer\.resblocks\.(\d+)\.")
  return {
      "visual": {
          "patch_embed": {"kernel": _patch_kernel(sd["visual.conv1.weight"])},
          "class_embedding": np.asarray(sd["visual.class_embedding"], np.float32),
          "positional_embedding": np.asarray(sd["visual.positional_embedding"], np.float32),
          "ln_pre": _ln(sd, "visual.ln_pre"),
          "transformer": {"blocks": {
              i: _oai_block(sd, f"visual.transformer.resblocks.{i}") for i in range(vd)}},
          "ln_post": _ln(sd, "visual.ln_post"),
          "proj": np.asarray(sd["visual.proj"], np.float32),
      },
      "text": {
          "token_embedding": {"embedding": np.asarray(sd["token_embedding.weight"], np.float32)},
          "positional_embedding": np.asarray(sd["positional_embedding"], np.float32),
          "transformer": {"blocks": {
              i: _oai_block(sd, f"transformer.resblocks.{i}") for i in range(td)}},
          "ln_final": _ln(sd, "ln_final"),
          "text_projection": np.asarray(sd["text_projection"], np.float32),
      },
      "logit_scale": np.asarray(sd["logit_scale"], np.float32).reshape(()),
  }


# --- scanned layout ------------------------------------------------------------------

def _is_loop(blocks) -> bool:
  return all(isinstance(k, int) for k in blocks)


def stack_blocks(params) -> dict:
  """Loop layout {i: block} -> a scanned model's layout (each leaf stacked over i)."""
  out = dict(params)
  for tower in ("visual", "text"):
    blocks = params[tower]["transformer"]["blocks"]
    if _is_loop(blocks):
      stacked = jax.tree.map(lambda *xs: np.stack(xs), *[blocks[i] for i in sorted(blocks)])
      out[tower] = {**params[tower], "transformer": {"blocks": stacked}}
  return out


def _depth_of(blocks) -> int:
  return len(blocks) if _is_loop(blocks) else len(blocks["ln_1"]["scale"])


# --- model config from weights ------------------------------------------------------

def _closest_size(width):
  return min(clip_lib.VISION_SIZES, key=lambda s: abs(clip_lib.VISION_SIZES[s].width - width))


def config_from_params(params, *, heads=None, act="quick_gelu", eos_id=None):
  """Infers a model config that reproduces the shapes of a converted parameter dict."""
  vis, txt = params["visual"], params["text"]
  pk = vis["patch_embed"]["kernel"]
  patch = int(round((pk.shape[0] / 3) ** 0.5))
  grid = int(round((vis["positional_embedding"].shape[0] - 1) ** 0.5))
  vw, tw = pk.shape[1], txt["positional_embedding"].shape[1]
  vh, th = heads or (max(1, vw // 64), max(1, tw // 64))
  cfg = clip_lib.default_config()
  size = _closest_size(vw)
  cfg.variant = f"{size}/{patch}"
  cfg.image_size = grid * patch
  cfg.vocab_size = txt["token_embedding"]["embedding"].shape[0]
  cfg.context_length = txt["positional_embedding"].shape[0]
  cfg.embed_dim = vis["proj"].shape[1]
  cfg.act = act
  cfg.eos_id = eos_id
  cfg.scan_layers = not _is_loop(vis["transformer"]["blocks"])
  cfg.vision.update(width=vw, depth=_depth_of(vis["transformer"]["blocks"]), heads=vh,
                    mlp_ratio=_mlp_ratio(vis["transformer"]["blocks"], vw))
  cfg.text.update(width=tw, depth=_depth_of(txt["transformer"]["blocks"]), heads=th,
                  mlp_ratio=_mlp_ratio(txt["transformer"]["blocks"], tw))
  return cfg


def _mlp_ratio(blocks, width: int) -> float:
  """The MLP's hidden width / width; 0.0 (the model's default) when it is MLP_RATIO."""
  first = blocks[0] if _is_loop(blocks) else blocks
  ratio = np.shape(first["c_fc"]["kernel"])[-1] / width
  return 0.0 if ratio == clip_lib.MLP_RATIO else float(ratio)


def read_state_dict(path: str) -> dict:
  """Reads a flat name -> numpy array dict from safetensors, or from torch files if torch exists."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    sd = load_file(path)
  else:
    try:
      import torch  # Optional: only to read .pt/.bin checkpoints.
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0); "
                        "or convert it to .safetensors") from e
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(obj, "state_dict"):
      obj = obj.state_dict()
    obj = obj.get("state_dict", obj)
    sd = {k: v.float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  return {k.removeprefix("module."): v for k, v in sd.items()}


def load_pretrained(path: str, *, scan_layers: bool = False):
  """Returns (model config, params) for a HF CLIP folder or an OpenAI/OpenCLIP file.

  scan_layers: stack the blocks for a model with config.model.scan_layers (the
  returned config then sets it).
  """
  cfg, params = _load(path)
  if scan_layers:
    params = stack_blocks(params)
    cfg.scan_layers = True
  return cfg, params


def _load(path: str):
  if os.path.isdir(path):
    cfg_json = os.path.join(path, "config.json")
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
      raise FileNotFoundError(f"{weights} not found: a HF CLIPModel folder needs model.safetensors")
    sd = read_state_dict(weights)
    hf = json.load(open(cfg_json)) if os.path.exists(cfg_json) else {}
    vc, tc = hf.get("vision_config", {}), hf.get("text_config", {})
    params = params_from_hf(sd)
    hf_act = vc.get("hidden_act", "quick_gelu")
    act = {v: k for k, v in HF_ACTIVATIONS.items()}.get(hf_act)
    if act is None:
      raise ValueError(f"{cfg_json}: hidden_act {hf_act!r} is not one of "
                       f"{sorted(HF_ACTIVATIONS.values())}")
    heads = ((vc["num_attention_heads"], tc["num_attention_heads"])
             if "num_attention_heads" in vc and "num_attention_heads" in tc else None)
    # HF pools at argmax(ids) when eos_token_id == 2 (legacy configs), else at eos.
    eos = tc.get("eos_token_id", 2)
    return config_from_params(params, heads=heads, act=act,
                              eos_id=None if eos == 2 else eos), params
  sd = read_state_dict(path)
  if "visual.conv1.weight" not in sd:
    raise ValueError(f"{path}: neither a HF CLIPModel folder nor an OpenAI/OpenCLIP "
                     "state dict (no visual.conv1.weight)")
  params = params_from_openai(sd)
  return config_from_params(params), params


def load_into(model, params) -> None:
  """Overwrites `model`'s parameters in place with a converted dict (loop layout is
  stacked first when `model` scans its blocks)."""
  from flax import nnx
  if model.visual.transformer.scan_layers:
    params = stack_blocks(params)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)


# --- our params -> Hugging Face CLIPModel (the inverse of params_from_hf) -------------

# Our activations by their Hugging Face names (transformers ACT2FN); "gelu" is the exact
# erf GELU in both, "gelu_pytorch_tanh" is the tanh approximation.
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
HF_LEGACY_EOS = 2   # HF CLIP pools at argmax(ids) when text_config.eos_token_id == 2


def unstack_blocks(params) -> dict:
  """A scanned model's layout (leaves stacked on a depth axis) -> loop layout {i: block}."""
  out = dict(params)
  for tower in ("visual", "text"):
    blocks = params[tower]["transformer"]["blocks"]
    if not _is_loop(blocks):
      depth = _depth_of(blocks)
      loop = {i: jax.tree.map(lambda x, i=i: np.asarray(x)[i], blocks) for i in range(depth)}
      out[tower] = {**params[tower], "transformer": {"blocks": loop}}
  return out


def _put_ln(sd, prefix, p):
  sd[prefix + ".weight"], sd[prefix + ".bias"] = p["scale"], p["bias"]


def _put_linear(sd, prefix, p):
  sd[prefix + ".weight"], sd[prefix + ".bias"] = _t(p["kernel"]), p["bias"]


def _put_hf_block(sd, p, b):
  qkv_w, qkv_b = _t(b["attn"]["qkv"]["kernel"]), np.asarray(b["attn"]["qkv"]["bias"])
  for n, w, bias in zip("qkv", np.split(qkv_w, 3, 0), np.split(qkv_b, 3, 0)):
    sd[f"{p}.self_attn.{n}_proj.weight"], sd[f"{p}.self_attn.{n}_proj.bias"] = w, bias
  _put_linear(sd, f"{p}.self_attn.out_proj", b["attn"]["out"])
  _put_ln(sd, f"{p}.layer_norm1", b["ln_1"])
  _put_ln(sd, f"{p}.layer_norm2", b["ln_2"])
  _put_linear(sd, f"{p}.mlp.fc1", b["c_fc"])
  _put_linear(sd, f"{p}.mlp.fc2", b["c_proj"])


def hf_from_params(params) -> dict:
  """Our parameter dict (loop or scanned layout) -> a HF CLIPModel state dict of float32
  numpy arrays; params_from_hf(hf_from_params(p)) == p in the loop layout."""
  params = unstack_blocks(jax.tree.map(lambda x: np.asarray(x, np.float32), params))
  vis, txt = params["visual"], params["text"]
  v, t = "vision_model", "text_model"
  pk = vis["patch_embed"]["kernel"]
  patch, width = int(round((pk.shape[0] / 3) ** 0.5)), pk.shape[1]
  sd = {
      f"{v}.embeddings.patch_embedding.weight":   # inverse of _patch_kernel
          pk.reshape(patch, patch, 3, width).transpose(3, 2, 0, 1),
      f"{v}.embeddings.class_embedding": vis["class_embedding"],
      f"{v}.embeddings.position_embedding.weight": vis["positional_embedding"],
      "visual_projection.weight": _t(vis["proj"]),
      f"{t}.embeddings.token_embedding.weight": txt["token_embedding"]["embedding"],
      f"{t}.embeddings.position_embedding.weight": txt["positional_embedding"],
      "text_projection.weight": _t(txt["text_projection"]),
      "logit_scale": np.asarray(params["logit_scale"], np.float32).reshape(()),
  }
  _put_ln(sd, f"{v}.pre_layrnorm", vis["ln_pre"])
  _put_ln(sd, f"{v}.post_layernorm", vis["ln_post"])
  _put_ln(sd, f"{t}.final_layer_norm", txt["ln_final"])
  for tower, prefix in ((vis, v), (txt, t)):
    blocks = tower["transformer"]["blocks"]
    for i in sorted(blocks):
      _put_hf_block(sd, f"{prefix}.encoder.layers.{i}", blocks[i])
  return {k: np.array(x, np.float32, order="C") for k, x in sd.items()}   # keeps 0-d scalars


def hf_eos_token_id(cfg) -> int:
  """text_config.eos_token_id that makes HF pool where our text tower pools.

  Ours pools at argmax(ids) (eos_id None) or at the first `eos_id`; HF at the
  first eos_token_id, or at argmax(ids) when it is 2 (legacy configs). With
  the CLIP BPE vocabulary the EOT id is the largest id, so "first EOT" is
  argmax; other vocabularies keep argmax through the legacy value 2.
  """
  eos = cfg.get("eos_id")
  if eos is None:
    return constants.VOCAB_SIZE - 1 if cfg.vocab_size == constants.VOCAB_SIZE else HF_LEGACY_EOS
  if eos == HF_LEGACY_EOS:
    raise ValueError(f"config.model.eos_id={eos}: HF CLIP reads eos_token_id {eos} as 'pool "
                     "at argmax(ids)', so this pooling cannot be represented")
  return int(eos)


def hf_config(cfg, *, logit_scale: float | None = None) -> dict:
  """The config.json of a HF CLIPModel with our model config `cfg` (config.model).

  bos/pad are the CLIP BPE's <start_of_text> and our zero padding; HF keeps
  text_config.max_position_embeddings = our context length.
  """
  validate_hf(cfg)
  size, patch = clip_lib.parse_variant(cfg.variant)
  v = clip_lib._size(clip_lib.VISION_SIZES, size, cfg.get("vision", {}))
  t = clip_lib._size(clip_lib.TEXT_SIZES, size, cfg.get("text", {}))
  act = HF_ACTIVATIONS[cfg.act]
  embed_dim = cfg.get("embed_dim") or clip_lib.EMBED_DIMS[size]
  sot = constants.VOCAB_SIZE - 2
  text = dict(model_type="clip_text_model", vocab_size=cfg.vocab_size, hidden_size=t.width,
              intermediate_size=4 * t.width, num_hidden_layers=t.depth,
              num_attention_heads=t.heads, max_position_embeddings=cfg.context_length,
              hidden_act=act, layer_norm_eps=1e-5, projection_dim=embed_dim,
              eos_token_id=hf_eos_token_id(cfg), pad_token_id=0,
              bos_token_id=sot if sot < cfg.vocab_size else 0)
  vision = dict(model_type="clip_vision_model", hidden_size=v.width,
                intermediate_size=4 * v.width, num_hidden_layers=v.depth,
                num_attention_heads=v.heads, image_size=cfg.image_size, patch_size=patch,
                num_channels=3, hidden_act=act, layer_norm_eps=1e-5, projection_dim=embed_dim)
  init = constants.SIGLIP_SCALE_INIT if cfg.get("logit_bias") else constants.LOGIT_SCALE_INIT
  return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=embed_dim,
              logit_scale_init_value=float(init if logit_scale is None else logit_scale),
              initializer_factor=1.0, dtype="float32", text_config=text, vision_config=vision)


def validate_hf(cfg) -> None:
  """Refuses, in one line, a model config a HF CLIPModel cannot compute.

  Representable elsewhere: scanned blocks are unstacked (hf_from_params); the
  SigLIP logit_bias has no HF CLIP slot and travels beside the folder (bundle
  mode.json); dtype, remat and attention change how, not what, is computed.
  """
  clip_lib.parse_variant(cfg.variant)
  if cfg.act not in HF_ACTIVATIONS:
    raise ValueError(f"config.model.act={cfg.act!r} has no Hugging Face CLIP activation "
                     f"({sorted(HF_ACTIVATIONS)})")
  hf_eos_token_id(cfg)
