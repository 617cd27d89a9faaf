"""Reading and writing the evaluate stage's outputs (formats in mode_jax/workdir.py).

  eval/<model>/<task>.npz   logits float32 [N_img, N_cls | N_txt] raw cosines;
                            labels int32 [N_img]; retrieval adds
                            txt_to_img int32 [N_txt] (caption -> image row;
                            identity when absent and N_txt == N_img) and
                            txt_index int32 [N_txt] (caption column -> its
                            meta_emb row; absent in older workdirs);
                            logit_scale float32 [] (exp of the model's clamped
                            logit scale; absent in older workdirs)
  eval/meta_emb/<task>.npy  float32 [N_cls, D] class metadata embeddings; for a
                            retrieval task, one row per caption of every
                            sample, read or not (the per-query routing of
                            docs/method.md step 9): `caption_rows` picks the rows
                            of a model's caption columns
  eval/tasks/<task>.json    the task as evaluated: {"kind": "zeroshot" | "retrieval",
                            "metric": "top1" | "mean_per_class" | "top1_top5" |
                            "roc_auc" (zero-shot; retrieval is mean R@1), "source",
                            "n_classes"}; older workdirs have only shards/eval/<task>.json
  eval/skipped.json         {task: reason} of suite tasks not found on disk
"""

from __future__ import annotations

import numpy as np

from mode_jax import workdir as wd

EVAL_STAGE = "evaluate"
SHARDS_STAGE = "prepare"   # mode_jax/data/corpus/build.py writes shards/eval/


def logits_rel(model: str, task: str) -> str:
  return f"eval/{model}/{task}.npz"


def meta_rel(task: str) -> str:
  return f"eval/meta_emb/{task}.npy"


def write_task_logits(workdir: str, model: str, task: str, logits, labels,
                      txt_to_img=None, logit_scale=None, txt_index=None) -> str:
  """Writes eval/<model>/<task>.npz atomically; returns its path."""
  arrays = dict(logits=np.asarray(logits, np.float32), labels=np.asarray(labels, np.int32))
  if txt_to_img is not None:
    arrays["txt_to_img"] = np.asarray(txt_to_img, np.int32)
  if txt_index is not None:   # which captions the columns are (unreadable images drop theirs)
    arrays["txt_index"] = np.asarray(txt_index, np.int32)
  if logit_scale is not None:   # the model's own temperature (the specialisation losses)
    arrays["logit_scale"] = np.asarray(logit_scale, np.float32)
  return wd.save_npz(wd.path(workdir, logits_rel(model, task)), **arrays)


def read_task_logits(workdir: str, model: str, task: str) -> dict[str, np.ndarray]:
  """{'logits', 'labels'[, 'txt_to_img']}; MissingInput naming `evaluate` when absent."""
  return wd.load_npz(wd.require(workdir, logits_rel(model, task), EVAL_STAGE))


def write_meta_emb(workdir: str, task: str, emb) -> str:
  return wd.save_npy(wd.path(workdir, meta_rel(task)), np.asarray(emb, np.float32))


def read_meta_emb(workdir: str, task: str) -> np.ndarray:
  return wd.load_npy(wd.require(workdir, meta_rel(task), EVAL_STAGE)).astype(np.float32)


def expert_names(models) -> list[str]:
  """The expert_<c> names among `models`, in expert order (expert_10 after expert_9)."""
  return sorted((m for m in models if m.startswith("expert_") and m[7:].isdigit()),
                key=lambda m: int(m[7:]))


def task_spec_rel(task: str) -> str:
  return f"eval/tasks/{task}.json"


def write_task_spec(workdir: str, task: str, spec: dict) -> str:
  p = wd.path(workdir, task_spec_rel(task))
  wd.write_json(p, spec)
  return p


def read_task_spec(workdir: str, task: str) -> dict:
  """eval/tasks/<task>.json, else (workdirs evaluated before suites) shards/eval/<task>.json."""
  p = wd.path(workdir, task_spec_rel(task))
  if wd.exists(p):
    return wd.read_json(p)
  return wd.read_json(wd.require(workdir, f"shards/eval/{task}.json", SHARDS_STAGE))


def write_skipped(workdir: str, skipped: dict[str, str]) -> None:
  wd.write_json(wd.path(workdir, "eval", "skipped.json"), dict(sorted(skipped.items())))


def read_skipped(workdir: str) -> dict[str, str]:
  """{task: reason} of suite tasks the evaluate stage did not find ({} when none)."""
  p = wd.path(workdir, "eval", "skipped.json")
  return wd.read_json(p) if wd.exists(p) else {}


def txt_to_img_of(arrays: dict) -> np.ndarray:
  """The caption -> image map of a retrieval npz (identity when the file has none)."""
  if "txt_to_img" in arrays:
    return arrays["txt_to_img"].astype(np.int32)
  n_img, n_txt = arrays["logits"].shape
  if n_img != n_txt:
    raise ValueError(f"retrieval logits {n_img}x{n_txt} need a txt_to_img map")
  return np.arange(n_txt, dtype=np.int32)


def caption_rows(arrays: dict, n_meta: int) -> np.ndarray:
  """The eval/meta_emb row of each caption column of a retrieval npz.

  Its txt_index; without one (files written before it was recorded) the
  identity, which holds only when every caption had a column.
  """
  n_txt = arrays["logits"].shape[1]
  if "txt_index" not in arrays:
    if n_txt != n_meta:
      raise ValueError(f"retrieval logits have {n_txt} caption columns, the metadata "
                       f"embeddings {n_meta} rows, and the file has no txt_index to line them "
                       "up (written before it was recorded): re-run the evaluate stage")
    return np.arange(n_txt)
  rows = arrays["txt_index"].astype(np.int64)
  if rows.shape != (n_txt,) or (n_txt and (rows.min() < 0 or rows.max() >= n_meta)):
    raise ValueError(f"txt_index {rows.shape} (max {rows.max() if n_txt else None}) does not "
                     f"name {n_txt} caption columns among {n_meta} metadata rows")
  return rows
