"""OpenMoji (npm `openmoji`): colour and black line-art SVGs with CLDR annotations and groups.

`data/openmoji.json` gives each emoji's annotation, CLDR tags, OpenMoji's own
tags, its group (12) and subgroup (~100) and its author (docs/corpus.md). The whole
family is held out by default (corpus_split.HELDOUT_FAMILIES): its groups
and subgroups are the zero-shot labels of a design never trained on.
"""

from __future__ import annotations

import json
import os

from mode_jax.data.corpus import captions as captions_alt, split as corpus_split, npm_packages

PACKAGE = "openmoji"
STYLES = {"color": "", "black": "line art"}   # folder -> style word in captions
LICENCE = "CC-BY-SA-4.0"                       # package.json "license"


def package_dir(cache_dir: str = npm_packages.NPM_CACHE, fetch: bool = True) -> str:
  return npm_packages.unpacked(
      PACKAGE, ["package.json", "LICENSE.txt", "data/openmoji.json", "color/svg/*.svg",
                "black/svg/*.svg"], cache_dir=cache_dir, fetch=fetch)


def _tags(entry: dict) -> list[str]:
  tags = entry.get("tags", "").split(",") + entry.get("openmoji_tags", "").split(",")
  return [t.strip() for t in tags if t.strip()]


def records(styles=tuple(STYLES), cache_dir: str = npm_packages.NPM_CACHE,
            texts_per_image: int = 3, seed: int = 0, fetch: bool = True,
            emoji_names=None) -> list[dict]:
  """One record per (emoji, style) whose SVG ships; group/subgroup kept for zero-shot.

  `emoji_names` (sources_icons.EmojiNames) names groups in captions as
  emojibase does ('people & body'); OpenMoji's extras groups get no category.
  """
  group_names = emoji_names.group_names if emoji_names is not None else {}
  pkg = package_dir(cache_dir, fetch)
  version = npm_packages.package_json(pkg)["version"]
  with open(os.path.join(pkg, "data", "openmoji.json")) as f:
    entries = json.load(f)
  out = []
  for style in styles:
    for e in entries:
      path = os.path.join(pkg, style, "svg", e["hexcode"] + ".svg")
      if not os.path.exists(path) or not e.get("annotation"):
        continue
      key = f"openmoji/{style}/{e['hexcode']}"
      author = e.get("openmoji_author") or "the OpenMoji contributors"
      group = e.get("group", "")
      said = "" if group.startswith("extras") else group_names.get(group, group)
      out.append({
          "key": key, "family": "openmoji", "style": style, "kind": "emoji",
          "source": f"openmoji/{style}",
          "version": version, "concept": corpus_split.emoji_concept(e["hexcode"]),
          "group": e.get("group", ""), "subgroup": e.get("subgroups", ""),
          "category": e.get("group", ""), "render": {"path": path}, "licence": LICENCE,
          "attribution": (f"OpenMoji emoji by {author}, openmoji.org, CC BY-SA 4.0; "
                          f"via npm {PACKAGE}@{version} ({style}/svg/{e['hexcode']}.svg)"),
          "captions": captions_alt.alt_texts(
              key, "emoji", e["annotation"], source="OpenMoji", style=STYLES[style],
              tags=_tags(e), category=said, k=texts_per_image, seed=seed),
      })
  return out
