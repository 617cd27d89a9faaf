"""Writes webdataset shards: plain tar files whose members are `<key>.<ext>`.

A sample is a dict {"__key__": str, ext: value}; members of one sample are
written consecutively (webdataset groups by key prefix up to the first dot,
so keys may not contain '.' or '/'). Values: bytes are written as is, str as
UTF-8, dict/list as JSON, a uint8 numpy image as PNG.

Each shard is written to a tmp file and renamed (locally) or uploaded (gs://,
s3://, through mode_jax.workdir) when complete, so a killed run never leaves
a truncated tar under a final name. Member headers carry a
fixed mtime/owner, so the same samples give byte-identical shards (stable
fingerprints for the stages downstream).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from typing import Any, Iterable

import numpy as np
from PIL import Image

from mode_jax import workdir as wd

_MTIME = 0   # fixed: shards are reproducible byte for byte


def encode_png(image: np.ndarray) -> bytes:
  """uint8 [H, W] (grey) or [H, W, 3] (RGB) -> PNG bytes."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f"expected a uint8 [H, W(, 3)] image, got {image.dtype} {image.shape}")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def _encode(ext: str, value: Any) -> bytes:
  if isinstance(value, bytes):
    return value
  if isinstance(value, str):
    return value.encode("utf-8")
  if isinstance(value, np.ndarray):
    if ext != "png":
      raise ValueError(f"numpy arrays are written as .png only, not .{ext}")
    return encode_png(value)
  if ext == "json":
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
  raise TypeError(f"cannot write {type(value).__name__} as .{ext}")


def check_key(key: str) -> str:
  if not key or "." in key or "/" in key:
    raise ValueError(f"bad sample key {key!r}: must be non-empty, without '.' or '/'")
  return key


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
  info.uname = info.gname = ""
  tar.addfile(info, io.BytesIO(data))


def write_shard(path: str, samples: Iterable[dict]) -> int:
  """Writes one shard atomically; returns the number of samples."""
  remote = wd.is_remote(path)
  if remote:
    fd, tmp = tempfile.mkstemp(suffix=".tar")
    os.close(fd)
  else:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
  n, seen = 0, set()
  try:
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
      for sample in samples:
        key = check_key(sample["__key__"])
        if key in seen:
          raise ValueError(f"duplicate sample key {key!r} in {path}")
        seen.add(key)
        for ext in sorted(k for k in sample if k != "__key__"):
          _add(tar, f"{key}.{ext}", _encode(ext, sample[ext]))
        n += 1
    if remote:
      wd.upload(tmp, path)
    else:
      os.replace(tmp, path)
      wd.log_io("write", path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return n


def write_shards(pattern: str, samples: Iterable[dict], shard_size: int,
                 progress=None) -> list[str]:
  """Splits `samples` into shards `pattern % i` of `shard_size` samples each.

  `progress`, if given, is called with the number of samples of each shard
  written (e.g. a tqdm bar's update). Returns the shard paths in order.
  """
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  paths, batch, seen = [], [], set()

  def flush():
    paths.append(pattern % len(paths))
    write_shard(paths[-1], batch)
    if progress is not None:
      progress(len(batch))
    batch.clear()

  for sample in samples:
    if sample["__key__"] in seen:
      raise ValueError(f"duplicate sample key {sample['__key__']!r} across shards")
    seen.add(sample["__key__"])
    batch.append(sample)
    if len(batch) == shard_size:
      flush()
  if batch:
    flush()
  return paths
