"""Which models the evaluate and probe stages score, and how each is loaded and embedded.

config.evaluate.models (mode_jax/eval/tasks.py default_config): "" = this
MoDE run's dense baseline and experts ("mode"); else "name=path[|act],..."
of public CLIPs from local HF CLIPModel folders or OpenAI/OpenCLIP files
("mode" adds this run's). Every model loads through models/loader.py.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import digests
from mode_jax.data.io import loader as data_loader
from mode_jax.eval import tasks as tasks_lib
from mode_jax.models import convert, embedders
from mode_jax.models import loader as model_loader
from mode_jax.train import runs, sharding, text_inputs

# eval/<name>/ folders that are not free for a public model: the run's own models and
# the stage's files (`seed` would pass for the seed baseline in the report).
RESERVED = ("dense", "seed", "meta_emb", "tasks", "mode")


@dataclasses.dataclass
class ModelRef:
  name: str
  kind: str            # "checkpoint" (this run) or "file" (a public CLIP)
  path: str            # checkpoint dir, or the file / HF folder
  fingerprint: str     # what its outputs are keyed by: its run's manifest, or its weights'
  #                      content (+ activation)
  step: int | None = None  # a checkpoint's step
  act: str | None = None   # a file's activation when its weights cannot tell (OpenCLIP: gelu)


def eval_config(config) -> ml_collections.ConfigDict:
  return config.evaluate if "evaluate" in config else tasks_lib.default_config()


def convert_acts() -> tuple[str, ...]:
  return tuple(convert.HF_ACTIVATIONS)


def eval_models(config, workdir: str) -> dict[str, ModelRef]:
  """config.evaluate.models -> {name: ModelRef}; "" means this run's models ("mode")."""
  items = [x.strip() for x in str(eval_config(config).models).split(",") if x.strip()]
  out = {}
  for item in items or ["mode"]:
    if item == "mode":
      for name, m in runs.finished_models(config, workdir).items():
        out[name] = ModelRef(name, "checkpoint", m.ckpt_dir, m.fingerprint, step=m.step)
      continue
    name, eq, path = item.partition("=")
    name, (path, _, act) = name.strip(), path.strip().partition("|")
    if not eq or not name or not path:
      raise ValueError(f"config evaluate.models: {item!r} is not name=path[|act] (or 'mode')")
    if name in out or name in RESERVED or name.startswith("expert_") or "/" in name:
      raise ValueError(f"config evaluate.models: the name {name!r} is taken or not a "
                       f"folder name (reserved: {RESERVED}, expert_<c>)")
    if act and act not in convert_acts():
      raise ValueError(f"config evaluate.models: {item!r}: activation {act!r} not in "
                       f"{convert_acts()}")
    if wd.is_remote(path):
      raise ValueError(f"config evaluate.models: {path}: public checkpoints are read from "
                       "local files; copy it down first")
    weights = wd.path(path, "model.safetensors") if wd.isdir(path) else path
    if not wd.exists(weights):
      raise FileNotFoundError(f"config evaluate.models: {weights} not found")
    fp = provenance.digest([provenance.tree_digest(path, digests.memo_dir(workdir)), act])
    out[name] = ModelRef(name, "file", path, fp, act=act or None)
  return out


def eval_mesh():
  """Every device of every host on one axis: evaluation splits its batches over all."""
  return sharding.make_mesh({"data": -1, "fsdp": 1})


def load(config, ref: ModelRef, mesh):
  """(CLIP replicated on `mesh`, its model config)."""
  if ref.kind == "checkpoint":
    model, cfg = model_loader.load_model(ref.path, model_cfg=config.model, step=ref.step,
                                         mesh=mesh)
  else:
    model, cfg = model_loader.load_model(ref.path, mesh=mesh, act=ref.act)
  return model, cfg


def input_config(config, resolution: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.input.to_dict() if "input" in config else
                                data_loader.default_config().to_dict())
  c.batch_size = config.eval_batch_size
  c.resolution = resolution
  c.num_workers = 0
  return c


def batches(in_cfg, workdir: str, pattern: str, batch_size: int):
  """(images, labels, index with -1 on padding and bad samples) of a split, this host's rows."""
  for b in data_loader.eval_batches(in_cfg, workdir, pattern, batch_size=batch_size):
    yield b["image"], b["label"], np.where(b["valid"], b["index"], -1)


def make_embedders(config, ref: ModelRef, mesh):
  """(embed_images, embed_texts, image size, logit scale) of one model on the eval mesh."""
  model, cfg = load(config, ref, mesh)
  ei, et = embedders.make_embedders(model, text_inputs.eval_tokenizer(config, cfg),
                                    context_length=cfg.context_length,
                                    batch_size=config.eval_batch_size, mesh=mesh)
  return ei, et, cfg.image_size, float(np.asarray(model.logit_terms()[0]))
