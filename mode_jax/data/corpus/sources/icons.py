"""Iconify icon and emoji sets (npm `@iconify/json`) as records, with emoji named by emojibase.

`json/<set>.json` holds each icon's SVG body, aliases (other names, or a
flipped/rotated copy), categories for 77 sets, and for emoji sets `chars`
(hexcode -> icon name); `info.license` is per set (docs/corpus.md). Emoji are
named and tagged from `emojibase-data` (en/data.json) by hexcode, so every
emoji family gets the same CLDR label and tags whatever its icon names.

Twemoji art is reserved for evaluation outside this repository: the sets
in DENIED_SETS raise, wherever a set list comes from. Iconify's `openmoji`
is refused too: it is the npm openmoji family, held out whole.
"""

from __future__ import annotations

import json
import os
import re

from mode_jax.data.corpus import captions as captions_alt, split as corpus_split, npm_packages

ICONIFY = "@iconify/json"
EMOJIBASE = "emojibase-data"
# Never trained on (docs/corpus.md: "Twemoji art ... is reserved for evaluation outside this
# repository"); matched on the set name and on any name that contains these words.
DENIED_SETS = frozenset({"twemoji", "emoji-datasource-twitter"})
DENIED_WORDS = ("twemoji", "twitter")
REFUSED_SETS = {"openmoji": "iconify's openmoji is the npm openmoji family, held out whole"}

# set -> (design family, label used in captions, style word or "", kind). The kind is
# stated, not read from info.category: iconify files fluent-emoji under no category.
# Emoji: the emoji families with names or hexcodes (docs/corpus.md table). Icons: sets with
# categories (mdi 61, fa7 74, icon-park 39, healthicons 21, ...) plus large named sets
# (game-icons, pinhead, tabler, phosphor) for volume; permissive or attribution
# licences only (no NC, no GPL). Variants of one design share a family.
ICONIFY_SETS = {
    "noto": ("noto", "Noto", "", "emoji"),
    "noto-v1": ("noto", "Noto", "classic", "emoji"),
    "fluent-emoji-flat": ("fluent", "Fluent", "flat", "emoji"),
    "fluent-emoji": ("fluent", "Fluent", "color", "emoji"),
    "fluent-emoji-high-contrast": ("fluent", "Fluent", "high contrast", "emoji"),
    "emojione": ("emojione", "EmojiOne", "", "emoji"),
    "emojione-monotone": ("emojione", "EmojiOne", "monochrome", "emoji"),
    "emojione-v1": ("emojione", "EmojiOne", "classic", "emoji"),
    "fxemoji": ("fxemoji", "Firefox OS", "", "emoji"),
    "streamline-emojis": ("streamline", "Streamline", "", "emoji"),
    "mdi": ("mdi", "mdi", "", "icon"),
    "material-symbols": ("material", "Material Symbols", "", "icon"),
    "solar": ("solar", "Solar", "", "icon"),
    "icon-park": ("icon-park", "IconPark", "multicolor", "icon"),
    "icon-park-outline": ("icon-park", "IconPark", "outline", "icon"),
    "icon-park-solid": ("icon-park", "IconPark", "solid", "icon"),
    "healthicons": ("healthicons", "Health Icons", "", "icon"),
    "fa7-solid": ("fontawesome", "Font Awesome", "solid", "icon"),
    "fa7-regular": ("fontawesome", "Font Awesome", "regular", "icon"),
    "fa7-brands": ("fontawesome", "Font Awesome", "brand", "icon"),
    "streamline": ("streamline", "Streamline", "", "icon"),
    "carbon": ("carbon", "Carbon", "", "icon"),
    "ri": ("remix", "Remix", "", "icon"),
    "iconoir": ("iconoir", "Iconoir", "", "icon"),
    "uil": ("unicons", "Unicons", "line", "icon"),
    "la": ("line-awesome", "Line Awesome", "", "icon"),
    "lets-icons": ("lets-icons", "Lets Icons", "", "icon"),
    "game-icons": ("game-icons", "Game Icons", "", "icon"),
    "pinhead": ("pinhead", "Pinhead", "", "icon"),
    "tabler": ("tabler", "Tabler", "", "icon"),
    "ph": ("phosphor", "Phosphor", "", "icon"),
}
# cairosvg ignores luminance masks, so a masked body renders as a filled box
# (icon-park-solid: 953 of 1,970; icon-park-twotone: all, hence not listed): skipped.
MASKED = "<mask"
# Emoji sets whose icon names are run-together Unicode names ('whiteflower'):
# an image is kept only when emojibase names it.
NEEDS_EMOJI_NAME = frozenset({"fxemoji"})
# Style words of icon names as a caption says them; "" = not a style to mention.
STYLE_WORDS = {"fill": "filled", "o": "outline", "alt": "", "variant": "", "mono": "monochrome"}
DEFAULT_SIZE = 16   # iconify's default viewBox width/height when a set gives none
SKIN_TONES = {"light": "light skin tone", "medium-light": "medium-light skin tone",
              "medium": "medium skin tone", "medium-dark": "medium-dark skin tone",
              "dark": "dark skin tone"}   # Fluent's short icon-name suffixes


class ReservedForEvaluation(ValueError):
  """A set that must never be trained on was asked for."""


def check_allowed(set_name: str) -> None:
  """Raises for the twemoji deny list and for sets that duplicate a held-out family."""
  low = set_name.lower()
  if low in DENIED_SETS or any(w in low for w in DENIED_WORDS):
    raise ReservedForEvaluation(
        f"iconify set {set_name!r} is Twemoji art, reserved for evaluation outside this "
        "repository (docs/corpus.md): never train on it")
  if low in REFUSED_SETS:
    raise ReservedForEvaluation(f"iconify set {set_name!r}: {REFUSED_SETS[low]}")


def iconify_dir(sets, cache_dir: str = npm_packages.NPM_CACHE, fetch: bool = True) -> str:
  """The unpacked @iconify/json package with json/<set>.json for `sets` (checked first)."""
  for s in sets:
    check_allowed(s)
  return npm_packages.unpacked(ICONIFY, ["package.json"] + [f"json/{s}.json" for s in sets],
                               cache_dir=cache_dir, fetch=fetch)


def emojibase_dir(cache_dir: str = npm_packages.NPM_CACHE, fetch: bool = True) -> str:
  return npm_packages.unpacked(
      EMOJIBASE, ["package.json", "en/data.json", "en/messages.json", "meta/unicode-names.json"],
      cache_dir=cache_dir, fetch=fetch)


# --- emoji names ----------------------------------------------------------------

def compact(text: str) -> str:
  """Letters and digits only: 'top-hat', 'Top Hat', 'tophat' -> 'tophat'."""
  return re.sub(r"[^a-z0-9]+", "", text.lower())


def _hex(hexcode: str) -> str:
  """Upper case, no variation selectors: the form labels are looked up by."""
  return "-".join(c for c in hexcode.upper().split("-") if c not in ("FE0F", "FE0E"))


class EmojiNames:
  """CLDR labels, tags and groups by hexcode, and hexcodes by name (emojibase-data)."""

  def __init__(self, pkg_dir: str):
    with open(os.path.join(pkg_dir, "en", "data.json")) as f:
      data = json.load(f)
    with open(os.path.join(pkg_dir, "en", "messages.json")) as f:
      messages = json.load(f)
    with open(os.path.join(pkg_dir, "meta", "unicode-names.json")) as f:
      unicode_names = json.load(f)
    self.version = npm_packages.package_json(pkg_dir)["version"]
    groups = {g["order"]: g["message"] for g in messages["groups"]}
    subgroups = {g["order"]: g["message"] for g in messages["subgroups"]}
    # CLDR group key -> readable name ('people-body' -> 'people & body'), as OpenMoji keys them
    self.group_names = {g["key"]: g["message"] for g in messages["groups"]}
    self.entries, self._by_name = {}, {}
    for e in data:
      for item in [e] + e.get("skins", []):
        info = {"label": item["label"], "tags": e.get("tags", []),
                "group": groups.get(e.get("group"), ""),
                "subgroup": subgroups.get(e.get("subgroup"), "")}
        self.entries[_hex(item["hexcode"])] = info
        self._index(item["label"], item["hexcode"])
        base, _, tone = item["label"].partition(": ")
        for short, long in SKIN_TONES.items():
          if tone == long:   # Fluent names 'waving-hand-light'
            self._index(f"{base} {short}", item["hexcode"])
    for hexcode, name in unicode_names.items():   # fxemoji's 'whiteflower'
      self._index(name, hexcode, overwrite=False)

  def _index(self, name: str, hexcode: str, overwrite: bool = True) -> None:
    k = compact(name)
    if k and (overwrite or k not in self._by_name):
      self._by_name[k] = _hex(hexcode)

  def hexcode(self, name: str) -> str | None:
    """'grinning-face', 'Grinning face' -> '1F600'; None when no emoji has that name."""
    return self._by_name.get(compact(name))

  def get(self, hexcode: str) -> dict | None:
    return self.entries.get(_hex(hexcode))


# --- one set --------------------------------------------------------------------

def load_set(pkg_dir: str, set_name: str) -> dict:
  check_allowed(set_name)
  with open(os.path.join(pkg_dir, "json", f"{set_name}.json")) as f:
    data = json.load(f)
  if data.get("prefix", set_name) != set_name:
    raise ValueError(f"json/{set_name}.json has prefix {data.get('prefix')!r}")
  return data


def _resolve(data: dict, name: str) -> dict | None:
  """An icon or alias as {"body", "left", "top", "width", "height", "hFlip", "vFlip", "rotate"}.

  Aliases inherit their parent's fields and compose transformations:
  flips toggle, quarter-turn rotations add (iconify's alias semantics).
  """
  icons, aliases = data["icons"], data.get("aliases", {})
  chain, seen = [], set()
  while name in aliases and name not in icons:
    if name in seen:
      return None
    seen.add(name)
    chain.append(aliases[name])
    name = aliases[name]["parent"]
  if name not in icons:
    return None
  base = {"left": data.get("left", 0), "top": data.get("top", 0),
          "width": data.get("width", DEFAULT_SIZE), "height": data.get("height", DEFAULT_SIZE),
          "hFlip": False, "vFlip": False, "rotate": 0}
  icon = {**base, **icons[name]}
  for alias in reversed(chain):
    for k in ("left", "top", "width", "height", "body"):
      if k in alias:
        icon[k] = alias[k]
    icon["hFlip"] ^= bool(alias.get("hFlip"))
    icon["vFlip"] ^= bool(alias.get("vFlip"))
    icon["rotate"] = (icon["rotate"] + alias.get("rotate", 0)) % 4
  return icon


def _num(x) -> str:
  return f"{x:g}"


def icon_svg(icon: dict) -> bytes:
  """A standalone SVG document of a resolved icon (iconify-utils iconToSVG, transforms included)."""
  left, top, width, height = icon["left"], icon["top"], icon["width"], icon["height"]
  rotation, body = icon["rotate"], icon["body"]
  transforms = []
  if icon["hFlip"]:
    if icon["vFlip"]:
      rotation += 2
    else:
      transforms += [f"translate({_num(width + left)} {_num(-top)})", "scale(-1 1)"]
      top = left = 0
  elif icon["vFlip"]:
    transforms += [f"translate({_num(-left)} {_num(height + top)})", "scale(1 -1)"]
    top = left = 0
  rotation %= 4
  if rotation == 1:
    c = height / 2 + top
    transforms.insert(0, f"rotate(90 {_num(c)} {_num(c)})")
  elif rotation == 2:
    transforms.insert(0, f"rotate(180 {_num(width / 2 + left)} {_num(height / 2 + top)})")
  elif rotation == 3:
    c = width / 2 + left
    transforms.insert(0, f"rotate(-90 {_num(c)} {_num(c)})")
  if rotation % 2:
    left, top, width, height = top, left, height, width
  if transforms:
    body = f'<g transform="{" ".join(transforms)}">{body}</g>'
  return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
          f'width="{_num(width)}" height="{_num(height)}" '
          f'viewBox="{_num(left)} {_num(top)} {_num(width)} {_num(height)}" color="#000">'
          f"{body}</svg>").encode()


def _images(data: dict):
  """(name, other names) for every distinct image: visible icons, and aliases that transform.

  An alias without a transformation is the same picture under another name:
  it becomes a caption alias of its icon, not a second image.
  """
  other = {}
  extra = []
  for alias, a in data.get("aliases", {}).items():
    if any(k in a for k in ("hFlip", "vFlip", "rotate", "body")):
      extra.append(alias)
    else:
      root = alias
      while root in data.get("aliases", {}) and root not in data["icons"]:
        root = data["aliases"][root]["parent"]
      other.setdefault(root, []).append(alias)
  for name, icon in data["icons"].items():
    if not icon.get("hidden"):
      yield name, other.get(name, [])
  for name in extra:
    yield name, []


def _attribution(data: dict, set_name: str, version: str) -> tuple[str, str]:
  info = data.get("info", {})
  lic = info.get("license", {})
  author = info.get("author", {})
  licence = lic.get("spdx") or lic.get("title") or "unknown"
  text = (f"{info.get('name', set_name)} by {author.get('name', 'unknown')}"
          f"{' (' + author['url'] + ')' if author.get('url') else ''}, "
          f"{lic.get('title', licence)}{' (' + lic['url'] + ')' if lic.get('url') else ''}; "
          f"via npm {ICONIFY}@{version} (json/{set_name}.json)")
  return licence, text


def set_records(data: dict, set_name: str, version: str, names: EmojiNames,
                texts_per_image: int = 3, seed: int = 0) -> list[dict]:
  """Records of one iconify set (see corpus_split.RECORD_FIELDS)."""
  check_allowed(set_name)
  info = data.get("info", {})
  default = (set_name, info.get("name", set_name), "",
             "emoji" if info.get("category") == "Emoji" else "icon")
  family, label, style, kind = ICONIFY_SETS.get(set_name, default)
  is_emoji = kind == "emoji"
  licence, attribution = _attribution(data, set_name, version)
  category = {}
  for cat, members in data.get("categories", {}).items():
    for m in members:
      category.setdefault(m, cat)
  hex_of = {v: k for k, v in data.get("chars", {}).items()} if is_emoji else {}
  suffixes, prefixes = list(data.get("suffixes", {})), list(data.get("prefixes", {}))
  out = []
  for name, aliases in _images(data):
    icon = _resolve(data, name)
    if icon is None or MASKED in icon["body"]:
      continue
    rec = {"key": f"iconify/{set_name}/{name}", "family": family, "source": f"iconify/{set_name}",
           "kind": kind,
           "version": version, "licence": licence, "attribution": attribution,
           "render": {"svg": icon_svg(icon)}, "set": set_name}
    cat = category.get(name, "")
    raw = name
    if is_emoji:
      hexcode = (hex_of.get(name) or names.hexcode(name) or _skin_named(names, name)
                 or names.hexcode(corpus_split.icon_stem(name))
                 or names.hexcode(re.sub(r"^flag-for-", "flag: ", name)))
      entry = names.get(hexcode) if hexcode else None
      if entry is None and set_name in NEEDS_EMOJI_NAME:
        continue
      text_name, words = (entry["label"] if entry else corpus_split.icon_stem(name)), []
      rec["concept"] = (corpus_split.emoji_concept(hexcode) if hexcode
                        else corpus_split.name_concept(text_name, names))
      if entry:
        rec["group"], rec["subgroup"] = entry["group"], entry["subgroup"]
      tags = entry["tags"] if entry else []
    else:
      text_name, words = corpus_split.split_style(name, suffixes, prefixes)
      rec["concept"] = corpus_split.name_concept(text_name, names)
      words = [STYLE_WORDS.get(w, w) for w in words]
      tags = []
    if cat:
      rec["category"] = cat
    if aliases:   # its captions say these names too: the split joins their concepts
      rec["alias_concepts"] = sorted(
          {corpus_split.icon_concept(a, names, suffixes, prefixes) for a in aliases}
          - {rec["concept"]})
    rec["captions"] = captions_alt.alt_texts(
        rec["key"], kind, text_name, raw=raw, source=label,
        style=captions_alt.readable(" ".join(dict.fromkeys(w for w in [style] + words if w))),
        aliases=aliases,
        tags=tags, category=cat, k=texts_per_image, seed=seed)
    out.append(rec)
  return out


def _skin_named(names: EmojiNames, name: str) -> str | None:
  """Emoji sets without `chars` spell tones '-light-skin-tone' or '-light': try the base."""
  for short, long in sorted(SKIN_TONES.items(), key=lambda kv: -len(kv[0])):
    for suffix in ("-" + long.replace(" ", "-"), "-" + short):
      if name.endswith(suffix):
        return names.hexcode(f"{name[:-len(suffix)]}: {long}")
  return None


def records(sets=None, cache_dir: str = npm_packages.NPM_CACHE, texts_per_image: int = 3,
            seed: int = 0, fetch: bool = True) -> list[dict]:
  """Records of every set in `sets` (default ICONIFY_SETS), deny list enforced first."""
  sets = list(ICONIFY_SETS) if sets is None else list(sets)
  for s in sets:
    check_allowed(s)
  pkg = iconify_dir(sets, cache_dir, fetch)
  version = npm_packages.package_json(pkg)["version"]
  names = EmojiNames(emojibase_dir(cache_dir, fetch))
  out = []
  for s in sets:
    out += set_records(load_set(pkg, s), s, version, names, texts_per_image, seed)
  return out
