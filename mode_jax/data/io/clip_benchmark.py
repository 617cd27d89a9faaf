"""CLIP_benchmark webdataset task folders, read as they are (local, gs:// or s3://).

The layout `clip_benchmark_export_wds` writes and researchers download:

  <folder>/classnames.txt                         one class name per line, label order
  <folder>/zeroshot_classification_templates.txt  one template per line, slot `{c}`
  <folder>/dataset_type.txt                       optional: "retrieval" (else classification)
  <folder>/<split>/nshards.txt                    the shard count N of a split (test, train)
  <folder>/<split>/0.tar ... N-1.tar              <key>.webp|png|jpg|jpeg and <key>.cls (the
                                                  label as text) or, for retrieval, <key>.txt
                                                  (the image's captions, one per line)

Zero-shot samples carry no caption; the loader's evaluation reader keeps
them (webdataset.make_sample(require_caption=False)) and reads `.cls`.
"""

from __future__ import annotations

import dataclasses

from mode_jax import workdir as wd

CLASSNAMES, TEMPLATES, TYPE = ("classnames.txt", "zeroshot_classification_templates.txt",
                               "dataset_type.txt")


def _lines(p: str) -> list[str] | None:
  if not wd.exists(p):
    return None
  return [line.strip() for line in wd.read_text(p).splitlines() if line.strip()]


@dataclasses.dataclass
class TaskFolder:
  folder: str
  kind: str                      # "zeroshot" or "retrieval"
  classnames: list[str] | None   # classnames.txt (None when absent)
  templates: list[str] | None    # zeroshot_classification_templates.txt (None when absent)

  def has_split(self, split: str) -> bool:
    return wd.exists(wd.path(self.folder, split, "nshards.txt"))

  def shard_pattern(self, split: str = "test") -> str:
    """`<folder>/<split>/{0..N-1}.tar` for loader.eval_batches / load_index."""
    p = wd.path(self.folder, split, "nshards.txt")
    if not wd.exists(p):
      raise FileNotFoundError(f"{p} missing: not a CLIP_benchmark webdataset split")
    n = int(wd.read_text(p).strip())
    if n < 1:
      raise ValueError(f"{p}: {n} shards")
    return wd.path(self.folder, split, f"{{0..{n - 1}}}.tar" if n > 1 else "0.tar")


def is_task_folder(folder: str) -> bool:
  return wd.exists(wd.path(folder, "test", "nshards.txt"))


def open_task(folder: str) -> TaskFolder:
  """Reads a task folder's metadata; FileNotFoundError when it has no test split."""
  if not is_task_folder(folder):
    raise FileNotFoundError(f"{wd.path(folder, 'test', 'nshards.txt')} missing: "
                            "not a CLIP_benchmark webdataset task folder")
  kind = (_lines(wd.path(folder, TYPE)) or ["classification"])[0].lower()
  if kind not in ("classification", "retrieval"):
    raise ValueError(f"{wd.path(folder, TYPE)}: dataset type {kind!r} is not supported "
                     "(classification or retrieval)")
  kind = "retrieval" if kind == "retrieval" else "zeroshot"
  return TaskFolder(folder, kind, _lines(wd.path(folder, CLASSNAMES)),
                    _lines(wd.path(folder, TEMPLATES)))
