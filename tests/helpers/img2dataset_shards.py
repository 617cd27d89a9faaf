"""Shards written as img2dataset 1.47.0 writes them (output_format="webdataset"), without it.

img2dataset is not a dependency (it pulls OpenCV, wandb, and webdataset imports torch), so
this transcribes what it does for a shard, from its sources (`pip download
img2dataset==1.47.0 --no-deps`):
- downloader.py Downloader.download_shard: the parquet schema is the input columns
  ([*save_additional_columns, "caption", "url"], reader.py) then key, status,
  error_message, width, height, original_width, original_height and the compute_hash
  column (main.py default "sha256"); each row's `meta` holds those fields; key =
  compute_key(index, shard_id, ceil(log10(number_sample_per_shard)), oom_shard_count);
  samples are written in download completion order (imap_unordered), not key order.
- writer.py WebDatasetSampleWriter.write: a successful row becomes a tar sample
  {jpg, json = json.dumps(meta, indent=4), txt = str(caption) or ""} through webdataset's
  TarWriter (members in sorted extension order, tarfile's default PAX format, mode 0o444,
  user/group "bigdata"); every row, failed or not, goes to the parquet through
  BufferedParquetWriter (one row group per 100 rows).
Checked once (not in CI: importing webdataset imports torch) against img2dataset 1.47.0's
own WebDatasetSampleWriter fed the same rows: the same tar members (names, sizes, mode,
owner, bytes) in the same order and an equal parquet table, schema and row-group count.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

STATUSES = ("success", "failed_to_download", "failed_to_resize")


def schema(extra: tuple[tuple[str, pa.DataType], ...] = (),
           caption_type: pa.DataType = pa.string()) -> pa.Schema:
  """The parquet schema for input columns [*extra, caption, url] (caption keeps its input
  type: a numeric column stays numeric)."""
  fields = [*extra, ("caption", caption_type), ("url", pa.string()), ("key", pa.string()),
            ("status", pa.string()), ("error_message", pa.string()),
            ("width", pa.int32()), ("height", pa.int32()),
            ("original_width", pa.int32()), ("original_height", pa.int32()),
            ("sha256", pa.string())]
  return pa.schema([pa.field(n, t) for n, t in fields])


def compute_key(index: int, shard_id: int, oom_sample_per_shard: int,
                oom_shard_count: int) -> str:
  true_key = (10 ** oom_sample_per_shard) * shard_id + index
  return f"{true_key:0{oom_sample_per_shard + oom_shard_count}d}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  ti = tarfile.TarInfo(name)
  ti.size, ti.mtime, ti.mode = len(data), time.time(), 0o444
  ti.uname = ti.gname = "bigdata"
  tar.addfile(ti, io.BytesIO(data))


def write_shard(out_dir: str, shard_id: int, rows: list[dict], order=None, *,
                oom_shard_count: int = 5, number_sample_per_shard: int = 10_000,
                extra: tuple[tuple[str, pa.DataType], ...] = (),
                caption_type: pa.DataType = pa.string()) -> tuple[str, str]:
  """Writes <out_dir>/<shard_id>.tar and .parquet; returns their paths.

  rows: the shard's input rows in input order, each {"caption": str|None, "url": str,
  "status": one of STATUSES, "jpg": bytes (success only), "size": (w, h) of the resized
  image, "original": (w, h)} plus the `extra` columns; order: the completion order (a
  permutation of row indices; default input order).
  """
  sch = schema(extra, caption_type)
  name = f"{shard_id:0{oom_shard_count}d}"
  tar_path, pq_path = os.path.join(out_dir, name + ".tar"), os.path.join(out_dir, name + ".parquet")
  oom_sample = math.ceil(math.log10(number_sample_per_shard))
  buffer = {k: [] for k in sch.names}
  os.makedirs(out_dir, exist_ok=True)
  with open(tar_path, "wb") as tar_fd, open(pq_path, "wb") as pq_fd, \
      pq.ParquetWriter(pq_fd, sch) as writer, tarfile.open(fileobj=tar_fd, mode="w|") as tar:

    def flush():
      if buffer["key"]:
        writer.write_table(pa.Table.from_pydict(buffer, sch))
        for v in buffer.values():
          v.clear()

    for i in (range(len(rows)) if order is None else order):
      row = rows[i]
      key = compute_key(i, shard_id, oom_sample, oom_shard_count)
      ok = row["status"] == "success"
      meta = {**{n: row[n] for n, _ in extra}, "caption": row["caption"], "url": row["url"],
              "key": key, "status": row["status"],
              "error_message": None if ok else row.get("error_message", "boom"),
              "width": None, "height": None, "original_width": None, "original_height": None,
              "sha256": None}
      if ok:
        meta.update(width=row["size"][0], height=row["size"][1],
                    original_width=row["original"][0], original_height=row["original"][1],
                    sha256=hashlib.sha256(row["jpg"]).hexdigest())
        caption = row["caption"]
        sample = {"jpg": row["jpg"], "txt": str(caption) if caption is not None else "",
                  "json": json.dumps(meta, indent=4)}
        for ext in sorted(sample):
          v = sample[ext]
          _add(tar, f"{key}.{ext}", v.encode("utf-8") if isinstance(v, str) else v)
      if len(buffer["key"]) >= 100:
        flush()
      for k in sch.names:
        buffer[k].append(meta[k])
    flush()
  return tar_path, pq_path
