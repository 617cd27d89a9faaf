"""What the demo-corpus sources share: the missing-source error, package versions,
config lists, caption templating."""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np


class MissingSource(FileNotFoundError):
  """A data package of docs/corpus.md is not installed; the message names the install command."""

  def __init__(self, what: str, path: str, install: str):
    self.what, self.path, self.install = what, path, install
    super().__init__(f"{what} not found at {path}: install it with `{install}`")


def item_key(prefix: str, identity: str) -> str:
  """A sample key derived from the item itself (its path or record key), never from its place
  in a listing: a rebuilt corpus (another package version, another source list) keeps every
  key, so assignments and embeddings keyed by sample stay with their images. 64 bits of a
  hash, because record keys hold '/' and '.', which webdataset keys cannot."""
  return f"{prefix}-{hashlib.sha1(identity.encode()).hexdigest()[:16]}"


def debian_version(package: str) -> str | None:
  """The installed Debian package's version (dpkg-query), or None."""
  try:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                         capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def choose_subset(field: str, value: str, choices: tuple[str, ...]) -> list[str]:
  """A comma-separated config list, checked against `choices`, in the order of `choices`."""
  names = [s.strip() for s in value.split(",") if s.strip()]
  if not names or set(names) - set(choices):
    raise ValueError(f"{field}={value!r}: choose a subset of {choices}")
  return [c for c in choices if c in names]


def templated_texts(rng: np.random.Generator, names: list[str], templates: list[str],
                    k: int) -> list[str]:
  """k distinct captions template.format(name), drawn uniformly from names x templates.

  Several captions per image, as web pairs often have (alt text, title, ...):
  the embed stage picks one at random, the trainer may pick another.
  """
  combos = [(n, t) for n in names for t in templates]
  pick = rng.choice(len(combos), size=min(k, len(combos)), replace=False)
  return [combos[i][1].format(combos[i][0]) for i in sorted(pick)]
