"""Content fingerprints of data files (shards, parquet, task folders), memoised per workdir.

Stage manifests (mode_jax/provenance.py) key everything made from data on
these: a rebuilt or re-downloaded shard with other bytes changes its
digest, a copied or moved one keeps it within one kind of storage (local
files are sha256, GCS objects md5Hash or crc32c, S3 objects their ETag, which
for a multipart upload depends on the part size: data moved into a bucket is
new data to the manifests). Object stores answer from their
listings (one `ls` per folder: GCS md5Hash / crc32c, S3 ETag); local files
are hashed once and memoised in <workdir>/index/digests/ (on a pod each host
hashes its share of the files first, then every host reads the memo), or in
~/.cache/mode_jax/digests when the workdir is on an object store.
"""

from __future__ import annotations

import posixpath
from typing import Sequence

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd


def memo_dir(workdir: str | None) -> str:
  """Where local file digests are memoised: <workdir>/index/digests for a local workdir
  (shared by the hosts of a pod on a shared disk), else provenance.MACHINE_MEMO."""
  if not workdir or wd.is_remote(workdir):
    return provenance.MACHINE_MEMO
  return wd.path(workdir, "index", "digests")


def file_digests(paths: Sequence[str], workdir: str | None) -> dict[str, str]:
  """{path: content digest} of every path (a collective on a pod: every host calls it)."""
  memo = memo_dir(workdir)
  shared = memo != provenance.MACHINE_MEMO
  remote = [p for p in paths if wd.is_remote(p)]
  local = [p for p in paths if not wd.is_remote(p)]
  out = {}
  folders: dict[str, list[str]] = {}
  for p in remote:
    folders.setdefault(posixpath.dirname(str(p).rstrip("/")), []).append(p)
  for folder, members in folders.items():
    listed = wd.stored_hashes(folder)
    for p in members:
      out[p] = listed.get(wd.basename(p)) or provenance.file_digest(p)
  if local and shared and distributed.process_count() > 1:
    for p in distributed.share(local):   # each host hashes its share into the shared memo
      provenance.file_digest(p, memo)
    distributed.barrier("file digests")
  for p in local:
    out[p] = provenance.file_digest(p, memo)
  return out


def fingerprint(paths: Sequence[str], workdir: str | None) -> str:
  """One fingerprint of an ordered list of files: their names and contents (not where they
  live: a moved copy of the same data is the same data)."""
  got = file_digests(paths, workdir)
  return provenance.digest([[wd.basename(p), got[p]] for p in paths])
