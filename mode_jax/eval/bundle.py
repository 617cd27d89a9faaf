"""MoDE bundles: the finished models and everything routing needs, in one folder others can use.

  python launch.py export --config configs/demo.py --workdir W [--config.export.out=DIR]
  python launch.py classify --bundle W/bundle --images DIR --classes "cat,dog,car"

A bundle (default W/bundle; local, gs:// or s3://, written by process 0):

  mode.json                  what a user needs to reproduce our ensemble (below)
  dense/, expert_<c>/        one Hugging Face CLIPModel folder per finished model:
                             config.json + model.safetensors (float32), loadable by
                             transformers.CLIPModel.from_pretrained(folder) offline
  fine_centers.npy           float32 [m, D]  mu_s, from cluster/
  fine_to_expert.npy         int32 [m]       pi: fine center -> expert id c
  expert_order.json          expert ids, widest spread first (progressive MoDE-k)
  sentence_encoder/          the clustering's sentence encoder (MiniLM: 87 MiB), so
                             class names route exactly as the captions were clustered
  tokenizer/<bpe file>       the CLIP BPE merges the text towers read

mode.json: format + version; models (folder, step, logit_scale (ln of the multiplier,
clamped at ln 100 as our model applies it; HF's config holds the same), logit_bias: the
SigLIP bias has no HF CLIP slot, so it lives here), experts (index = expert id
of fine_to_expert), dense; model (our config.model, shared by all models);
routing (report.mode 'reference' | 'paper', top_k, the routing constants);
sentence_encoder (kind, name, folder, pooling, normalize, max_length,
compute_dtype); image (resolution, short-side bicubic resize + center crop,
uint8 RGB in, OpenAI mean/std applied inside our model: a HF CLIPModel needs
(x / 255 - mean) / std as float NCHW pixel_values); tokenizer (CLIP BPE,
context length, sot/eot/pad ids); templates (OpenAI's 80, the default for
class prompts); provenance (the workdir's config essentials, plan, steps).

`load(path)` reads a local bundle back with our own code only (models/loader.py:
safetensors -> convert.params_from_hf -> our CLIP): eval/classify.py uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np
from flax import nnx
from safetensors.numpy import save as save_safetensors

from mode_jax import constants
from mode_jax import distributed
from mode_jax import workdir as wd
from mode_jax.eval import report
from mode_jax.eval import templates
from mode_jax.models import convert
from mode_jax.models import loader as model_loader
from mode_jax.text import clip_bpe, clip_text_encoder, encoders, sentence_encoder

FORMAT, VERSION = "mode-bundle", 1
MODE_JSON, WEIGHTS = model_loader.MODE_JSON, model_loader.WEIGHTS   # what the loader reads
HF_CONFIG = "config.json"
ENCODER_DIR, TOKENIZER_DIR = "sentence_encoder", "tokenizer"
FINE_CENTERS, FINE_TO_EXPERT = "fine_centers.npy", "fine_to_expert.npy"
EXPERT_ORDER = "expert_order.json"
# What routing.py computes with besides the arrays; a bundle records their values and
# refuses to route with code whose values differ.
ROUTING_CONSTANTS = ("SMALL_TASK_CLASSES", "SMALL_TASK_SHIFT", "TAU_SCALE", "TAU_MIN_ARG",
                     "TAU_OFFSET", "ENSEMBLE_TEMPERATURE", "PAPER_LAMBDA",
                     "PAPER_LARGE_TASK_CLASSES")
# The workdir config.json fields a bundle keeps as provenance.
PROVENANCE_FIELDS = ("model", "embed", "cluster", "report", "mode", "batch_size", "optim",
                     "expert_stream", "input")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.out = ""   # bundle folder or URL; "" = <workdir>/bundle
  return c


def _as_dict(section) -> dict:
  return section.to_dict() if hasattr(section, "to_dict") else dict(section or {})


def export_config(config) -> ml_collections.ConfigDict:
  c = default_config()
  c.update(_as_dict(config.get("export")))
  return c


# ---- one model as a HF CLIPModel folder ------------------------------------------------

def _host(x) -> np.ndarray:
  """A (replicated) array as numpy on this host, also when other hosts hold copies."""
  shards = getattr(x, "addressable_shards", None)
  return np.asarray(shards[0].data if shards else x, np.float32)


def model_params(model) -> dict:
  """Our CLIP's parameters as a nested dict of float32 numpy arrays."""
  return jax.tree.map(_host, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def write_hf_model(folder: str, model_cfg, params: dict) -> dict:
  """Writes folder/config.json + folder/model.safetensors; returns the extras HF CLIP
  cannot hold ({'logit_scale', 'logit_bias'}) for mode.json."""
  # HF applies exp(logit_scale) unclamped; ours clamps at ln 100: export the clamped value
  scale = float(min(float(np.asarray(params["logit_scale"])), constants.LOGIT_SCALE_MAX))
  params = dict(params, logit_scale=np.asarray(scale, np.float32))
  hf_cfg = convert.hf_config(model_cfg, logit_scale=scale)   # refuses what HF cannot compute
  sd = convert.hf_from_params(params)
  wd.write_bytes(wd.path(folder, WEIGHTS), save_safetensors(sd, metadata={"format": "pt"}))
  wd.write_json(wd.path(folder, HF_CONFIG), hf_cfg)
  bias = params.get("logit_bias")
  return {"logit_scale": scale, "logit_bias": None if bias is None else float(np.asarray(bias))}


def portable_model_config(model_cfg) -> ml_collections.ConfigDict:
  """config.model with the knobs that pick kernels, not results, reset for any machine."""
  c = ml_collections.ConfigDict(dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict")
                                     else model_cfg))
  c.attention, c.remat = "auto", "none"
  return c


# ---- the pieces of mode.json -----------------------------------------------------------

def embed_config(config) -> ml_collections.ConfigDict:
  c = encoders.default_config()
  c.update(_as_dict(config.get("embed")))
  return c


def sentence_encoder_source(embed_cfg) -> tuple[str, str]:
  """(kind 'bert' | 'clip', local file or folder to copy) of the clustering's encoder."""
  enc = embed_cfg.encoder
  if enc.startswith(clip_text_encoder.PREFIX):
    path = clip_text_encoder.weights_path(enc)
    if not os.path.exists(path):
      raise FileNotFoundError(f"embed.encoder={enc!r}: {path} not found")
    return "clip", path
  if enc == sentence_encoder.MINILM or os.path.isdir(enc):
    return "bert", sentence_encoder.resolve_model_dir(enc)
  if enc in encoders._ENCODERS:
    raise ValueError(f"embed.encoder={enc!r} is a registered encoder without files to copy: "
                     "export supports 'minilm', a Hugging Face folder or 'clip:<weights>'")
  raise ValueError(f"embed.encoder={enc!r} is neither 'minilm', a model folder nor 'clip:...'")


def _bert_max_length(folder: str, requested: int) -> int:
  """The tokens (incl. specials) SentenceEncoder uses: its rule, read from the folder."""
  with open(os.path.join(folder, "config.json")) as f:
    max_pos = json.load(f).get("max_position_embeddings", 512)
  return min(requested or sentence_encoder._default_max_length(folder), max_pos)


def _tree_bytes(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def encoder_info(embed_cfg, kind: str, source: str) -> dict:
  name = os.path.basename(source.rstrip("/")) if kind == "clip" else ""
  return {"kind": kind, "name": embed_cfg.encoder,
          "path": "/".join(filter(None, (ENCODER_DIR, name))),
          "pooling": embed_cfg.pooling if kind == "bert" else "eos (CLIP text tower)",
          "normalize": True, "compute_dtype": embed_cfg.compute_dtype,
          "max_length": (_bert_max_length(source, embed_cfg.max_length) if kind == "bert"
                         else int(embed_cfg.max_length)),   # clip: 0 = its context length
          "bytes": _tree_bytes(source)}


def image_info(model_cfg) -> dict:
  return {"resolution": int(model_cfg.image_size),
          "resize": "shorter side to resolution, bicubic (long side truncated, torchvision "
                    "Resize(int)); JPEG decoded at the power-of-two DCT scale keeping the "
                    "short side >= resolution",
          "crop": "center", "color": "RGB; grey, palette and alpha flattened on white",
          "dtype": "uint8", "mean": list(constants.IMAGE_MEAN), "std": list(constants.IMAGE_STD),
          "normalized_by": "our model (vit.normalize_uint8: (x - 255 mean) / (255 std)); a HF "
                           "CLIPModel takes ((x / 255 - mean) / std) as float NCHW pixel_values"}


def tokenizer_info(model_cfg, bpe_file: str) -> dict:
  return {"kind": "clip_bpe", "file": f"{TOKENIZER_DIR}/{os.path.basename(bpe_file)}",
          "context_length": int(model_cfg.context_length), "vocab_size": constants.VOCAB_SIZE,
          "sot_id": constants.VOCAB_SIZE - 2, "eot_id": constants.VOCAB_SIZE - 1, "pad_id": 0,
          "sot_token": clip_bpe.SOT, "eot_token": clip_bpe.EOT,
          "cleaning": "ftfy, html unescape x2, whitespace collapse, lower case "
                      "(open_clip SimpleTokenizer clean='lower')",
          "truncation": "the last kept position becomes EOT",
          "pooling": ("text feature at the first EOT (= the argmax id: EOT is the largest)"
                      if model_cfg.get("eos_id") is None else
                      f"text feature at the first id {model_cfg.eos_id}")}


def routing_info(config) -> dict:
  rep = report.default_config()
  rep.update(_as_dict(config.get("report")))
  return {"mode": rep.mode, "top_k": int(rep.top_k),
          "constants": {k: getattr(constants, k) for k in ROUTING_CONSTANTS},
          "class_embedding": "per class: every (name, template) prompt embedded with the "
                             "sentence encoder, normalised, averaged, re-normalised",
          "ensemble": "logits = sum_c w_c cos(image_c, class_c): raw cosines of each expert, "
                      "no logit scale, no softmax (docs/method.md steps 7-8)",
          "fine_centers": FINE_CENTERS, "fine_to_expert": FINE_TO_EXPERT,
          "expert_order": EXPERT_ORDER}


def provenance(config, workdir: str, models: dict) -> dict:
  p = wd.path(workdir, "config.json")
  cfg = wd.read_json(p) if wd.exists(p) else json.loads(config.to_json_best_effort())
  out = {"workdir": workdir, "config": {k: cfg[k] for k in PROVENANCE_FIELDS if k in cfg},
         "steps": {name: m.step for name, m in models.items()},
         "fingerprints": {name: m.fingerprint for name, m in models.items()}}
  for rel in ("seed/plan.json", "cluster/meta.json", "embed/meta.json"):
    if wd.exists(wd.path(workdir, rel)):
      out[rel] = wd.read_json(wd.path(workdir, rel))
  return out


def write_bundle(out: str, models, *, model_cfg, centers, fine_to_expert, order, embed_cfg,
                 routing: dict, provenance: dict) -> dict:
  """Writes a bundle at `out` and returns its mode.json.

  models: (name, step, params_fn) for 'dense' and 'expert_0'..; params_fn()
  gives that model's parameter dict and runs on every host (a checkpoint
  restore is a collective); process 0 writes. mode.json is written last, so
  a bundle with one is whole.
  """
  kind, source = sentence_encoder_source(embed_cfg)
  bpe = clip_bpe.default_bpe_path()
  model_cfg = portable_model_config(model_cfg)
  convert.validate_hf(model_cfg)   # before any checkpoint is read
  n = len(order)
  info = {
      "format": FORMAT, "version": VERSION,
      "models": {}, "experts": [f"expert_{c}" for c in range(n)], "dense": "dense",
      "model": model_cfg.to_dict(), "routing": routing,
      "sentence_encoder": encoder_info(embed_cfg, kind, source),
      "image": image_info(model_cfg), "tokenizer": tokenizer_info(model_cfg, bpe),
      "templates": {"default": "openai", "openai": templates.openai_imagenet_templates()},
      "provenance": provenance,
  }
  models = list(models)   # the params_fn stay lazy: one model in memory at a time
  missing = [m for m in info["experts"] + [info["dense"]] if m not in {n for n, _, _ in models}]
  if missing:
    raise ValueError(f"bundle {out}: no weights for {missing}")
  distributed.on_primary("bundle dir", lambda: wd.makedirs(out))
  for name, step, params_fn in models:
    params = params_fn()
    extras = distributed.on_primary(
        f"export {name}", lambda: write_hf_model(wd.path(out, name), model_cfg, params))
    info["models"][name] = {"folder": name, "step": int(step), **(extras or {})}
    if distributed.is_primary():
      print(f"[export] {name} (step {step}) -> {wd.path(out, name)}")

  def write_rest():
    wd.save_npy(wd.path(out, FINE_CENTERS), np.asarray(centers, np.float32))
    wd.save_npy(wd.path(out, FINE_TO_EXPERT), np.asarray(fine_to_expert, np.int32))
    wd.write_json(wd.path(out, EXPERT_ORDER), [int(c) for c in order])
    enc = wd.path(out, *info["sentence_encoder"]["path"].split("/"))
    if os.path.isdir(source):
      wd.upload_tree(source, enc)
    else:
      wd.upload(source, enc)
    wd.upload(bpe, wd.path(out, *info["tokenizer"]["file"].split("/")))
    wd.write_json(wd.path(out, MODE_JSON), info)
    mb = info["sentence_encoder"]["bytes"] / 2 ** 20
    print(f"[export] {len(info['models'])} models, routing arrays, sentence encoder "
          f"{embed_cfg.encoder!r} ({mb:.0f} MB) -> {out}")

  distributed.on_primary("export", write_rest)
  return info


# ---- reading a bundle back ---------------------------------------------------------------

@dataclasses.dataclass
class Bundle:
  """A bundle on local disk; models, tokenizer and encoder are built on first use."""
  path: str
  info: dict
  fine_centers: np.ndarray
  fine_to_expert: np.ndarray
  expert_order: list[int]

  @property
  def experts(self) -> list[str]:
    return list(self.info["experts"])

  @property
  def routing(self) -> dict:
    return self.info["routing"]

  @property
  def resolution(self) -> int:
    return int(self.info["image"]["resolution"])

  @property
  def context_length(self) -> int:
    return int(self.info["tokenizer"]["context_length"])

  def model_config(self, dtype: str | None = None) -> ml_collections.ConfigDict:
    c = portable_model_config(self.info["model"])
    if dtype:
      c.dtype = dtype
    return c

  def load_model(self, name: str, dtype: str | None = None):
    """Our CLIP for `name` ('dense', 'expert_<c>'), in the recorded compute dtype."""
    m = self.info["models"][name]
    model, _ = model_loader.load_model(os.path.join(self.path, m["folder"]),
                                       model_cfg=self.model_config(dtype))
    return model

  @functools.cached_property
  def tokenizer(self):
    return clip_bpe.ClipTokenizer(os.path.join(self.path, self.info["tokenizer"]["file"]),
                         context_length=self.context_length)

  @functools.cached_property
  def sentence_encoder(self):
    """The clustering's encoder from the bundle's own files, configured as in embed."""
    e = self.info["sentence_encoder"]
    folder = os.path.join(self.path, *e["path"].split("/"))
    c = encoders.default_config()
    c.encoder = folder if e["kind"] == "bert" else clip_text_encoder.PREFIX + folder
    c.pooling = e["pooling"] if e["kind"] == "bert" else c.pooling
    c.compute_dtype, c.max_length = e["compute_dtype"], int(e["max_length"])
    return encoders.make_encoder(c)

  def templates(self, which: str = "openai") -> list[str]:
    return list(self.info["templates"][which])


def _check(info: dict, path: str) -> None:
  if info.get("format") != FORMAT or int(info.get("version", 0)) > VERSION:
    raise ValueError(f"{path}/{MODE_JSON}: format {info.get('format')!r} version "
                     f"{info.get('version')}; this code reads {FORMAT!r} up to {VERSION}")
  for k, v in info["routing"]["constants"].items():
    if getattr(constants, k) != v:
      raise ValueError(f"{path}: the bundle routes with {k}={v}, this code with "
                       f"{getattr(constants, k)}; use the code version that exported it")


def load(path: str) -> Bundle:
  """Reads mode.json and the routing arrays of a local bundle folder."""
  if wd.is_remote(path):
    raise ValueError(f"bundle {path}: classify reads a local folder; copy it first "
                     "(gsutil -m cp -r, aws s3 cp --recursive)")
  path = os.path.abspath(os.path.expanduser(path))
  p = os.path.join(path, MODE_JSON)
  if not os.path.exists(p):
    raise FileNotFoundError(f"{p} not found: make a bundle with `python launch.py export "
                            "--config ... --workdir ...`")
  with open(p) as f:
    info = json.load(f)
  _check(info, path)
  r = info["routing"]
  centers = np.load(os.path.join(path, r["fine_centers"])).astype(np.float32)
  f2e = np.load(os.path.join(path, r["fine_to_expert"])).astype(np.int32)
  with open(os.path.join(path, r["expert_order"])) as f:
    order = [int(c) for c in json.load(f)]
  n = len(info["experts"])
  if len(f2e) != len(centers) or (len(f2e) and int(f2e.max()) >= n):
    raise ValueError(f"{path}: fine_to_expert does not map {len(centers)} centers to "
                     f"{n} experts")
  return Bundle(path, info, centers, f2e, order)
