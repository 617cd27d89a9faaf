"""The evaluate stage: every model on every task -> eval/<model>/<task>.npz (raw cosines).

Tasks come from config.evaluate (mode_jax/eval/tasks.py): the workdir's own
shards/eval/ tasks, or a suite of CLIP_benchmark folders (MoDE-26,
DataComp-38) where absent tasks are skipped (eval/skipped.json). Models:
this MoDE run's dense baseline and experts (`mode`), and/or public CLIPs
converted from local files (`name=path`). Per (model, task) the work is
skipped when eval/<model>/done.json records the same checkpoint and task
fingerprint (tasks.fingerprint: spec and shard signatures); the metadata
embeddings likewise, with the encoder's. eval/tasks/<task>.json records
each task as evaluated, eval/scores.{md,csv} every model's score in the
task's metric.

Images are split over all devices of all hosts (each host reads its block
of every batch), class prompts likewise; process 0 writes eval/.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from mode_jax import distributed
from mode_jax import workdir as wd
from mode_jax.data.io import loader
from mode_jax.eval import files
from mode_jax.eval import tasks as tasks_lib


# eval/<name>/ folders that are not free for a public model: the run's own models and
# the stage's files (`seed` would pass for the seed baseline in the report).
RESERVED = ("dense", "seed", "meta_emb", "tasks", "mode")


@dataclasses.dataclass
class ModelRef:
  name: str
  kind: str            # "checkpoint" (this run) or "file" (a public CLIP)
  path: str            # checkpoint dir, or the file / HF folder
  ident: str           # what invalidates its outputs: the step, or the file's signature
  act: str | None = None   # a file's activation when its weights cannot tell (OpenCLIP: gelu)


def eval_config(config) -> ml_collections.ConfigDict:
  return config.evaluate if "evaluate" in config else tasks_lib.default_config()


def eval_models(config, workdir: str) -> dict[str, ModelRef]:
  """config.evaluate.models -> {name: ModelRef}; "" means this run's models ("mode")."""
  from mode_jax import pipeline
  items = [x.strip() for x in str(eval_config(config).models).split(",") if x.strip()]
  out = {}
  for item in items or ["mode"]:
    if item == "mode":
      for name, (ck, step) in pipeline.finished_models(config, workdir).items():
        out[name] = ModelRef(name, "checkpoint", ck, str(step))
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
    out[name] = ModelRef(name, "file", path, wd.signature(weights) + (f"|{act}" if act else ""),
                         act or None)
  return out


def convert_acts() -> tuple[str, ...]:
  from mode_jax.models import convert
  return tuple(convert.HF_ACTIVATIONS)


def load(config, ref: ModelRef, mesh):
  """(CLIP replicated on `mesh`, image size, context length)."""
  from mode_jax import pipeline
  if ref.kind == "checkpoint":
    return (pipeline.load_model(config, ref.path, int(ref.ident), mesh),
            config.model.image_size, config.model.context_length)
  import jax
  from flax import nnx
  from mode_jax.models import clip as clip_lib
  from mode_jax.models import convert
  from mode_jax.train import sharding
  cfg, params = convert.load_pretrained(ref.path)
  if ref.act:   # an OpenAI-layout state dict cannot say (OpenAI: quick_gelu; OpenCLIP: gelu)
    cfg.act = ref.act
  model = clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))
  convert.load_into(model, params)
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, sharding.replicated(mesh))
  return nnx.merge(graphdef, state), cfg.image_size, cfg.context_length


def input_config(config, resolution: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.input.to_dict() if "input" in config else
                                loader.default_config().to_dict())
  c.batch_size = config.eval_batch_size
  c.resolution = resolution
  c.num_workers = 0
  return c


def batches(in_cfg, workdir: str, pattern: str, batch_size: int):
  """(images, labels, index with -1 on padding and bad samples) of a split, this host's rows."""
  for b in loader.eval_batches(in_cfg, workdir, pattern, batch_size=batch_size):
    yield b["image"], b["label"], np.where(b["valid"], b["index"], -1)


def make_embedders(config, ref: ModelRef, mesh):
  """(embed_images, embed_texts, image size, logit scale) of one model on the eval mesh."""
  from mode_jax import pipeline
  from mode_jax.models import embedders
  model, res, ctx = load(config, ref, mesh)
  ei, et = embedders.make_embedders(model, pipeline.clip_tokenizer(), context_length=ctx,
                                    batch_size=config.eval_batch_size, mesh=mesh)
  return ei, et, res, float(np.asarray(model.logit_terms()[0]))


# ----------------------------------------------------------------- stage ----
def write_meta_embeddings(config, workdir, tasks, captions, fps):
  """eval/meta_emb/<task>.npy with the clustering's sentence encoder (DESIGN.md step 8);
  redone when the task or the encoder changed (eval/meta_emb/<task>.json records both)."""
  from mode_jax.eval import evaluate as ev
  from mode_jax.text import embed_stage
  encoder, enc_fp = None, embed_stage.fingerprint(config.embed)
  for name, task in tasks.items():
    stamp = {"task": fps[name], "encoder": enc_fp}
    stamp_p = wd.path(workdir, files.meta_rel(name))[:-4] + ".json"
    if wd.exists(wd.path(workdir, files.meta_rel(name))) and wd.exists(stamp_p) \
        and wd.read_json(stamp_p) == stamp:
      continue
    encoder = encoder or embed_stage.make_encoder(config.embed)
    emb = ev.metadata_embedding(lambda t: encoder.encode(list(t), progress=False), name,
                                task.spec(), captions.get(name))
    files.write_meta_emb(workdir, name, emb)
    wd.write_json(stamp_p, stamp)


def run_evaluate(config, workdir: str):
  from mode_jax import pipeline
  from mode_jax.eval import evaluate as ev
  tasks, skipped = tasks_lib.resolve(eval_config(config), workdir)
  models = eval_models(config, workdir)
  captions = {n: tasks_lib.captions_per_image(t, workdir) for n, t in tasks.items()
              if t.kind == "retrieval"}
  fps = {n: tasks_lib.fingerprint(t, workdir) for n, t in tasks.items()}

  def record():
    files.write_skipped(workdir, skipped)
    for n, t in tasks.items():
      files.write_task_spec(workdir, n, t.spec())
    if any(m.name.startswith("expert_") for m in models.values()):   # routing needs them
      write_meta_embeddings(config, workdir, tasks, captions, fps)

  distributed.on_primary("task specs and meta embeddings", record)
  for reason in (f"{k}: {v}" for k, v in skipped.items()):
    if distributed.is_primary():
      print(f"[evaluate] skipped {reason}")

  mesh = pipeline.eval_mesh()
  for name, ref in models.items():
    done_p = wd.path(workdir, "eval", name, "done.json")
    done = wd.read_json(done_p) if wd.exists(done_p) else {}
    todo = [n for n in tasks if done.get(n) != [ref.ident, fps[n]]
            or not wd.exists(wd.path(workdir, files.logits_rel(name, n)))]
    if not todo:
      continue
    embed_images, embed_texts, res, scale = make_embedders(config, ref, mesh)
    in_cfg = input_config(config, res)
    for n in todo:
      task = tasks[n]
      data = batches(in_cfg, workdir, task.pattern, config.eval_batch_size)
      if task.kind == "retrieval":
        out = ev.evaluate_retrieval(embed_images, embed_texts, captions[n], data)
      else:
        out = ev.evaluate_zeroshot(embed_images, embed_texts, n, task.spec(), data)
      done[n] = [ref.ident, fps[n]]

      def write(out=out, n=n):
        files.write_task_logits(workdir, name, n, out["logits"], out["labels"],
                                out.get("txt_to_img"), logit_scale=scale)
        wd.write_json(done_p, done)

      distributed.on_primary(f"eval {name} {n}", write)
      if distributed.is_primary():
        print(f"[evaluate] {name} {n}: {out['logits'].shape[0]} images")
  distributed.on_primary("eval scores", lambda: ev.write_scores(workdir, tasks, list(models)))
