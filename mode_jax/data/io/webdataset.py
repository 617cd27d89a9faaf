"""Webdataset tar shards as img2dataset and MetaCLIP write them, read without torch.

A shard is a plain tar file; consecutive members sharing a key form one sample:
`<key>.jpg|jpeg|png|webp` (the image), `<key>.json` (a "texts" list and/or a
"caption" string, optional int "label") and/or `<key>.txt` (one caption). The
key is the member path up to the first dot of its basename (webdataset's rule;
img2dataset writes flat names, so this is the basename there).

We parse tar headers ourselves rather than with `tarfile` because `tarfile`
ends silently when a shard is cut inside a header; here a shard that stops
before its end-of-archive block is always counted as truncated and warned
about. The same parser yields each member's byte offset, which the loader's
random-access index stores (see loader.py).

Bad data never crashes a run and never stops it silently: corrupt images,
samples without captions or images, and truncated or unreadable shards are
skipped, counted in `Stats`, and reported with `Stats.warn`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from typing import IO, Iterator

import numpy as np

from mode_jax import workdir as wd

try:  # the fast JPEG path of decode_image; PIL decodes everything without it
  import simplejpeg
except ImportError:  # pragma: no cover - exercised only without simplejpeg
  simplejpeg = None

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("texts", "caption", "txt")   # where captions come from, in this order
_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")


@dataclasses.dataclass
class Stats:
  """Counts what was read and what was skipped, so bad data is never silent."""
  shards: int = 0
  samples: int = 0              # samples yielded
  corrupt_images: int = 0       # image bytes that do not decode
  missing_images: int = 0       # samples without an image member
  missing_captions: int = 0     # no non-empty caption in json/txt
  bad_json: int = 0             # .json member that does not parse (sample may survive via .txt)
  truncated_shards: int = 0     # shard ends before its end-of-archive block
  unreadable_shards: int = 0    # shard cannot be opened

  def merge(self, other: "Stats") -> "Stats":
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
    return self

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def skipped(self) -> int:
    return self.corrupt_images + self.missing_images + self.missing_captions

  def warn(self, where: str = "") -> bool:
    """Logs one warning with all counts when anything was skipped; returns whether it did."""
    bad = {k: v for k, v in self.as_dict().items()
           if v and k not in ("shards", "samples")}
    if bad:
      log.warning("%sskipped bad data: %s (kept %d samples%s)",
                  f"{where}: " if where else "", bad, self.samples,
                  f" from {self.shards} shards" if self.shards else "")
    return bool(bad)


class TruncatedShard(IOError):
  """The tar stream ended (or broke) before its end-of-archive block.

  `member` names the member whose data was cut when its header was intact.
  """

  def __init__(self, message: str, member: str | None = None):
    super().__init__(message)
    self.member = member


# ---- shard patterns --------------------------------------------------------------


def _expand_braces(pattern: str) -> list[str]:
  """'a-{000..002}-{x,y}' -> 7 names; numeric ranges keep their zero padding."""
  m = re.search(r"\{([^{}]*)\}", pattern)
  if not m:
    return [pattern]
  head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
  r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if r:
    lo, hi = r.group(1), r.group(2)
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    parts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    parts = body.split(",")
  return [x for p in parts for x in _expand_braces(head + p + tail)]


def _has_glob(path: str) -> bool:
  return any(c in path for c in "*?[")


def expand_shards(pattern: str) -> list[str]:
  """Brace-expands and globs `pattern` (local or fsspec URL); raises if nothing matches.

  Several patterns may be joined with '::' (webdataset's convention for mixing).
  Literal names from a brace range that do not exist are dropped with a warning.
  """
  out: list[str] = []
  for part in pattern.split("::"):
    for name in _expand_braces(os.path.expanduser(part.strip())):
      name = name.removeprefix("file://")
      if _has_glob(name):
        out += wd.glob(name)
      elif wd.isfile(name):
        out.append(name)
  if not out:
    raise FileNotFoundError(f"no shard matches {pattern!r}")
  wanted = sum(len(_expand_braces(p)) for p in pattern.split("::"))
  if not _has_glob(pattern) and len(out) < wanted:
    log.warning("%d of %d shards named by %r do not exist; using the other %d",
                wanted - len(out), wanted, pattern, len(out))
  return out


def open_shard(path: str) -> IO[bytes]:
  """A seekable binary file: local, or gs:// / s3:// through the workdir layer (fsspec)."""
  return wd.open(path, "rb")


# ---- tar members -------------------------------------------------------------------


def _number(field: bytes) -> int:
  if field[:1] and field[0] & 0x80:          # GNU base-256, for members >= 8 GiB
    v = field[0] & 0x7F
    for b in field[1:]:
      v = v * 256 + b
    return v
  s = field.replace(b"\0", b" ").strip()
  return int(s, 8) if s else 0


def _checksum_ok(block: bytes) -> bool:
  stored = _number(block[148:156])
  return stored == sum(block[:148]) + 256 + sum(block[156:])


def read_exact(f: IO[bytes], n: int) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise TruncatedShard(f"expected {n} bytes, got {len(data)}")
  return data


def iter_members(f: IO[bytes], *, read_data=lambda name: True, start: int = 0,
                 stop_at: int | None = None) -> Iterator[tuple[str, int, int, bytes | None]]:
  """Yields (name, header_offset, size, data|None) for regular tar members.

  `read_data(name)` decides whether the data is read or skipped with a seek.
  Ends quietly at the end-of-archive block (or at `stop_at`, for a byte span
  of a shard); raises TruncatedShard if the stream ends or breaks before.
  """
  pos, long_name = start, None
  while stop_at is None or pos < stop_at:
    block = f.read(_BLOCK)
    if not block and stop_at is None:
      raise TruncatedShard(f"no end-of-archive block (stream ended at byte {pos})")
    if len(block) < _BLOCK:
      raise TruncatedShard(f"header cut at byte {pos}")
    if block == b"\0" * _BLOCK:
      return
    if not _checksum_ok(block):
      raise TruncatedShard(f"bad header checksum at byte {pos}")
    size, kind = _number(block[124:136]), block[156:157]
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345:500].strip(b"\0"):
      name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    header, padded = pos, (size + _BLOCK - 1) // _BLOCK * _BLOCK
    pos += _BLOCK
    if kind in (b"x", b"L"):                 # pax extended / GNU long name: next member's name
      meta = read_exact(f, padded)[:size]
      long_name = (meta.split(b"\0", 1)[0] if kind == b"L" else _pax_path(meta)) or long_name
      pos += padded
      continue
    full = (long_name or name).decode("utf-8", "replace")
    long_name = None
    if kind in _REGULAR and read_data(full):
      try:
        data = read_exact(f, padded)[:size]
      except TruncatedShard as e:
        raise TruncatedShard(f"member {full!r} cut: {e}", member=full) from None
    else:
      data = None
      f.seek(padded, io.SEEK_CUR)
      if padded and stop_at is None and pos + padded > _size_hint(f):
        raise TruncatedShard(f"member {full!r} cut at byte {pos}", member=full)
    pos += padded
    if kind in _REGULAR:
      yield full, header, size, data


def _size_hint(f) -> int:
  """File size when cheaply known (seeks past EOF do not fail, so check it)."""
  try:
    return os.fstat(f.fileno()).st_size
  except (AttributeError, OSError, io.UnsupportedOperation):
    return getattr(f, "size", None) or (1 << 62)


def _pax_path(meta: bytes) -> bytes | None:
  for rec in meta.split(b"\n"):
    _, _, kv = rec.partition(b" ")
    k, _, v = kv.partition(b"=")
    if k == b"path":
      return v
  return None


def split_name(name: str) -> tuple[str, str]:
  """'dir/000123.seg.png' -> ('dir/000123', 'seg.png')."""
  d, _, base = name.rpartition("/")
  stem, _, ext = base.partition(".")
  return (f"{d}/{stem}" if d else stem), ext.lower()


def iter_samples_raw(f: IO[bytes], *, with_images: bool = True, read_data=None, **kw
                     ) -> Iterator[tuple[str, int, int, dict[str, bytes | None]]]:
  """Groups consecutive members by key: yields (key, start, end, {ext: bytes|None}).

  [start, end) is the byte span of the sample's members (headers included),
  which is what the random-access index stores. On truncation the sample in
  progress is dropped (its remaining members are unknown) before TruncatedShard
  propagates, unless the cut falls in a member whose intact header already
  names the next sample.
  """
  want = read_data or ((lambda n: True) if with_images else
                       (lambda n: split_name(n)[1] not in IMAGE_EXTS))
  key, start, end, members = None, 0, 0, {}
  try:
    for name, header, size, data in iter_members(f, read_data=want, **kw):
      k, ext = split_name(name)
      if k != key:
        if key is not None:
          yield key, start, end, members
        key, start, members = k, header, {}
      members.setdefault(ext, data)
      end = header + _BLOCK + (size + _BLOCK - 1) // _BLOCK * _BLOCK
  except TruncatedShard as e:
    # Cut inside a member of the NEXT sample (its header was read): the sample
    # in progress is complete, since members of a sample are consecutive.
    if key is not None and e.member is not None and split_name(e.member)[0] != key:
      yield key, start, end, members
    raise
  if key is not None:
    yield key, start, end, members


# ---- sample contents ---------------------------------------------------------------


def image_ext(members: dict) -> str | None:
  return next((e for e in IMAGE_EXTS if e in members), None)


def parse_texts(members: dict, stats: Stats | None = None,
                caption_keys=CAPTION_KEYS) -> tuple[list[str], int | None]:
  """Captions (stripped, non-empty, de-duplicated, in `caption_keys` order) and label."""
  meta, label = {}, None
  if members.get("json") is not None:
    try:
      meta = json.loads(members["json"])
    except (ValueError, UnicodeDecodeError):
      meta = {}
      if stats is not None:
        stats.bad_json += 1
    if not isinstance(meta, dict):
      meta = {}
    lab = meta.get("label")
    if isinstance(lab, (int, np.integer)) and not isinstance(lab, bool):
      label = int(lab)
  if label is None and members.get("cls") is not None:   # CLIP_benchmark: the label as text
    try:
      label = int(members["cls"].decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
      if stats is not None:
        stats.bad_json += 1
  txt = members["txt"].decode("utf-8", "replace") if members.get("txt") is not None else None
  return collect_texts(meta, txt, caption_keys), label


def collect_texts(meta: dict, txt: str | None, caption_keys=CAPTION_KEYS) -> list[str]:
  """The caption rule of `parse_texts` on a parsed .json dict and a .txt string (None when
  absent); shard_captions applies it to img2dataset's parquet rows, so both give the same."""
  texts = []
  for k in caption_keys:
    if k == "txt":
      if txt is not None:
        texts.append(txt)
      continue
    v = meta.get(k)
    if isinstance(v, str):
      texts.append(v)
    elif isinstance(v, list):
      texts += [t for t in v if isinstance(t, str)]
  return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def decode_image(data: bytes, draft_size: int | None = None) -> np.ndarray:
  """Image bytes -> uint8 [H, W, 3] RGB; grey, palette and alpha are flattened on white.

  JPEG goes to simplejpeg (libjpeg-turbo without PIL's per-image overhead,
  ~1.3-1.5x faster than PIL + draft, benchmarks/loader_throughput.py --decoders);
  PNG, WebP and any JPEG it rejects (CMYK, corrupt: PIL then decides) go to
  PIL. `draft_size` decodes JPEG at a reduced power-of-two DCT scale that
  keeps the short side >= draft_size (PIL's `draft` rule; both give the same
  pixels), much faster for large web images. Raises on corrupt bytes.
  """
  if simplejpeg is not None and data[:3] == b"\xff\xd8\xff":
    try:
      return _decode_jpeg(data, draft_size)
    except ValueError:
      pass
  from PIL import Image
  with Image.open(io.BytesIO(data)) as im:
    if draft_size and im.format == "JPEG":
      im.draft("RGB", (draft_size, draft_size))
    im.load()
    return to_rgb(im)


def _decode_jpeg(data: bytes, draft_size: int | None) -> np.ndarray:
  h, w, _, _ = simplejpeg.decode_jpeg_header(data)
  f = 1   # power-of-two scales only: libjpeg-turbo's 3/8, 5/8, ... IDCTs are slower
  while draft_size and f < 8 and min(h, w) // (2 * f) >= draft_size:
    f *= 2
  return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // f), min_width=-(-w // f))


def to_rgb(im) -> np.ndarray:
  from PIL import Image
  if im.mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  if im.mode in ("RGBA", "LA", "PA"):
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(bg, im.convert("RGBA"))
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.uint8)


def make_sample(key: str, members: dict, *, with_images: bool, stats: Stats,
                caption_keys=CAPTION_KEYS, draft_size: int | None = None,
                require_caption: bool = True) -> dict | None:
  """The sample dict of `iter_shard`, or None (counted in stats) when it is unusable.

  Training pairs need a caption; evaluation samples (`require_caption=False`)
  need only an image: a classification set's samples carry just a label.
  """
  ext = image_ext(members)
  if ext is None:
    stats.missing_images += 1
    return None
  texts, label = parse_texts(members, stats, caption_keys)
  if not texts and require_caption:
    stats.missing_captions += 1
    return None
  image = None
  if with_images:
    try:
      image = decode_image(members[ext], draft_size)
    except Exception:   # PIL raises many types on bad bytes: all mean "corrupt"
      stats.corrupt_images += 1
      return None
  stats.samples += 1
  return {"__key__": key, "texts": texts, "image": image, "label": label}


def iter_shard(path: str, *, with_images: bool = True, stats: Stats | None = None,
               caption_keys=CAPTION_KEYS) -> Iterator[dict]:
  """Yields {"__key__", "texts", "image" (uint8 [H, W, 3] RGB or None), "label"} in tar order.

  With `with_images=False` image bytes are skipped with a seek (not read or
  decoded); samples still need an image member to count as pairs. Bad samples
  and shards are skipped and counted in `stats`; if no `stats` is passed, a
  warning with this shard's counts is logged at the end.
  """
  own = stats is None
  stats = Stats() if own else stats
  stats.shards += 1
  try:
    f = open_shard(path)
  except OSError as e:
    stats.unreadable_shards += 1
    log.warning("cannot open shard %s: %s", path, e)
    return
  with f:
    try:
      for key, _, _, members in iter_samples_raw(f, with_images=with_images):
        s = make_sample(key, members, with_images=with_images, stats=stats,
                        caption_keys=caption_keys)
        if s is not None:
          yield s
    except TruncatedShard as e:
      stats.truncated_shards += 1
      log.warning("shard %s is truncated (%s): kept the samples before the cut", path, e)
  if own:
    stats.warn(path)


def captions_by_position(shards: list[str], *, split_lines: bool = False,
                         caption_keys=CAPTION_KEYS) -> list[list[str]]:
  """Per sample of the loader's index (shard order, tar order, an image member present:
  shard_index.scan_shard's rule), its captions ([] when none). `split_lines`: a `.txt`
  member holds one caption per line (CLIP_benchmark retrieval sets).

  Image bytes are skipped with seeks. Unreadable shards add no samples and a
  truncated shard keeps the samples before the cut, exactly as the index does,
  so position p here is position p of loader.eval_batches.
  """
  out, stats = [], Stats()
  for shard in shards:
    try:
      f = open_shard(shard)
    except OSError:
      stats.unreadable_shards += 1
      continue
    with f:
      try:
        for _, _, _, members in iter_samples_raw(f, with_images=False):
          if image_ext(members) is None:
            continue
          if split_lines:
            txt = (members.get("txt") or b"").decode("utf-8", "replace")
            out.append([c.strip() for c in txt.splitlines() if c.strip()])
          else:
            out.append(parse_texts(members, stats, caption_keys)[0])
      except TruncatedShard:
        stats.truncated_shards += 1
  stats.warn("captions")
  return out
