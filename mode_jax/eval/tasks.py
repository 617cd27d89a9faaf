"""Evaluation tasks: the workdir's own (shards/eval/) or a suite of CLIP_benchmark folders.

A suite (configs/eval_mode26.py, configs/eval_datacomp38.py) is a tuple
TASKS of entries {"name", "folders" (candidate folder names under
config.evaluate.root), "metric", "kind", optional "cb" / "openai" (keys into
the clip-benchmark package's lists / OpenAI's prompts.md), "cb_by_folder"
({folder: key} where one folder's label order needs another list),
"templates" (a list with its source, for tasks neither has), "skip" (a reason, for metrics
not implemented here)}. A task whose folder
is absent is listed as skipped, never fatal.

Class names and templates of a suite task, first found wins:
  1. the folder's classnames.txt / zeroshot_classification_templates.txt
     (they define the label order of its .cls files);
  2. the clip-benchmark package's en_classnames.json / templates json;
  3. OpenAI CLIP's data/prompts.md (configs/eval_data/openai_prompts.json);
  4. templates only: the entry's own list, else OpenAI's 80 ImageNet templates.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os

import ml_collections

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import clip_benchmark as cb
from mode_jax.data.io import digests, loader
from mode_jax.data.io import webdataset as wds
from mode_jax.eval import retrieval
from mode_jax.eval import templates as templates_lib
from mode_jax.eval import zeroshot

log = logging.getLogger(__name__)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPENAI_PROMPTS = os.path.join(ROOT, "configs", "eval_data", "openai_prompts.json")
SUITES = {"mode26": "configs.eval_mode26", "datacomp38": "configs.eval_datacomp38"}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.suite = ""     # "" = the workdir's shards/eval tasks; "mode26", "datacomp38" or a module
  c.root = ""      # directory (local, gs://, s3://) holding the suite's task folders
  c.tasks = ""     # comma-separated subset of task names; "" = all
  c.models = ""    # "" = this MoDE run's dense + experts; else "name=path[|act],..." of public
  #                  CLIPs (HF CLIPModel folder, OpenAI/OpenCLIP .pt, .safetensors; a state dict is
  #                  read as quick_gelu unless |gelu says otherwise, as most OpenCLIP
  #                  LAION models need); "mode" adds the run's
  c.probe_holdout = 0.5   # probe on a task without a train split: this fraction of test images
  #                         is held out for scoring, the rest fits the probe (seeded, stratified)
  return c


@dataclasses.dataclass
class Task:
  name: str
  kind: str                     # "zeroshot" | "retrieval"
  metric: str                   # a zeroshot.METRICS name; retrieval.TASK_METRIC for retrieval
  pattern: str                  # test shards (relative patterns are inside the workdir)
  classnames: list | None = None
  templates: list[str] | None = None
  source: str = "workdir"       # "workdir" or the task folder
  train_pattern: str | None = None
  captions: str = "json"        # where retrieval captions live: "json" (ours) or "txt_lines" (CB)
  split: str = wd.TEST          # wd.VALIDATION: a task a recipe is chosen on (reported apart)

  def spec(self) -> dict:
    """What evaluate.evaluate_zeroshot needs, and what eval/tasks/<task>.json records."""
    out = {"kind": self.kind, "metric": self.metric, "source": self.source}
    if self.split != wd.TEST:
      out["split"] = self.split
    if self.kind == "zeroshot":
      out.update(classnames=self.classnames, templates=self.templates,
                 n_classes=len(self.classnames))
    return out


# ---------------------------------------------------------------- sources ----
@functools.cache
def openai_prompts() -> dict:
  with open(OPENAI_PROMPTS) as f:
    return json.load(f)["datasets"]


def package_classnames(entry: dict):
  """clip-benchmark's list (entry "cb"), else OpenAI's prompts.md list (entry "openai")."""
  try:
    names = templates_lib.benchmark_classnames(entry["cb"]) if entry.get("cb") else None
  except FileNotFoundError:
    names = None
  return names or openai_prompts().get(entry.get("openai", ""), {}).get("classes")


def package_templates(entry: dict):
  """clip-benchmark's, else prompts.md's, else the entry's own "templates" (with a source)."""
  try:
    t = templates_lib.benchmark_templates(entry["cb"]) if entry.get("cb") else None
  except FileNotFoundError:
    t = None
  return t or openai_prompts().get(entry.get("openai", ""), {}).get("templates") or \
      entry.get("templates")


def suite_entries(suite: str) -> tuple[dict, ...]:
  module = SUITES.get(suite, suite)
  if module.endswith(".py"):
    module = module[:-3].replace("/", ".")
  try:
    return tuple(importlib.import_module(module).TASKS)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config evaluate.suite={suite!r}: expected one of {sorted(SUITES)} or "
                     f"a module with TASKS ({e})") from None


# -------------------------------------------------------------- resolution ----
def workdir_tasks(workdir: str) -> dict[str, Task]:
  """The demo corpus's tasks: shards/eval/<task>.json + shards/eval/<task>-*.tar."""
  d = wd.require(workdir, wd.path("shards", "eval"), "prepare")
  specs = {f[:-5]: wd.read_json(wd.path(d, f)) for f in wd.listdir(d) if f.endswith(".json")}
  if not specs:
    raise wd.MissingInput(wd.path(d, "<task>.json"), "prepare")
  out = {}
  for name, s in sorted(specs.items()):
    kind = s.get("kind", "zeroshot")
    out[name] = Task(
        name, kind, s.get("metric", "top1") if kind == "zeroshot" else retrieval.TASK_METRIC,
        wd.path("shards", "eval", f"{name}-*.tar"), classnames=s.get("classnames"),
        templates=None if kind == "retrieval" else
        list(s.get("templates") or templates_lib.task_templates(name)),
        split=s.get("split", wd.TEST))
  return out


def _find_folder(root: str, entry: dict) -> str | None:
  for f in entry.get("folders", (entry["name"],)):
    p = wd.path(root, f)
    if cb.is_task_folder(p):
      return p
  return None


def suite_task(root: str, entry: dict) -> Task | str:
  """The Task of a suite entry, or a one-line reason to skip it (one bad folder never
  stops the suite)."""
  if entry.get("skip"):
    return entry["skip"]
  folder = _find_folder(root, entry)
  if folder is None:
    return f"no task folder {'|'.join(entry.get('folders', (entry['name'],)))} under {root}"
  try:
    return _folder_task(folder, entry)
  except (ValueError, FileNotFoundError, OSError) as e:
    return f"{folder}: {e}"


def _folder_task(folder: str, entry: dict) -> Task | str:
  name = entry["name"]
  tf = cb.open_task(folder)
  kind = entry.get("kind", "zeroshot")
  if tf.kind != kind:
    return f"{folder} is a {tf.kind} task but the suite expects {kind}"
  train = tf.shard_pattern("train") if tf.has_split("train") else None
  if kind == "retrieval":
    return Task(name, kind, retrieval.TASK_METRIC, tf.shard_pattern("test"), source=folder,
                train_pattern=train, captions="txt_lines")
  metric = zeroshot.check_metric(entry.get("metric", "top1"))
  # a folder may need its own package list (VTAB's Caltech101 has another label order)
  entry = dict(entry, cb=entry.get("cb_by_folder", {}).get(wd.basename(folder), entry.get("cb")))
  classnames = tf.classnames or package_classnames(entry)
  if not classnames:
    return f"{folder} has no {cb.CLASSNAMES} and no package lists its classes"
  pkg = package_classnames(entry)
  if tf.classnames and pkg and [c if isinstance(c, str) else c[0] for c in pkg] != tf.classnames:
    log.warning("%s: classnames.txt differs from the packaged list; using the folder's "
                "(it defines the label order of the .cls files)", folder)
  templates = tf.templates or package_templates(entry) or \
      templates_lib.openai_imagenet_templates()
  return Task(name, kind, metric, tf.shard_pattern("test"), classnames=list(classnames),
              templates=list(templates), source=folder, train_pattern=train,
              captions="txt_lines")


FOLDERS_SUITE = "folders"   # every CLIP_benchmark task folder under root, named by its folder
WDS_PREFIX = "wds_"          # clip_benchmark_export_wds names its folders wds_<dataset>


def folder_entries(root: str) -> tuple[dict, ...]:
  """The `folders` suite: one entry per CLIP_benchmark task folder directly under root,
  named by the folder (less wds_), its kind from dataset_type.txt. Zero-shot tasks score
  mean per-class recall, as CLIP_benchmark does (chance 1/n on any class balance)."""
  out = []
  for name in wd.listdir(root):
    folder = wd.path(root, name)
    if cb.is_task_folder(folder):
      out.append(dict(name=name.removeprefix(WDS_PREFIX), folders=(name,),
                      kind=cb.open_task(folder).kind, metric="mean_per_class"))
  return tuple(out)


def resolve(cfg, workdir: str) -> tuple[dict[str, Task], dict[str, str]]:
  """(tasks to evaluate by name, {skipped task: reason}) for config.evaluate.

  A suite task whose folder is absent is skipped (a partial download still
  evaluates); one named in config.evaluate.tasks is an error, as are an
  unreadable root and a suite with no task found. Every check here runs before
  any compute (the pipeline calls this first).
  """
  cfg = cfg if cfg is not None else default_config()
  if not cfg.get("suite"):
    tasks, skipped = workdir_tasks(workdir), {}
  else:
    if not cfg.get("root"):
      raise ValueError("config evaluate.root is empty: set it to the directory holding the "
                       f"{cfg.suite} task folders (--config.evaluate.root=/data/clip_benchmark)")
    root = wd.resolve(cfg.root)   # relative to where the command runs, not the workdir
    if not wd.isdir(root):
      raise ValueError(f"config evaluate.root={cfg.root}: {root} is not a readable folder")
    entries = folder_entries(root) if cfg.suite == FOLDERS_SUITE else suite_entries(cfg.suite)
    tasks, skipped = {}, {}
    for entry in entries:
      t = suite_task(root, entry)
      if isinstance(t, Task):
        tasks[t.name] = t
      else:
        skipped[entry["name"]] = t
  want = [t.strip() for t in str(cfg.get("tasks") or "").split(",") if t.strip()]
  if want:
    unknown = sorted(set(want) - set(tasks) - set(skipped))
    if unknown:
      raise ValueError(f"config evaluate.tasks: unknown task(s) {unknown}; known: "
                       f"{sorted(set(tasks) | set(skipped))}")
    missing = {k: v for k, v in skipped.items() if k in want}
    if missing:
      reasons = "; ".join(f"{k}: {v}" for k, v in missing.items())
      raise ValueError(f"config evaluate.tasks: {reasons}")
    tasks, skipped = {k: v for k, v in tasks.items() if k in want}, {}
  if not tasks:
    where = f" under {cfg.root}" if cfg.get("suite") else ""
    raise ValueError(f"no evaluation task found{where} (skipped: {skipped})")
  return tasks, skipped


def captions_per_image(task: Task, workdir: str) -> list[list[str]]:
  """Every test sample's captions, by position in the loader's index."""
  return wds.captions_by_position(loader.shard_paths(task.pattern, workdir),
                                  split_lines=task.captions == "txt_lines")


def fingerprint(task: Task, workdir: str) -> str:
  """What a task's outputs depend on: its spec (kind, metric, names, templates) and its test
  shards' names and contents (a regenerated or re-downloaded set), not where they live."""
  spec = {k: v for k, v in task.spec().items() if k != "source"}
  return provenance.digest([spec, digests.fingerprint(loader.shard_paths(task.pattern, workdir),
                                                      workdir)])
