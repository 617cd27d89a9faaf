"""The workdir: where every pipeline stage reads its inputs and writes its outputs.

Data flows one way (docs/method.md): shards -> embeddings -> centers -> assignments
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
                                       "classnames": [...], "templates": [...],
                                       "split": "test" (held out; the default) or
                                       "validation" (where a recipe is chosen)}
  index/<stem>-<hash>.npz             cached sample index of a shard (byte offsets
                                      per sample), rebuilt when the shard changes
  embed/<shard-stem>.npz              keys: str[n]; emb: float16|float32[n, D],
                                      L2-normalised caption embeddings, one row
                                      per sample of that shard, shard order;
                                      source: the content digest of the file the
                                      captions came from; encoder: its fingerprint
  embed/meta.json                     {"encoder", "dim", "dtype", "fingerprint"}
  cluster/fine_centers.npy            float32[m, D]   (mu_s of docs/method.md)
  cluster/coarse_centers.npy          float32[n, D]
  cluster/fine_to_expert.npy          int32[m]        (pi: fine -> expert)
  cluster/expert_order.json           expert ids, widest spread first
  cluster/meta.json                   {"m", "n", "metric", "encoder",
                                       "fingerprint", ...}
  assign/<shard-stem>.npz             keys: str[n]; fine: int32[n];
                                      expert: int32[n]  (same row order as the
                                      shard's embed file); cluster_fingerprint:
                                      the clustering it came from
  {embed,cluster,assign}/hosts/process-<i>-of-<n>.json
                                      what host i of n read (its share) and counts
  cluster/summary/                    experts.md|json, captions.md, sizes.png;
                                      hosts/process-<i>-of-<n>.npz: a host's part
  seed/plan.json                      the schedule: seed, expert and total steps
  seed/, experts/<c>/, dense/         metrics.jsonl, tb/ (TensorBoard), and ckpt/:
                                      an Orbax CheckpointManager directory (under
                                      config.checkpoint_root/<run>/ckpt if set)
  eval/<model>/<task>.npz             logits: float32[N_img, N_cls] raw cosines
                                      (zero-shot) or float32[N_img, N_txt]
                                      (retrieval); labels: int32[N_img] (-1: no
                                      label, left out of every metric);
                                      retrieval: txt_index int32[N_txt] (the
                                      meta_emb row of each caption column);
                                      retrieval also has txt_to_img: int32[N_txt]
                                      (the image of each caption; absent = one
                                      caption per image, in order); logit_scale:
                                      float32[] (the model's exp(scale))
  eval/<model>/manifest.json          {"model", "fingerprint", "tasks": {task: key of
                                      (model fingerprint, task fingerprint)}}
  eval/meta_emb/<task>.npy            float32[N_cls, D] class metadata embeddings
                                      (retrieval: one row per caption); .json
                                      beside it: the task and encoder fingerprints
  eval/tasks/<task>.json              the task as evaluated (kind, metric, names,
                                      templates, source); eval/skipped.json
                                      {task: reason}; eval/scores.{md,csv}
  probe/<task>.json                   linear-probe scores per model (+ concat)
  report/                             results.md/csv (+ significance, probe,
                                      specialisation), routing_weights.md/csv,
                                      clusters.md, metrics.csv, *.png
  bundle/                             `export`: HF CLIPModel folders, mode.json,
                                      routing arrays (mode_jax/eval/bundle.py)
  <stage dir>/manifest.json           what the outputs were made from (provenance.py):
                                      shards/, embed/, cluster/, assign/, seed/,
                                      experts/<c>/, dense/, eval/, report/
  stale/<path>-<fingerprint>/         outputs of other inputs, moved aside (never
                                      read again; delete when not wanted)
  index/digests/                      memoised content digests of local data files

A stage whose inputs are missing raises `MissingInput`, which the launcher
prints as one line naming the file and the command that makes it.

Filesystem. A workdir is a local folder, a shared filesystem or an object
store prefix (gs://bucket/w, s3://bucket/w); every stage opens its files
through the functions below and never calls os, open or glob on a workdir
path itself (the shard writer and the metrics writer stage local files
first, then upload through this module). Local paths go to the os module; URLs go to fsspec (gcsfs,
s3fs). Why fsspec rather than etils epath: the shard reader needs ranged
reads with no read-ahead cache (a 5 MB block per random sample otherwise),
protocol options (an S3 endpoint, a GCS emulator) come from fsspec's
FSSPEC_<PROTOCOL>_<KWARG> environment variables, and epath's gs:// and s3://
backends are fsspec anyway when TensorFlow is absent. Orbax gets the same
URL strings (its arrays go through TensorStore, which writes local paths and
gs:// but not s3://: see mode_jax/checkpoint.py).

Writes are atomic: locally a uniquely named tmp file and os.replace; on an
object store a single upload, which becomes visible whole or not at all.
Hosts of a pod share the workdir: a shared file is written by process 0
(`distributed.on_primary`, others wait at a barrier), per-host work goes to files
whose names no other host writes. MODE_JAX_IO_LOG=<local dir> appends every
read and write of this process to <dir>/io-<pid>.jsonl (tests use it to
check that each file has one writer and each host reads only its share).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import threading
import uuid
from typing import IO, Any

import numpy as np


# The training shards `prepare` writes; the default of config.input.shards.
TRAIN_SHARDS = "shards/train-*.tar"
# A task's split: held-out tasks report the results; a recipe is chosen on validation ones,
# which the report tables and averages apart (issue 23).
TEST, VALIDATION = "test", "validation"


class MissingInput(RuntimeError):
  """An input another stage should have written is absent."""

  def __init__(self, path: str, stage: str):
    self.path, self.stage = path, stage
    super().__init__(
        f"missing {path}: run `python launch.py {stage} --config ... "
        f"--workdir ...` first")


class StaleInput(MissingInput):
  """An input another stage wrote is there but was made from other inputs or config."""

  def __init__(self, path: str, stage: str, reason: str):
    self.path, self.stage = path, stage
    RuntimeError.__init__(
        self, f"out of date {path} ({reason}): run `python launch.py {stage} --config ... "
        f"--workdir ...` first")


# ---- paths ------------------------------------------------------------------------------

def is_remote(p: str) -> bool:
  """True for URLs (gs://, s3://, memory://, ...); file:// counts as local."""
  return "://" in str(p) and not str(p).startswith("file://")


def _local(p: str) -> str:
  return os.path.expanduser(str(p).removeprefix("file://"))


def resolve(workdir: str) -> str:
  """The canonical workdir: local paths absolute (Orbax needs them so), URLs unchanged."""
  workdir = str(workdir)
  if is_remote(workdir):
    return workdir.rstrip("/")
  return os.path.abspath(_local(workdir))


def path(workdir: str, *parts: str) -> str:
  """workdir/part/...: '/'-joined for URLs, os.path for local folders."""
  if is_remote(workdir):
    return posixpath.join(str(workdir), *parts)
  return os.path.join(workdir, *parts)




def basename(p: str) -> str:
  return posixpath.basename(str(p).rstrip("/"))




def shard_stem(shard_path: str) -> str:
  """'/w/shards/train-00003.tar' -> 'train-00003' (names embed/ and assign/ files)."""
  base = basename(shard_path)
  return base[:-4] if base.endswith(".tar") else base


# gcsfs and s3fs cache directory listings per filesystem instance with no expiry
# (fsspec DirCache), and exists() answers from a cached listing of the parent
# (fsspec _ls_from_cache, s3fs _exists_in_cache): after one listing, a file
# another host wrote since stays invisible to this process. Hosts of a pod poll
# the shared store (Orbax's non-primary hosts wait for the primary's files with
# exists()), so no instance may cache: ours (url_to_fs) and those etils epath
# makes for Orbax (fsspec.filesystem("gcs")) alike. fsspec passes
# FSSPEC_<PROTOCOL>_<KWARG> to every instance it creates (fsspec.config
# .apply_config), read into fsspec.config.conf when fsspec is imported; set
# both, so the order of imports does not matter. An explicit setting wins.
LISTINGS_CACHE_OFF = {"gcs": "FSSPEC_GCS_USE_LISTINGS_CACHE", "s3": "FSSPEC_S3_USE_LISTINGS_CACHE"}


def _fresh_listings() -> None:
  import sys
  config = sys.modules.get("fsspec.config")
  for proto, var in LISTINGS_CACHE_OFF.items():
    os.environ.setdefault(var, "false")
    if config is not None:   # fsspec already imported: its conf is read at each instantiation
      config.conf.setdefault(proto, {}).setdefault("use_listings_cache", False)


_fresh_listings()


def _fs(p: str):
  import fsspec
  fs, rel = fsspec.core.url_to_fs(str(p))
  return fs, rel


def _url(p: str, found: str) -> str:
  """fsspec returns paths without the protocol; give URLs back as they came."""
  proto = str(p).split("://", 1)[0]
  return found if "://" in found else f"{proto}://{found}"


# ---- I/O log ----------------------------------------------------------------------------

_log_lock = threading.Lock()
_stage = threading.local()


@contextlib.contextmanager
def io_stage(name: str):
  """Tags this thread's I/O log lines with a stage name."""
  old = getattr(_stage, "name", "")
  _stage.name = name
  try:
    yield
  finally:
    _stage.name = old


def log_io(op: str, p: str) -> None:
  """Appends one line to this process's I/O log when MODE_JAX_IO_LOG is set."""
  d = os.environ.get("MODE_JAX_IO_LOG")
  if not d:
    return
  line = json.dumps({"pid": os.getpid(), "op": op, "path": str(p),
                     "stage": getattr(_stage, "name", "")})
  with _log_lock:
    os.makedirs(d, exist_ok=True)
    with io.open(os.path.join(d, f"io-{os.getpid()}.jsonl"), "a") as f:   # not wd.open
      f.write(line + "\n")


# ---- queries ----------------------------------------------------------------------------

def exists(p: str) -> bool:
  if not is_remote(p):
    return os.path.exists(_local(p))
  fs, rel = _fs(p)
  return fs.exists(rel)


def isdir(p: str) -> bool:
  if not is_remote(p):
    return os.path.isdir(_local(p))
  fs, rel = _fs(p)
  return fs.isdir(rel)


def isfile(p: str) -> bool:
  if not is_remote(p):
    return os.path.isfile(_local(p))
  fs, rel = _fs(p)
  return fs.isfile(rel)


def listdir(p: str) -> list[str]:
  """Sorted names (not paths) directly inside directory p; [] when it does not exist."""
  if not is_remote(p):
    d = _local(p)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []
  fs, rel = _fs(p)
  try:
    entries = fs.ls(rel, detail=False, refresh=True)
  except FileNotFoundError:
    return []
  return sorted({basename(e) for e in entries if e.rstrip("/") != rel.rstrip("/")})


def glob(pattern: str) -> list[str]:
  """Sorted matches of a glob pattern (local or URL)."""
  if not is_remote(pattern):
    import glob as globlib
    return sorted(globlib.glob(_local(pattern)))
  fs, rel = _fs(pattern)
  fs.invalidate_cache()
  return sorted(_url(pattern, f) for f in fs.glob(rel))




def signature(p: str) -> str:
  """What invalidates caches built from a file: size, mtime, and locally its ctime and inode
  (a file rewritten with the same size and a restored mtime still changes its ctime)."""
  if not is_remote(p):
    st = os.stat(_local(p))
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
  fs, rel = _fs(p)
  info = fs.info(rel)
  stamp = next((info[k] for k in ("mtime", "LastModified", "updated", "ETag", "etag",
                                  "generation") if k in info), "")
  return f"{info.get('size')}:{stamp}"


# Content hashes object stores keep per object (GCS md5Hash / crc32c, S3 ETag): a file's
# content fingerprint without reading it (mode_jax/provenance.py).
_STORE_HASHES = ("md5Hash", "crc32c", "ETag", "etag")


def stored_hash(p: str) -> str | None:
  """'<kind>:<value>' of the content hash an object store keeps for p, or None."""
  if not is_remote(p):
    return None
  fs, rel = _fs(p)
  info = fs.info(rel)
  for k in _STORE_HASHES:
    if info.get(k):
      return f"{k}:{str(info[k]).strip(chr(34))}"
  return None


def stored_hashes(folder: str) -> dict[str, str]:
  """{name: '<kind>:<value>'} of the objects directly in an object-store folder, from one
  listing ({} for a local folder or an empty listing)."""
  if not is_remote(folder):
    return {}
  fs, rel = _fs(folder)
  try:
    entries = fs.ls(rel, detail=True, refresh=True)
  except FileNotFoundError:
    return {}
  out = {}
  for e in entries:
    k = next((k for k in _STORE_HASHES if e.get(k)), None)
    if k:
      out[basename(e["name"])] = f"{k}:{str(e[k]).strip(chr(34))}"
  return out


# ---- reading ----------------------------------------------------------------------------

def open(p: str, mode: str = "rb", **kw) -> IO:  # noqa: A001  (the module's open)
  """A file object for reading (or streaming writes with a name no one else writes).

  Remote reads use no read-ahead cache by default (`cache_type="none"`): the
  shard reader seeks to one sample at a time.
  """
  log_io("read" if "r" in mode else "write", p)
  if not is_remote(p):
    return io.open(_local(p), mode)
  fs, rel = _fs(p)
  if "r" in mode:
    kw.setdefault("cache_type", "none")
  return fs.open(rel, mode, **kw)


def read_bytes(p: str) -> bytes:
  if not is_remote(p):
    with open(p, "rb") as f:
      return f.read()
  log_io("read", p)
  fs, rel = _fs(p)
  return fs.cat_file(rel)


def read_text(p: str) -> str:
  return read_bytes(p).decode("utf-8")


def read_json(p: str) -> Any:
  return json.loads(read_bytes(p))


def load_npz(p: str) -> dict[str, np.ndarray]:
  """All arrays of an .npz (read whole: one request on an object store)."""
  with np.load(io.BytesIO(read_bytes(p)), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def load_npy(p: str) -> np.ndarray:
  return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)


def require(workdir: str, rel: str, stage: str) -> str:
  """Returns workdir/rel, or raises MissingInput naming the stage that makes it."""
  p = path(workdir, rel)
  if not exists(p):
    raise MissingInput(p, stage)
  return p


# ---- writing ----------------------------------------------------------------------------

def makedirs(p: str) -> None:
  """Creates a local directory (object stores have none: a no-op there)."""
  if not is_remote(p):
    os.makedirs(_local(p), exist_ok=True)


def write_bytes(p: str, data: bytes) -> str:
  """Writes p atomically: a killed writer never leaves half a file under the name."""
  log_io("write", p)
  if is_remote(p):
    fs, rel = _fs(p)
    fs.pipe_file(rel, bytes(data))
    return p
  p = _local(p)
  os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
  tmp = f"{p}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"   # unique: hosts may share a folder
  try:
    with io.open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, p)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return p


def write_text(p: str, text: str) -> str:
  return write_bytes(p, text.encode("utf-8"))


def write_json(p: str, obj: Any) -> str:
  return write_text(p, json.dumps(obj, indent=2, sort_keys=True, default=str))


def save_npz(p: str, **arrays) -> str:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return write_bytes(p, buf.getvalue())


def save_figure(p: str, fig, dpi: int = 120) -> str:
  """A matplotlib figure as PNG at p."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return write_bytes(p, buf.getvalue())


def save_npy(p: str, arr: np.ndarray) -> str:
  buf = io.BytesIO()
  np.save(buf, arr)
  return write_bytes(p, buf.getvalue())


def upload(local_file: str, p: str) -> str:
  """Copies a finished local file to p (atomically, as write_bytes)."""
  if not is_remote(p):
    if os.path.abspath(_local(p)) == os.path.abspath(local_file):
      return p
    with io.open(local_file, "rb") as f:
      return write_bytes(p, f.read())
  log_io("write", p)
  fs, rel = _fs(p)
  fs.put_file(local_file, rel)
  return p


def upload_tree(local_dir: str, p: str) -> None:
  """Copies every file under local_dir to the same relative paths under p."""
  for root, _, names in os.walk(local_dir):
    for name in names:
      local = os.path.join(root, name)
      upload(local, path(p, *os.path.relpath(local, local_dir).split(os.sep)))


def move(src: str, dst: str) -> None:
  """Renames a file or folder (local: one rename; object store: copy then delete)."""
  log_io("write", dst)
  if is_remote(src):
    fs, rel = _fs(src)
    fs.mv(rel, _fs(dst)[1], recursive=True)
    return
  os.makedirs(os.path.dirname(_local(dst)) or ".", exist_ok=True)
  os.replace(_local(src), _local(dst))


def remove(p: str, missing_ok: bool = True) -> None:
  log_io("delete", p)
  try:
    if is_remote(p):
      fs, rel = _fs(p)
      fs.rm_file(rel)
    else:
      os.remove(_local(p))
  except FileNotFoundError:
    if not missing_ok:
      raise
