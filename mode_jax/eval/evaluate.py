"""Glue for the evaluate stage: one model on one task -> the arrays of eval/<model>/<task>.npz.

A task is described by its shards/eval/<task>.json spec ({"kind",
"classnames", "templates"}); classnames may hold synonym lists, and a spec
without templates uses the data set's own (CLIP benchmark) or OpenAI's 80.
The stage that loads checkpoints and reads shards calls these with the
model's embedders and writes the result with `files.write_task_logits`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax.numpy as jnp
import numpy as np

from mode_jax.eval import features, retrieval, templates, zeroshot


def spec_templates(task: str, spec: dict) -> list[str]:
  return list(spec.get("templates") or templates.task_templates(task))


def evaluate_zeroshot(embed_images: Callable, embed_texts: Callable, task: str, spec: dict,
                      batches: Iterable) -> dict[str, np.ndarray]:
  """{'logits' [N_img, N_cls] raw cosines, 'labels' [N_img]} of one CLIP on a zero-shot task."""
  cls = zeroshot.class_features(embed_texts, spec["classnames"], spec_templates(task, spec))
  logits, labels = zeroshot.zeroshot_logits(embed_images, cls, batches)
  return {"logits": logits, "labels": labels}


def evaluate_retrieval(embed_images: Callable, embed_texts: Callable,
                       captions_per_image: Sequence[Sequence[str]],
                       batches: Iterable) -> dict[str, np.ndarray]:
  """{'logits' [N_img, N_txt], 'labels' [N_img], 'txt_to_img' [N_txt], 'txt_index' [N_txt]}
  of one CLIP; txt_index: each caption column's row of `metadata_embedding` (captions of
  unreadable images have no column), for files.write_task_logits."""
  logits, labels, txt_to_img, txt_index = retrieval.retrieval_logits(
      embed_images, embed_texts, batches, captions_per_image)
  return {"logits": logits, "labels": labels, "txt_to_img": txt_to_img, "txt_index": txt_index}


def evaluate_task(embed_images: Callable, embed_texts: Callable, task: str, spec: dict,
                  batches: Iterable, captions_per_image=None) -> dict[str, np.ndarray]:
  """One CLIP on one task of either kind (retrieval needs its captions_per_image)."""
  if spec.get("kind", "zeroshot") == "retrieval":
    return evaluate_retrieval(embed_images, embed_texts, captions_per_image, batches)
  return evaluate_zeroshot(embed_images, embed_texts, task, spec, batches)


def metadata_embedding(embed_sentences: Callable, task: str, spec: dict,
                       captions_per_image: Sequence[Sequence[str]] | None = None) -> np.ndarray:
  """eval/meta_emb/<task>.npy: e_l of docs/method.md step 8 with the clustering's sentence encoder.

  Zero-shot: per class, every (name, template) prompt normalised, averaged,
  re-normalised. Retrieval: one normalised row per caption of every sample
  (retrieval.caption_index order), whether or not its image decodes: the
  queries of per-query routing. A model's logits name each caption
  column's row (txt_index; files.caption_rows lines them up).
  """
  if spec.get("kind", "zeroshot") == "retrieval":
    texts, _ = retrieval.caption_index(captions_per_image or [])
    emb = features.embed_texts_batched(embed_sentences, texts, desc="caption metadata")
    return np.asarray(features.l2_normalize(jnp.asarray(emb)))
  return features.class_features(embed_sentences, spec["classnames"],
                                 spec_templates(task, spec))


def task_score(task_spec: dict, arrays: dict) -> float:
  """A model's score on one task in percent, as the report scores it: its metric for
  zero-shot (labelled images only), mean R@1 for retrieval."""
  from mode_jax.eval import files, report
  if task_spec.get("kind", "zeroshot") == "retrieval":
    return report.score_retrieval(arrays["logits"], arrays["logits"],
                                  files.txt_to_img_of(arrays))[0]
  return report.score_zeroshot(arrays["logits"], arrays["labels"],
                               task_spec.get("metric", "top1"))[0]


def write_scores(workdir: str, tasks: dict, models: Sequence[str]) -> str:
  """eval/scores.{csv,md}: every model's score (percent) on every task, with the metric.

  The plain table for public CLIPs; the MoDE comparison is the report stage's.
  """
  from mode_jax import workdir as wd
  from mode_jax.eval import files, report
  rows, unlabelled = [], {}
  for name, task in tasks.items():
    spec = task.spec()
    row = {"task": name, "metric": spec["metric"]}
    for m in models:
      arrays = files.read_task_logits(workdir, m, name)
      row[m] = task_score(spec, arrays)
      if spec["kind"] == "zeroshot":
        unlabelled[name] = zeroshot.n_unlabelled(arrays["labels"])
    rows.append(row)
  avg = {"task": "average", "metric": ""}
  avg.update({m: float(np.mean([r[m] for r in rows])) for m in models})
  head = ["task", "metric", *models]
  report.write_csv(wd.path(workdir, "eval", "scores.csv"), head, rows + [avg])
  text = "# Scores (%) per model and task\n\n" + report.markdown(head, rows + [avg]) + "\n"
  if any(unlabelled.values()):
    text += ("\nUnlabelled test images (label -1), left out of the scores:\n"
             + "".join(f"- {k}: {v}\n" for k, v in unlabelled.items() if v))
  skipped = files.read_skipped(workdir)
  if skipped:
    text += "\nSkipped:\n" + "".join(f"- {k}: {v}\n" for k, v in skipped.items())
  return wd.write_text(wd.path(workdir, "eval", "scores.md"), text)
