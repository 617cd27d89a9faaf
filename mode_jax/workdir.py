"""The workdir: where every pipeline stage reads its inputs and writes its outputs.

Data flows one way (DESIGN.md): shards -> embeddings -> centers -> assignments
-> seed -> experts -> per-expert logits -> routed ensemble -> report. Each stage
reads only what earlier stages wrote here, so any stage can be re-run, resumed
or moved to another machine. This module is the single description of those
files; stages use these helpers instead of spelling paths themselves.

Layout and formats (all arrays little-endian numpy):

  config.json                         the locked config of the last command
  shards/train-{00000..}.tar          webdataset: <key>.png|jpg|webp + <key>.json
                                      ({"texts": [...]} or {"caption": str},
                                      optional "label": int) and/or <key>.txt
  shards/eval/<task>-{00000..}.tar    evaluation sets, same member layout;
  shards/eval/<task>.json             {"kind": "zeroshot"|"retrieval",
                                       "classnames": [...], "templates": [...]}
  index/<stem>-<hash>.npz             cached sample index of a shard (byte offsets
                                      per sample), rebuilt when the shard changes
  embed/<shard-stem>.npz              keys: str[n]; emb: float16|float32[n, D],
                                      L2-normalised caption embeddings, one row
                                      per sample of that shard, shard order
  embed/meta.json                     {"encoder", "dim", "dtype", "fingerprint"}
  cluster/fine_centers.npy            float32[m, D]   (mu_s of DESIGN.md)
  cluster/coarse_centers.npy          float32[n, D]
  cluster/fine_to_expert.npy          int32[m]        (pi: fine -> expert)
  cluster/expert_order.json           expert ids, widest spread first
  cluster/meta.json                   {"m", "n", "metric", "encoder",
                                       "fingerprint", ...}
  assign/<shard-stem>.npz             keys: str[n]; fine: int32[n];
                                      expert: int32[n]  (same row order as the
                                      shard's embed file)
  seed/                               Orbax CheckpointManager directory
  experts/<c>/                        Orbax CheckpointManager directory
  eval/<model>/<task>.npz             logits: float32[N_img, N_cls] raw cosines
                                      (zero-shot) or float32[N_img, N_txt]
                                      (retrieval); labels: int32[N_img];
                                      retrieval also has txt_to_img: int32[N_txt]
                                      (the image of each caption; absent = one
                                      caption per image, in order)
  eval/meta_emb/<task>.npy            float32[N_cls, D] class metadata embeddings
                                      (retrieval: one row per caption)
  report/                             results.md, results.csv, *.png

A stage whose inputs are missing raises `MissingInput`, which the launcher
prints as one line naming the file and the command that makes it.
"""

from __future__ import annotations

import json
import os
from typing import Any


class MissingInput(RuntimeError):
  """An input another stage should have written is absent."""

  def __init__(self, path: str, stage: str):
    self.path, self.stage = path, stage
    super().__init__(
        f"missing {path}: run `python launch.py {stage} --config ... "
        f"--workdir ...` first")


def path(workdir: str, *parts: str) -> str:
  return os.path.join(workdir, *parts)


def require(workdir: str, rel: str, stage: str) -> str:
  """Returns workdir/rel, or raises MissingInput naming the stage that makes it."""
  p = path(workdir, rel)
  if not os.path.exists(p):
    raise MissingInput(p, stage)
  return p


def write_json(p: str, obj: Any) -> None:
  """Writes JSON atomically (tmp + rename), so a killed stage never leaves half a file."""
  os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
  tmp = p + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, p)


def read_json(p: str) -> Any:
  with open(p) as f:
    return json.load(f)


def shard_stem(shard_path: str) -> str:
  """'/w/shards/train-00003.tar' -> 'train-00003' (names embed/ and assign/ files)."""
  base = os.path.basename(shard_path)
  return base[:-4] if base.endswith(".tar") else base
