"""Fluent Emoji 3D renders (npm `@lobehub/fluent-emoji-3d`): 256 px WebP per hexcode.

The package has pictures only (`assets/<hexcode>.webp`), so names, tags and
groups come from emojibase by hexcode; a file emojibase cannot name is
skipped and counted. The renders are Microsoft's Fluent design, so the
family is "fluent", the same as iconify's flat, colour and high-contrast
Fluent sets (docs/corpus.md: design families repeat across packages).
"""

from __future__ import annotations

import os

from mode_jax.data.corpus import captions as captions_alt, split as corpus_split, npm_packages
from mode_jax.data.corpus.sources import icons as sources_icons

PACKAGE = "@lobehub/fluent-emoji-3d"
LICENCE = "MIT"   # package.json "license"; Microsoft's fluentui-emoji is MIT too


def package_dir(cache_dir: str = npm_packages.NPM_CACHE, fetch: bool = True) -> str:
  return npm_packages.unpacked(PACKAGE, ["package.json", "assets/*.webp"],
                               cache_dir=cache_dir, fetch=fetch)


def records(cache_dir: str = npm_packages.NPM_CACHE, texts_per_image: int = 3,
            seed: int = 0, fetch: bool = True, stats: dict | None = None) -> list[dict]:
  pkg = package_dir(cache_dir, fetch)
  version = npm_packages.package_json(pkg)["version"]
  names = sources_icons.EmojiNames(sources_icons.emojibase_dir(cache_dir, fetch))
  files = sorted(f for f in os.listdir(os.path.join(pkg, "assets")) if f.endswith(".webp"))
  out, unnamed = [], 0
  for f in files:
    hexcode = f[:-len(".webp")].upper()
    entry = names.get(hexcode)
    if entry is None:
      unnamed += 1
      continue
    key = f"fluent3d/{hexcode}"
    out.append({
        "key": key, "family": "fluent", "style": "3D", "kind": "emoji", "source": "fluent3d",
        "version": version,
        "concept": corpus_split.emoji_concept(hexcode), "group": entry["group"],
        "subgroup": entry["subgroup"], "category": entry["group"],
        "render": {"path": os.path.join(pkg, "assets", f)}, "licence": LICENCE,
        "attribution": (f"Fluent Emoji by Microsoft (github.com/microsoft/fluentui-emoji), MIT; "
                        f"3D renders via npm {PACKAGE}@{version} (assets/{f})"),
        "captions": captions_alt.alt_texts(
            key, "emoji", entry["label"], source="Fluent", style="3D", tags=entry["tags"],
            category=entry["group"], k=texts_per_image, seed=seed),
    })
  if stats is not None:
    stats["fluent3d_files"], stats["fluent3d_unnamed"] = len(files), unnamed
  return out
