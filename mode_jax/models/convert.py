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
"""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np

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
  cfg.vision.update(width=vw, depth=_depth_of(vis["transformer"]["blocks"]), heads=vh)
  cfg.text.update(width=tw, depth=_depth_of(txt["transformer"]["blocks"]), heads=th)
  return cfg


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
    act = "quick_gelu" if vc.get("hidden_act", "quick_gelu") == "quick_gelu" else "gelu"
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
