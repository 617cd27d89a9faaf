"""Captions of a webdataset tar shard, read with Python's tarfile, and the one-caption pick.

MoDE clusters pairs by caption meaning, one caption per pair (DESIGN.md step
1): when a sample has several, the reference picks one at random; we make
that pick a pure function of (seed, key), so it does not depend on shard
order, host count or resume points.

Member names are `<key>.<ext>`; as in webdataset, the key is the member path
up to the first dot of its basename ('a/b.c.jpg' -> 'a/b'). Candidate
captions, in this order, de-duplicated: the `<key>.json` "texts" list, its
"caption" string, the `<key>.txt` text (the same rule as
mode_jax/data/webdataset.py, so both sides see the same candidates). Samples
without a non-empty caption, or without an image (the loader drops those
too), are skipped and counted. A truncated tar (an error, or no end-of-archive
block: tarfile stops silently when cut inside a header) yields its samples
up to the break minus the last one read, which may lack members, and is
flagged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclasses.dataclass
class ShardCaptions:
  keys: list[str]                    # usable samples, shard order
  texts: list[list[str]]             # their candidate captions
  no_caption: int = 0                # skipped: no non-empty caption
  no_image: int = 0                  # skipped: no image member
  truncated: bool = False            # the tar ended early or was corrupt


def split_name(member_name: str) -> tuple[str, str]:
  """'a/b.seg.png' -> ('a/b', 'seg.png')."""
  folder, _, base = member_name.rpartition("/")
  stem, _, ext = base.partition(".")
  return (f"{folder}/{stem}" if folder else stem), ext.lower()


def candidate_captions(json_bytes: bytes | None, txt_bytes: bytes | None) -> list[str]:
  """Stripped, non-empty, de-duplicated captions: json "texts", json "caption", then txt."""
  texts = []
  if json_bytes is not None:
    try:
      obj = json.loads(json_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
      obj = None
    if isinstance(obj, dict):
      for field in ("texts", "caption"):
        v = obj.get(field)
        if isinstance(v, str):
          texts.append(v)
        elif isinstance(v, list):
          texts += [t for t in v if isinstance(t, str)]
  if txt_bytes is not None:
    texts.append(txt_bytes.decode("utf-8", errors="replace"))
  return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def read_shard_captions(path: str) -> ShardCaptions:
  """Every usable sample's candidate captions, in shard order (image bytes are never read)."""
  order: list[str] = []
  members: dict[str, dict[str, bytes | None]] = {}
  truncated = False
  try:
    with tarfile.open(path, "r:*") as tf:
      for m in tf:
        if not m.isfile():
          continue
        key, ext = split_name(m.name)
        if key not in members:
          order.append(key)
          members[key] = {}
        data = None
        if ext in ("json", "txt"):
          data = tf.extractfile(m).read()
          if len(data) != m.size:
            raise tarfile.ReadError("unexpected end of data")
        members[key].setdefault(ext, data)
      truncated = os.path.getsize(path) - tf.offset < tarfile.BLOCKSIZE
  except (tarfile.TarError, EOFError, OSError):
    truncated = True
  if truncated and order:   # the last sample read may be missing members
    members.pop(order.pop())
  out = ShardCaptions([], [], truncated=truncated)
  for key in order:
    found = members[key]
    caps = candidate_captions(found.get("json"), found.get("txt"))
    if not any(e in found for e in IMAGE_EXTS):
      out.no_image += 1
    elif not caps:
      out.no_caption += 1
    else:
      out.keys.append(key)
      out.texts.append(caps)
  return out


def pick_caption(texts: list[str], key: str, seed: int) -> str:
  """One caption of several, chosen by a hash of (seed, key): stable across runs and hosts."""
  if len(texts) == 1:
    return texts[0]
  h = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8"), digest_size=8).digest()
  return texts[int.from_bytes(h, "little") % len(texts)]
