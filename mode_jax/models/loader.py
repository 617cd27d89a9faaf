"""The one way to turn a weights source into our CLIP: `load_model(source, ...)`.

Sources, told apart by what is on disk:
  checkpoint  an Orbax checkpoint directory of ours (numbered step folders):
              parameters only (no Adam moments) at `step` (default latest);
              its model config is the run's `config.model` (`model_cfg=`)
  bundle      a model folder of an exported bundle (`<bundle>/expert_0`): a
              HF CLIPModel folder whose model config and logit bias live in
              the bundle's mode.json one level up (mode_jax/eval/bundle.py)
  hf          a Hugging Face CLIPModel folder (config.json + model.safetensors)
  file        an OpenAI / OpenCLIP state dict (.safetensors, or .pt/.bin with torch)

Every source returns (model, model config). With `model_cfg` given for a
weights source (hf, file, bundle), the weights are put into *that*
architecture (e.g. the seed's, with scan_layers) and must fit it exactly:
how training starts from public weights (`config.init.pretrained`). Models
are built abstractly (nnx.eval_shape) and filled, never randomly
initialised first, and placed replicated on `mesh` when one is given.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from mode_jax import checkpoint as ckpt_lib
from mode_jax import workdir as wd
from mode_jax.models import clip as clip_lib
from mode_jax.models import convert

MODE_JSON = "mode.json"          # a bundle's description (eval/bundle.py writes it)
WEIGHTS = "model.safetensors"    # the weights file of a HF / bundle model folder
KINDS = ("checkpoint", "bundle", "hf", "file")


def source_kind(source: str) -> str:
  """Which of KINDS `source` is (FileNotFoundError when it is none)."""
  if wd.is_remote(source):
    return "checkpoint"   # only our Orbax checkpoints are read from object stores
  path = os.path.expanduser(source)
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, WEIGHTS)):
      parent = os.path.dirname(os.path.abspath(path).rstrip("/"))
      return "bundle" if os.path.exists(os.path.join(parent, MODE_JSON)) else "hf"
    if any(n.isdigit() for n in os.listdir(path)):
      return "checkpoint"
    raise FileNotFoundError(f"{source}: neither a checkpoint directory (numbered steps) nor a "
                            f"model folder ({WEIGHTS})")
  if os.path.isfile(path):
    return "file"
  raise FileNotFoundError(f"{source} not found")


def abstract_model(model_cfg):
  """(graphdef, abstract parameter state) of our CLIP for `model_cfg`: shapes only."""
  return nnx.split(nnx.eval_shape(lambda: clip_lib.CLIP(model_cfg, rngs=nnx.Rngs(0))))


def _replicated(mesh):
  from jax.sharding import NamedSharding, PartitionSpec as P
  return NamedSharding(mesh, P())


def _bundle_entry(folder: str) -> tuple[ml_collections.ConfigDict, float | None]:
  """(model config, logit bias) of a bundle model folder, from ../mode.json."""
  parent = os.path.dirname(os.path.abspath(folder).rstrip("/"))
  with open(os.path.join(parent, MODE_JSON)) as f:
    info = json.load(f)
  name = os.path.basename(os.path.abspath(folder).rstrip("/"))
  entry = next((m for m in info["models"].values() if m["folder"] == name), {})
  cfg = ml_collections.ConfigDict(info["model"])
  cfg.attention, cfg.remat = "auto", "none"   # kernels, not results: any machine's default
  return cfg, entry.get("logit_bias")


def _shapes(tree) -> dict:
  return {tuple(k.key for k in path if hasattr(k, "key")): tuple(np.shape(x))
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fill(model_cfg, params: dict, source: str, mesh=None):
  """Our CLIP for model_cfg holding `params` (loop layout, stacked here when it scans)."""
  if model_cfg.get("scan_layers"):
    params = convert.stack_blocks(params)
  graphdef, state = abstract_model(model_cfg)
  params = {k: v for k, v in params.items() if k in state}   # e.g. logit_bias when unused
  got, want = _shapes(params), _shapes(state)
  if got != want:
    bad = sorted(set(got.items()) ^ set(want.items()), key=str)[:3]
    raise ValueError(f"{source}: the weights do not fit the model config: {bad}")
  arrays = jax.tree.map(jax.numpy.asarray, params)
  if mesh is not None:
    arrays = jax.device_put(arrays, _replicated(mesh))
  nnx.replace_by_pure_dict(state, arrays)
  return nnx.merge(graphdef, state)


def load_model(source: str, *, model_cfg=None, step: int | None = None, mesh=None,
               act: str | None = None, dtype: str | None = None):
  """(our CLIP, its model config) from any source (see the module docstring).

  model_cfg: the architecture (required for checkpoints; for weights sources
  it overrides the one read from the files). step: a checkpoint's step
  (default latest). mesh: replicate the parameters on it (a checkpoint
without one: on all devices). act: the activation
  of an OpenAI-layout state dict, which cannot say (OpenAI quick_gelu; most
  OpenCLIP LAION models gelu). dtype: the compute dtype ("bfloat16", ...) of a
  config read from the files.
  """
  kind = source_kind(source)
  if kind == "checkpoint":
    if model_cfg is None:
      raise ValueError(f"{source}: a checkpoint needs its run's model config (model_cfg=)")
    graphdef, state = abstract_model(model_cfg)
    mesh = mesh if mesh is not None else jax.make_mesh((jax.device_count(),), ("data",))
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                        sharding=_replicated(mesh)), state)
    ck = ckpt_lib.Checkpointer(source)
    try:
      params = ck.restore_params({"params": state}, step)
    finally:
      ck.close()
    return nnx.merge(graphdef, params), model_cfg
  bias = None
  if kind == "bundle":
    file_cfg, bias = _bundle_entry(source)
    params = convert.params_from_hf(convert.read_state_dict(os.path.join(source, WEIGHTS)))
  else:
    file_cfg, params = convert.load_pretrained(os.path.expanduser(source))
  if act:
    file_cfg.act = act
  if dtype:
    file_cfg.dtype = dtype
  cfg = model_cfg if model_cfg is not None else file_cfg
  if cfg.get("logit_bias"):
    params["logit_bias"] = np.asarray(0.0 if bias is None else bias, np.float32)
  return _fill(cfg, params, source, mesh), cfg
