"""Stage `evaluate`: every model on every task -> eval/<model>/<task>.npz (raw cosines).

Tasks come from config.evaluate (mode_jax/eval/tasks.py): the workdir's own
shards/eval/ tasks, or a suite of CLIP_benchmark folders (MoDE-26,
DataComp-38) where absent tasks are skipped (eval/skipped.json). Models:
this MoDE run's dense baseline and experts (`mode`), and/or public CLIPs
converted from local files (`name=path`; eval/model_refs.py).

Provenance: results are keyed by what made them, never by a path or a step.
eval/<model>/manifest.json records, per task, the key of (the model's
fingerprint: its run's manifest, or its weights' content; the task's
fingerprint: spec and shard contents); a (model, task) is evaluated again
when its key changed. The metadata embeddings likewise, with the encoder's.
Outputs of models and tasks no longer evaluated are moved to stale/.
eval/tasks/<task>.json records each task as evaluated, eval/scores.{md,csv}
every model's score in the task's metric.

Images are split over all devices of all hosts (each host reads its block
of every batch), class prompts likewise; process 0 writes eval/.
"""

from __future__ import annotations

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.eval import evaluate as ev
from mode_jax.eval import files
from mode_jax.eval import model_refs
from mode_jax.eval import tasks as tasks_lib
from mode_jax.text import encoders


def _write_meta_embeddings(config, workdir, tasks, captions, fps):
  """eval/meta_emb/<task>.npy with the clustering's sentence encoder (docs/method.md step 8);
  redone when the task or the encoder changed (eval/meta_emb/<task>.json records both)."""
  encoder, enc_fp = None, encoders.fingerprint(config.embed)
  for name, task in tasks.items():
    stamp = {"task": fps[name], "encoder": enc_fp}
    stamp_p = wd.path(workdir, files.meta_rel(name))[:-4] + ".json"
    if wd.exists(wd.path(workdir, files.meta_rel(name))) and wd.exists(stamp_p) \
        and wd.read_json(stamp_p) == stamp:
      continue
    encoder = encoder or encoders.make_encoder(config.embed)
    emb = ev.metadata_embedding(lambda t: encoder.encode(list(t), progress=False), name,
                                task.spec(), captions.get(name))
    files.write_meta_emb(workdir, name, emb)
    wd.write_json(stamp_p, stamp)


def run(config, workdir: str):
  tasks, skipped = tasks_lib.resolve(model_refs.eval_config(config), workdir)
  models = model_refs.eval_models(config, workdir)
  captions = {n: tasks_lib.captions_per_image(t, workdir) for n, t in tasks.items()
              if t.kind == "retrieval"}
  fps = {n: tasks_lib.fingerprint(t, workdir) for n, t in tasks.items()}
  routed = any(m.name.startswith("expert_") for m in models.values())   # needs meta_emb
  enc_fp = encoders.fingerprint(config.embed) if routed else None
  # What eval/ as a whole is made from: the report's input.
  decision = provenance.decide(
      workdir, "eval", "evaluate", {"tasks": sorted(tasks)},
      {**{f"model {m}": provenance.Input(r.fingerprint, label=m) for m, r in models.items()},
       **{f"task {n}": provenance.Input(fp, label=f"task {n}") for n, fp in fps.items()},
       **({"encoder": provenance.Input(enc_fp, label="sentence encoder")} if routed else {})},
      outputs_exist=wd.exists(wd.path(workdir, "eval")),
      complete=all(wd.exists(wd.path(workdir, files.logits_rel(m, n)))
                   for m in models for n in tasks))
  if not decision.todo:
    if distributed.is_primary():
      print(f"evaluate: up to date ({len(models)} models x {len(tasks)} tasks)")
    return
  if distributed.is_primary():
    print(provenance.say("evaluate", decision,
                         f"evaluating what changed of {len(models)} models x {len(tasks)} tasks"))

  def record():
    provenance.start(workdir, "eval", decision, stale=_stale(workdir, models, tasks))
    files.write_skipped(workdir, skipped)
    for n, t in tasks.items():
      files.write_task_spec(workdir, n, t.spec())
    if routed:
      _write_meta_embeddings(config, workdir, tasks, captions, fps)

  distributed.on_primary("task specs and meta embeddings", record)
  for reason in (f"{k}: {v}" for k, v in skipped.items()):
    if distributed.is_primary():
      print(f"[evaluate] skipped {reason}")

  mesh = model_refs.eval_mesh()
  for name, ref in models.items():
    keys = {n: provenance.digest([ref.fingerprint, fps[n]]) for n in tasks}
    manifest_p = wd.path(workdir, "eval", name, provenance.MANIFEST)
    done = wd.read_json(manifest_p).get("tasks", {}) if wd.exists(manifest_p) else {}
    todo = [n for n in tasks if done.get(n) != keys[n]
            or not wd.exists(wd.path(workdir, files.logits_rel(name, n)))]
    if not todo:
      continue
    embed_images, embed_texts, res, scale = model_refs.make_embedders(config, ref, mesh)
    in_cfg = model_refs.input_config(config, res)
    for n in todo:
      task = tasks[n]
      data = model_refs.batches(in_cfg, workdir, task.pattern, config.eval_batch_size)
      out = ev.evaluate_task(embed_images, embed_texts, n, task.spec(), data, captions.get(n))
      done = {t: k for t, k in done.items() if t in tasks and t != n} | {n: keys[n]}

      def write(out=out, n=n, done=done):
        files.write_task_logits(workdir, name, n, out["logits"], out["labels"],
                                out.get("txt_to_img"), logit_scale=scale,
                                txt_index=out.get("txt_index"))
        wd.write_json(manifest_p, {"model": name, "fingerprint": ref.fingerprint,
                                   "tasks": done})

      distributed.on_primary(f"eval {name} {n}", write)
      if distributed.is_primary():
        print(f"[evaluate] {name} {n}: {out['logits'].shape[0]} images")

  def scores():
    ev.write_scores(workdir, tasks, list(models))
    provenance.finish(workdir, "eval", decision, models=sorted(models), tasks=sorted(tasks))

  distributed.on_primary("eval scores", scores)


def _stale(workdir: str, models: dict, tasks: dict) -> list[tuple[str, str]]:
  """eval/ outputs of models and tasks no longer evaluated: moved aside, so the report never
  reads them (a model's outputs of other weights are overwritten task by task)."""
  out = []
  for d in wd.listdir(wd.path(workdir, "eval")):
    folder = wd.path(workdir, "eval", d)
    if d in ("meta_emb", "tasks") or not wd.isdir(folder):
      continue
    if d not in models:
      out.append((folder, workdir))
      continue
    out += [(wd.path(folder, f), workdir) for f in wd.listdir(folder)
            if f.endswith(".npz") and f[:-4] not in tasks]
  for d, ext in (("meta_emb", (".npy", ".json")), ("tasks", (".json",))):
    for f in wd.listdir(wd.path(workdir, "eval", d)):
      if f.endswith(ext) and f.rsplit(".", 1)[0] not in tasks:
        out.append((wd.path(workdir, "eval", d, f), workdir))
  return out
