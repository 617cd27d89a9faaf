"""The embed stage's files as the clustering reads them: row counts and row ranges.

embed/<stem>.npz holds keys str[n] and emb [n, D] (mode_jax/workdir.py). The
cluster stage reads each host's contiguous block of a group of files' rows
with ranged reads (np.savez stores members uncompressed), so on an object
store a host moves only its share of the embeddings.
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np

from mode_jax import distributed
from mode_jax import workdir as wd


def _emb_header(f) -> tuple[tuple, np.dtype]:
  major, _ = np.lib.format.read_magic(f)
  read = (np.lib.format.read_array_header_1_0 if major == 1
          else np.lib.format.read_array_header_2_0)
  shape, fortran, dtype = read(f)
  if fortran:
    raise ValueError("embed files hold C-order arrays")
  return tuple(shape), dtype


def _rows(npz_path: str) -> int:
  """Rows of an embed file's `emb` array, read from the .npy header only."""
  with wd.open(npz_path, "rb") as raw, zipfile.ZipFile(raw) as z, z.open("emb.npy") as f:
    return int(_emb_header(f)[0][0])


def read_rows(npz_path: str, lo: int, hi: int) -> np.ndarray:
  """Rows [lo, hi) of an embed file's `emb`, reading only their bytes.

  np.savez stores members uncompressed, so the rows sit at a fixed offset:
  the member's local zip header, then the .npy header, then row-major data.
  On an object store that is one ranged read per file (a host reads its block
  of a chunk, not the whole file). Compressed members fall back to a full read.
  """
  with wd.open(npz_path, "rb") as raw, zipfile.ZipFile(raw) as z:
    info = z.getinfo("emb.npy")
    with z.open(info) as f:
      shape, dtype = _emb_header(f)
      header_len = f.tell()
    if info.compress_type != zipfile.ZIP_STORED:
      with z.open(info) as f:
        return np.load(f)[lo:hi]
    row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    raw.seek(info.header_offset)
    local = raw.read(30)   # local file header: name and extra lengths at bytes 26..30
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    raw.seek(info.header_offset + 30 + name_len + extra_len + header_len + lo * row_bytes)
    data = raw.read((hi - lo) * row_bytes)
  return np.frombuffer(data, dtype).reshape((hi - lo,) + shape[1:])


def row_counts(files: list[str]) -> np.ndarray:
  """int64[len(files)]: each host reads the headers of its share, then all exchange them."""
  counts = np.zeros(len(files), np.int64)
  mine = distributed.share(range(len(files)))
  for i in mine:
    counts[i] = _rows(files[i])
  return distributed.allgather(counts).sum(0)


def groups(files: list[str], rows: np.ndarray, min_rows: int) -> list[list[int]]:
  """Consecutive file indices grouped so each group has >= min_rows rows (a short tail
  joins the last)."""
  groups, cur, total = [], [], 0
  for i, _ in enumerate(files):
    cur.append(i)
    total += int(rows[i])
    if total >= min_rows:
      groups.append(cur)
      cur, total = [], 0
  if cur:
    if groups:
      groups[-1].extend(cur)
    else:
      groups.append(cur)
  return groups


def host_block(files: list[str], rows: np.ndarray, dim: int, dtype: str):
  """This host's contiguous block of the rows of `files` concatenated, and what it read.

  The block depends only on the total and the host count, so the global chunk
  (blocks in process order) is the one a single process would read.
  """
  lo, hi = distributed.block(int(rows.sum()))
  starts = np.concatenate([[0], np.cumsum(rows)])
  parts, read = [], []
  for f, s, e in zip(files, starts[:-1], starts[1:]):
    a, b = max(lo, int(s)), min(hi, int(e))
    if a < b:
      parts.append(read_rows(f, a - int(s), b - int(s)))
      read.append([wd.basename(f), a - int(s), b - int(s)])
  if not parts:   # a host with no rows in this chunk still joins the collective fit
    return np.zeros((0, dim), dtype), read
  return (parts[0] if len(parts) == 1 else np.concatenate(parts)), read
