"""Each training shard's captions without its images: img2dataset's parquet, else the tar.

The embed stage and the cluster summaries need only (key, caption candidates)
per sample, in tar order. Read from the tar, that costs a ranged read per
member header and caption member of every sample (image bytes are skipped
with seeks). img2dataset writes `<stem>.parquet` beside every `<stem>.tar`
with the same captions in ~130 bytes a row. Its `key`, `status` and caption
columns alone are read (pyarrow column projection, the chunks fetched in a
few coalesced ranges; with img2dataset's 100-row row groups those ranges
span about the whole file, 1.05x of it at 10,000 rows a shard): 33-56x fewer
bytes per caption than the tars and a few requests per shard instead of ~11
per sample (benchmarks/caption_read.py).

Why the parquet gives the same samples in the same order (img2dataset 1.47.0,
downloader.py and writer.py, WebDatasetSampleWriter.write): each input row's
`meta` (its input columns, among them `caption`, then key, status,
error_message, width, height, original_width, original_height, and the hash
and exif columns when enabled) is appended to the parquet by the same call
that writes the tar sample, so rows follow the tar's order. Rows whose
`status` is not "success" (failed_to_download, failed_to_resize) have no tar
sample. A tar sample holds `<key>.<jpg|png|webp>`, `<key>.json` (= meta) and,
when a caption column was given, `<key>.txt` = str(caption) ("" for None).
Captions come from those by `webdataset.collect_texts`, the tar reader's own
rule, so a sample without a caption is skipped and counted in both paths.

The parquet is used only when every shard has one (one listing per shard
directory), and the first shard read from parquet is also read from its tar
and compared: a difference in keys or captions is an error. A parquet that
cannot be read, or lacks `key`/`status` (not img2dataset's), is passed over
for that shard's tar with a warning. The parquet cannot see a truncated tar:
its rows then include samples past the cut that the loader never reads.
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import Sequence

from mode_jax import workdir as wd
from mode_jax.data.io import webdataset as wds

log = logging.getLogger(__name__)

SOURCES = ("auto", "tar", "parquet")
SUCCESS = "success"        # img2dataset's `status` of a row with a sample in the tar
REQUIRED = ("key", "status")


class CaptionMismatch(ValueError):
  """A shard's parquet and tar disagree on its samples or captions."""


def parquet_beside(shard: str) -> str | None:
  """img2dataset's `<stem>.parquet` for `<stem>.tar` (None for other names)."""
  return shard[:-4] + ".parquet" if shard.endswith(".tar") else None


def _dirname(p: str) -> str:
  return posixpath.dirname(p) if wd.is_remote(p) else (os.path.dirname(p) or ".")


def all_have_parquet(shards: Sequence[str]) -> bool:
  """Whether every shard has its parquet: one directory listing per shard directory
  (not one request per shard on an object store)."""
  names: dict[str, set[str]] = {}
  for shard in shards:
    pq_path = parquet_beside(shard)
    if pq_path is None:
      return False
    d = _dirname(shard)
    if d not in names:
      names[d] = set(wd.listdir(d))
    if wd.basename(pq_path) not in names[d]:
      return False
  return bool(shards)


def from_tar(shard: str, stats: wds.Stats, caption_keys=wds.CAPTION_KEYS
             ) -> tuple[list[str], list[list[str]]]:
  """(keys, caption candidates) of a shard's samples, read from the tar (images skipped)."""
  keys, cands = [], []
  for sample in wds.iter_shard(shard, with_images=False, stats=stats,
                               caption_keys=caption_keys):
    keys.append(sample["__key__"])
    cands.append(sample["texts"])
  return keys, cands


def _columns(names: list[str], caption_keys=wds.CAPTION_KEYS) -> list[str]:
  """key, status and the columns the caption rule reads (`caption` also makes the .txt)."""
  want = set(REQUIRED) | {k for k in caption_keys if k != "txt"} | {"caption"}
  return [c for c in names if c in want]


class NotImg2dataset(ValueError):
  """A parquet beside a shard without img2dataset's key and status columns."""


def from_parquet(path: str, stats: wds.Stats, caption_keys=wds.CAPTION_KEYS
                 ) -> tuple[list[str], list[list[str]]]:
  """(keys, caption candidates) of the rows of an img2dataset parquet that have a tar sample.

  Reads only key, status and the caption columns. Raises NotImg2dataset, OSError or
  pyarrow.ArrowException (the caller falls back to the tar).
  """
  import pyarrow.parquet as pq
  with wd.open(path, "rb") as f:
    # pre_buffer: the projected column chunks of all row groups (img2dataset writes one
    # per 100 rows) in a few coalesced ranged reads instead of one read per chunk.
    pf = pq.ParquetFile(f, pre_buffer=True)
    names = pf.schema_arrow.names
    missing = [c for c in REQUIRED if c not in names]
    if missing:
      raise NotImg2dataset(f"{path} has no {' or '.join(missing)} column")
    cols = pf.read(columns=_columns(names, caption_keys)).to_pydict()
  text_cols = [c for c in cols if c not in REQUIRED]
  has_txt = "caption" in cols      # img2dataset writes .txt when it was given a caption column
  keys, cands = [], []
  stats.shards += 1
  for i, (key, status) in enumerate(zip(cols["key"], cols["status"])):
    if status != SUCCESS:
      continue
    meta = {c: cols[c][i] for c in text_cols}
    txt = None
    if has_txt:
      txt = str(meta["caption"]) if meta["caption"] is not None else ""
    texts = wds.collect_texts(meta, txt, caption_keys)
    if not texts:
      stats.missing_captions += 1
      continue
    keys.append(str(key))
    cands.append(texts)
  stats.samples += len(keys)
  return keys, cands


def first_difference(a_keys, a_cands, b_keys, b_cands) -> str | None:
  """Where two (keys, candidates) lists first differ, in words; None when equal."""
  for i, (ka, ca, kb, cb) in enumerate(zip(a_keys, a_cands, b_keys, b_cands)):
    if ka != kb:
      return f"sample {i} is {ka!r} in the parquet, {kb!r} in the tar"
    if ca != cb:
      return f"sample {i} ({ka!r}) has captions {ca!r} in the parquet, {cb!r} in the tar"
  if len(a_keys) != len(b_keys):
    return f"{len(a_keys)} samples with captions in the parquet, {len(b_keys)} in the tar"
  return None


class ShardCaptions:
  """Reads shards' (keys, caption candidates), from parquet when every shard has one.

  source: 'auto' (parquet when all of `shards` have one, else tars), 'tar', or
  'parquet' (an error when one is missing). The first shard read from parquet
  is checked against its tar (CaptionMismatch on any difference). caption_keys:
  where captions come from, in order (config.input.caption_keys, as training reads them).
  """

  def __init__(self, shards: Sequence[str], *, source: str = "auto",
               caption_keys=wds.CAPTION_KEYS):
    self.caption_keys = tuple(caption_keys)
    if source not in SOURCES:
      raise ValueError(f"caption source must be one of {SOURCES}, not {source!r}")
    self.parquet = source != "tar" and all_have_parquet(list(shards))
    if source == "parquet" and not self.parquet:
      raise FileNotFoundError("caption source 'parquet': not every shard has a .parquet "
                              "beside it")
    self.checked = False        # the first parquet read was compared with its tar
    self.fallbacks = 0          # shards whose parquet could not be used

  def read(self, shard: str, stats: wds.Stats | None = None
           ) -> tuple[list[str], list[list[str]]]:
    """(keys, caption candidates) of one shard's samples in tar order; counts go to stats
    (from parquet: shards, samples, missing_captions; a tar's truncation is not seen)."""
    stats = wds.Stats() if stats is None else stats
    if not self.parquet:
      return from_tar(shard, stats, self.caption_keys)
    import pyarrow as pa
    pq_path = parquet_beside(shard)
    try:
      keys, cands = from_parquet(pq_path, stats, self.caption_keys)
    except (OSError, pa.ArrowException, NotImg2dataset) as e:
      self.fallbacks += 1
      log.warning("captions: %s is not usable (%s); reading %s instead", pq_path,
                  (str(e).splitlines() or [type(e).__name__])[0], shard)
      return from_tar(shard, stats, self.caption_keys)
    if not self.checked:
      tar_stats = wds.Stats()
      diff = first_difference(keys, cands, *from_tar(shard, tar_stats, self.caption_keys))
      if diff:
        cut = " (the tar is truncated)" if tar_stats.truncated_shards else ""
        raise CaptionMismatch(f"{pq_path} does not match {shard}{cut}: {diff}; remove the "
                              f"parquet files to read captions from the tars")
      self.checked = True
    return keys, cands

