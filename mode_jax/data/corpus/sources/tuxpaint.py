"""Tux Paint stamps (Debian `tuxpaint-stamps-default`): PNG/SVG pictures, one sentence each.

/usr/share/tuxpaint/stamps/<category>/.../<name>.{svg,png} with <name>.txt:
its first line is one English sentence written for children ("A giraffe is
the tallest animal."), the other lines translations ("de.utf8=..."). The
folder tree is the category ("animals/mammals"); "cartoon" sub-folders are a
drawing style, not a category. `<name>_mirror.png` files are the stamp's
hand-drawn mirror image, shown when a child flips it: skipped. The family is
held out whole by default (its categories are a zero-shot task).
"""

from __future__ import annotations

import os
import re

from mode_jax.data.corpus import captions as captions_alt, split as corpus_split
from mode_jax.data.corpus.sources import common as sources_common
from mode_jax.data.corpus.sources.common import MissingSource

TUXPAINT_DIR = "/usr/share/tuxpaint/stamps"
DEBIAN_PACKAGE = "tuxpaint-stamps-default"
INSTALL = f"apt-get install -y --no-install-recommends {DEBIAN_PACKAGE}"
LICENCE = "GPL-2.0-or-later"   # /usr/share/doc/tuxpaint-stamps-default/copyright
STYLE_DIRS = frozenset({"cartoon"})
SKIPPED_SUFFIXES = ("_mirror", "_flip")
_TRANSLATION = re.compile(r"^[A-Za-z_@]+\.utf8=")


def debian_version(package: str = DEBIAN_PACKAGE) -> str:
  """The stamps' version ("unknown" when dpkg cannot tell): keys the render cache."""
  return sources_common.debian_version(package) or "unknown"


def description(txt_path: str) -> str:
  """The English sentence: the first line that is not a 'xx.utf8=' translation."""
  with open(txt_path, encoding="utf-8", errors="replace") as f:
    for line in f:
      line = line.strip()
      if line and not _TRANSLATION.match(line):
        return line
  return ""


def stamp_name(stem: str) -> str:
  """'025quarter' -> 'quarter', 'blue_fedora' -> 'blue fedora', 'gift2' -> 'gift'."""
  name = re.sub(r"^\d+[-_ ]*|[-_ ]*\d+$", "", stem)
  return captions_alt.readable(name or stem)


def category(rel_dir: str) -> str:
  parts = [p for p in rel_dir.replace(os.sep, "/").split("/") if p and p not in STYLE_DIRS]
  return "/".join(parts)


def list_stamps(root: str = TUXPAINT_DIR) -> list[tuple[str, str, str]]:
  """Sorted (relative stem, image path, txt path); SVG preferred when both ship."""
  if not os.path.isdir(root):
    raise MissingSource("Tux Paint stamps", root, INSTALL)
  out = []
  for dirpath, _, files in os.walk(root):
    names = set(files)
    for f in files:
      stem, ext = os.path.splitext(f)
      if ext != ".txt" or stem.endswith(SKIPPED_SUFFIXES):
        continue
      image = next((stem + e for e in (".svg", ".png") if stem + e in names), None)
      if image:
        rel = os.path.relpath(os.path.join(dirpath, stem), root)
        out.append((rel, os.path.join(dirpath, image), os.path.join(dirpath, f)))
  if not out:
    raise MissingSource("Tux Paint stamps", root, INSTALL)
  return sorted(out)


def records(root: str = TUXPAINT_DIR, emoji_names=None, texts_per_image: int = 3,
            seed: int = 0) -> list[dict]:
  """One record per stamp; `emoji_names` (sources_icons.EmojiNames) joins concepts to emoji."""
  version = debian_version()
  out = []
  for rel, image, txt in list_stamps(root):
    desc = description(txt)
    stem = os.path.basename(rel)
    name = stamp_name(stem)
    cat = category(os.path.dirname(rel))
    key = f"tuxpaint/{rel}"
    out.append({
        "key": key, "family": "tuxpaint", "kind": "stamp", "source": "tuxpaint", "version": version,
        "concept": corpus_split.name_concept(name, emoji_names), "category": cat,
        "render": {"path": image}, "licence": LICENCE,
        "attribution": (f"Tux Paint stamps by Bill Kendrick and contributors, GPL-2; "
                        f"Debian {DEBIAN_PACKAGE} {version} ({rel}{os.path.splitext(image)[1]})"),
        "captions": captions_alt.alt_texts(
            key, "stamp", name, description=desc, category=cat.split("/")[-1] if cat else "",
            k=texts_per_image, seed=seed),
    })
  return out
