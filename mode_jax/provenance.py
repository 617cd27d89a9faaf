"""What made each artefact: fingerprints, stage manifests, and stale outputs moved aside.

A build system's rule, applied to the workdir: every stage output is keyed by
exactly what made it. A stage's fingerprint hashes

  * the config fields it reads (`fields`: only those; a log interval is not one),
  * the fingerprints of the inputs it reads (upstream manifests; data files by
    content, `file_digest`), and
  * its seed (a config field like any other).

Each stage (or unit of a stage: one expert, one evaluated model) keeps
`<dir>/manifest.json`:

  {"stage", "fingerprint", "state": "running" | "done", "fields": {...},
   "inputs": {name: {"fingerprint", "facts": {...}}}, "made_at"}

and `decide` compares it with what the stage would read now:

  skip     done, same fingerprint: nothing to do
  resume   running, same fingerprint: a killed run continues (its checkpoints
           were made from these inputs)
  run      nothing there yet
  rerun    made from other inputs (or of unknown origin: outputs without a
           manifest): the old outputs are moved to <workdir>/stale/ first, so
           stale results are never mixed with fresh ones and never resumed

`start` writes the running manifest (after moving stale outputs aside),
`finish` the done one; a killed stage therefore never looks finished. The
reason of a re-run is one line naming what changed, e.g.
"clustering changed (n 4 -> 8)" or "config changed (optim.lr 0.001 -> 0.003)".

Data files are fingerprinted by content, never by size or modification time:
an object store's own content hash (GCS md5Hash / crc32c, S3 ETag) where it
has one, else sha256 of the bytes. Local hashes are memoised under a key of
(size, mtime, ctime, inode): a rewrite always moves ctime, so the memo can
save the read but never change the answer.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from typing import Any, Iterable

from mode_jax import workdir as wd

MANIFEST = "manifest.json"
STALE = "stale"          # <workdir>/stale/<rel>-<old fingerprint>/: outputs of other inputs
_READ_CHUNK = 1 << 22


# The version of each stage's code, part of its fingerprint: bump a stage's number when its
# outputs change for the same inputs and config (a fixed bug, another file format), so every
# workdir re-makes them and says why. Stages not named are at 1.
VERSIONS = {"prepare": 1, "embed": 1, "cluster": 1, "assign": 1, "seed": 1, "experts": 1,
            "dense": 1, "evaluate": 1, "report": 1}

# Where this machine memoises digests of local files that have no workdir memo (encoder
# weights; data read for a workdir on an object store). A memo is keyed by the file's
# absolute path, size, times and inode: safe to share between workdirs.
MACHINE_MEMO = "~/.cache/mode_jax/digests"

def digest(obj: Any, n: int = 16) -> str:
  """The first n hex digits of sha256 over canonical JSON of obj."""
  blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:n]


def select(config, names: Iterable[str], exclude: Iterable[str] = ()) -> dict:
  """{dotted name: value} of the config fields a stage reads; a section name takes the whole
  section less the dotted names in `exclude` (fields that change how, not what).

  A field absent from the config is recorded as None (it still counts: adding it later
  with a value is a change).
  """
  exclude = set(exclude)
  out = {}
  for name in names:
    node = config
    for part in name.split("."):
      node = node.get(part) if node is not None and hasattr(node, "get") else None
    if hasattr(node, "to_dict"):
      node = node.to_dict()
    if isinstance(node, dict):
      node = _drop(node, name, exclude)
    out[name] = node
  return out


def _drop(d: dict, prefix: str, exclude: set) -> dict:
  out = {}
  for k, v in d.items():
    full = f"{prefix}.{k}"
    if full in exclude:
      continue
    out[k] = _drop(v, full, exclude) if isinstance(v, dict) else v
  return out


# ---- data by content ------------------------------------------------------------------

def file_digest(path: str, memo_dir: str | None = None) -> str:
  """A content fingerprint of one file (local or on an object store)."""
  if wd.is_remote(path):
    stored = wd.stored_hash(path)
    return stored or "sha256:" + _sha256(wd.open(path, "rb"))
  local = os.path.expanduser(str(path).removeprefix("file://"))
  st = os.stat(local)
  key = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
  memo = (os.path.join(os.path.expanduser(memo_dir),
                       f"{os.path.basename(local)}-{digest(os.path.abspath(local), 10)}.json")
          if memo_dir and not wd.is_remote(memo_dir) else None)
  if memo and os.path.exists(memo):
    try:
      with open(memo) as f:
        got = json.load(f)
      if got.get("key") == key:
        return got["digest"]
    except (OSError, ValueError, KeyError):
      pass
  with open(local, "rb") as f:
    out = "sha256:" + _sha256(f)
  if memo:
    wd.write_json(memo, {"path": os.path.abspath(local), "key": key, "digest": out})
  return out


def tree_digest(path: str, memo_dir: str | None = None) -> str:
  """A content fingerprint of a file, or of a folder (a model's config, weights, tokenizer):
  every file in it, hidden ones aside, by relative path and content."""
  if not wd.isdir(path):
    return file_digest(path, memo_dir)
  got = []

  def walk(folder, rel):
    for name in wd.listdir(folder):
      if name.startswith("."):
        continue
      p = wd.path(folder, name)
      if wd.isdir(p):
        walk(p, f"{rel}{name}/")
      else:
        got.append([rel + name, file_digest(p, memo_dir)])

  walk(path, "")
  return digest(got)


def _sha256(f) -> str:
  h = hashlib.sha256()
  with f:
    while chunk := f.read(_READ_CHUNK):
      h.update(chunk)
  return h.hexdigest()


# ---- manifests ------------------------------------------------------------------------

@dataclasses.dataclass
class Input:
  """One thing a stage read: its fingerprint and a few facts to explain a change with."""
  fingerprint: str
  facts: dict = dataclasses.field(default_factory=dict)
  label: str = ""      # how a change is named in the one-line reason ("clustering")


@dataclasses.dataclass
class Decision:
  action: str          # "skip" | "resume" | "run" | "rerun"
  fingerprint: str
  reason: str          # one line: why (empty for skip / run)
  manifest: dict       # what `start` / `finish` write

  @property
  def todo(self) -> bool:
    return self.action != "skip"


def manifest_path(workdir: str, rel: str) -> str:
  return wd.path(workdir, *rel.split("/"), MANIFEST)


def read(workdir: str, rel: str) -> dict | None:
  p = manifest_path(workdir, rel)
  return wd.read_json(p) if wd.exists(p) else None


def upstream(workdir: str, rel: str, stage: str, label: str, facts=()) -> Input:
  """The finished outputs of another stage under <workdir>/<rel> as an input, with the facts
  of its manifest named in `facts` (MissingInput naming `stage` until it has finished)."""
  m = read(workdir, rel)
  if m is None or m.get("state") != "done":
    raise wd.MissingInput(manifest_path(workdir, rel), stage)
  got = m.get("facts", {})
  return Input(m["fingerprint"], {k: got.get(k) for k in facts}, label)


def as_stored(fields: dict) -> dict:
  """Config fields as a manifest holds them (JSON: tuples are lists), so they compare."""
  return json.loads(json.dumps(fields, default=str))


def decide(workdir: str, rel: str, stage: str, fields: dict, inputs: dict[str, Input],
           outputs_exist: bool = False, complete: bool = True) -> Decision:
  """What a stage must do with its outputs under <workdir>/<rel> (see the module doc).

  outputs_exist: outputs are there (a workdir made before manifests, or a
  stage killed before its first manifest): without a manifest they are of
  unknown origin and are re-made. complete: the outputs a done manifest
  promises are all there (False: someone deleted some; they are re-made).
  """
  fields = as_stored(fields)
  version = VERSIONS.get(stage, 1)
  fp = digest({"stage": stage, "version": version, "fields": fields,
               "inputs": {k: v.fingerprint for k, v in sorted(inputs.items())}})
  new = {"stage": stage, "version": version, "fingerprint": fp, "fields": fields,
         "inputs": {k: {"fingerprint": v.fingerprint, "facts": v.facts, "label": v.label}
                    for k, v in sorted(inputs.items())}}
  old = read(workdir, rel)
  if old is None:
    if outputs_exist:
      return Decision("rerun", fp, "outputs of unknown origin (no manifest)", new)
    return Decision("run", fp, "", new)
  if old.get("fingerprint") == fp:
    if old.get("state") == "done" and not complete:
      return Decision("rerun", fp, "outputs missing", new)
    return Decision("skip" if old.get("state") == "done" else "resume", fp, "", new)
  return Decision("rerun", fp, explain(old, new), new)


def explain(old: dict, new: dict) -> str:
  """One line: which inputs and config fields differ between two manifests."""
  parts = []
  if old.get("version", 1) != new.get("version", 1):
    parts.append(f"{new['stage']} code changed (version {old.get('version', 1)} -> "
                 f"{new.get('version', 1)})")
  for name, inp in new["inputs"].items():
    was = old.get("inputs", {}).get(name)
    if was is None:
      parts.append(f"new input {name}")
    elif was.get("fingerprint") != inp["fingerprint"]:
      facts = [f"{k} {_short(was.get('facts', {}).get(k))} -> {_short(v)}"
               for k, v in inp.get("facts", {}).items()
               if was.get("facts", {}).get(k) != v]
      label = inp.get("label") or name
      parts.append(f"{label} changed" + (f" ({', '.join(facts)})" if facts else ""))
  changed = [f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in
             _flat_diff(old.get("fields", {}), new["fields"]).items()]
  if changed:
    shown = changed[:3] + ([f"{len(changed) - 3} more"] if len(changed) > 3 else [])
    parts.append(f"config changed ({', '.join(shown)})")
  return "; ".join(parts) or "made by another fingerprint scheme (an older mode_jax)"


def _short(v) -> str:
  s = json.dumps(v, default=str) if not isinstance(v, str) else v
  return s if len(s) <= 40 else s[:37] + "..."


def _flat_diff(a: dict, b: dict, prefix: str = "") -> dict:
  out = {}
  for k in sorted(set(a) | set(b)):
    x, y = a.get(k), b.get(k)
    name = f"{prefix}{k}"
    if isinstance(x, dict) and isinstance(y, dict):
      out.update(_flat_diff(x, y, name + "."))
    elif x != y:
      out[name] = (x, y)
  return out


def move_aside(path: str, root: str, fingerprint: str | None) -> str | None:
  """Moves a stale output (file or folder under `root`: the workdir or the checkpoint root)
  to <root>/stale/<path under root, '/' -> '__'>-<fingerprint>; returns where it went (None
  when it did not exist)."""
  if not wd.exists(path):
    return None
  root, path = wd.resolve(root).rstrip("/"), wd.resolve(path).rstrip("/")
  if not path.startswith(root + "/"):
    raise ValueError(f"{path} is not under {root}")
  name = f"{path[len(root) + 1:].replace('/', '__')}-{fingerprint or 'unknown'}"
  target, n = wd.path(root, STALE, name), 1
  while wd.exists(target):
    n += 1
    target = wd.path(root, STALE, f"{name}-{n}")
  wd.move(path, target)
  return target


def start(workdir: str, rel: str, decision: Decision,
          stale: Iterable[tuple[str, str]] = ()) -> list[str]:
  """Before a stage works: on a rerun moves the `stale` outputs ((path, root) pairs) aside
  and returns where to; then writes the running manifest."""
  moved = []
  if decision.action == "rerun":
    old = read(workdir, rel) or {}
    for path, root in stale:
      got = move_aside(path, root, old.get("fingerprint"))
      if got:
        moved.append(got)
  if decision.action != "skip":
    write(workdir, rel, decision, "running")
  return moved


def finish(workdir: str, rel: str, decision: Decision, **facts) -> None:
  """After a stage's outputs are complete: the done manifest (with facts to show later)."""
  write(workdir, rel, decision, "done", **facts)


def write(workdir: str, rel: str, decision: Decision, state: str, **facts) -> None:
  m = dict(decision.manifest, state=state,
           made_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"))
  if facts:
    m["facts"] = facts
  wd.write_json(manifest_path(workdir, rel), m)


def say(stage: str, decision: Decision, doing: str) -> str:
  """The one line a stage prints when it re-runs: '<stage>: <why>; <doing>'."""
  why = decision.reason or {"run": "first run", "resume": "resuming a killed run"}.get(
      decision.action, "up to date")
  return f"{stage}: {why}; {doing}"
