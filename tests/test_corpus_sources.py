"""The richer corpus's sources: npm unpacking, iconify SVGs, deny list, captions, licences.

Real-package tests read a handful of files from the cached npm tarballs (or
the Debian stamps) and skip, naming the install command, when absent.
"""

import io
import json
import os
import re
import tarfile

import numpy as np
import pytest

from mode_jax.data.corpus import attribution
from mode_jax.data.corpus import captions as captions_alt
from mode_jax.data.corpus import split as corpus_split
from mode_jax.data.corpus import npm_packages
from mode_jax.data.corpus import render_cache
from mode_jax.data.corpus.sources import fluent3d as sources_fluent3d
from mode_jax.data.corpus.sources import icons as sources_icons
from mode_jax.data.corpus.sources import openmoji as sources_openmoji
from mode_jax.data.corpus.sources import tuxpaint as sources_tuxpaint
from mode_jax.data.corpus.sources.common import MissingSource


names_concept = corpus_split.name_concept


def needs_npm(*names):
  missing = [n for n in names if not npm_packages.available(n)]
  return pytest.mark.skipif(bool(missing), reason="needs `" + "; ".join(
      npm_packages.install_command(n) for n in missing) + "`")


needs_tuxpaint = pytest.mark.skipif(not os.path.isdir(sources_tuxpaint.TUXPAINT_DIR),
                                    reason=f"needs `{sources_tuxpaint.INSTALL}`")


# --- the deny list ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["twemoji", "TwEmoji", "emoji-datasource-twitter",
                                  "twemoji-v2", "openmoji"])
def test_reserved_sets_raise(name):
  with pytest.raises(sources_icons.ReservedForEvaluation):
    sources_icons.check_allowed(name)


def test_reserved_sets_raise_before_any_package_is_read(tmp_path):
  # No package in this cache: the deny list must fire first, not MissingSource.
  with pytest.raises(sources_icons.ReservedForEvaluation, match="Twemoji"):
    sources_icons.records(sets=["mdi", "twemoji"], cache_dir=str(tmp_path), fetch=False)
  fake = {"prefix": "twemoji", "icons": {"x": {"body": "<path d='M0 0h1v1z'/>"}}}
  with pytest.raises(sources_icons.ReservedForEvaluation):
    sources_icons.set_records(fake, "twemoji", "0", None)


def test_default_sets_are_allowed_and_permissive():
  for s in sources_icons.ICONIFY_SETS:
    sources_icons.check_allowed(s)
  assert not set(sources_icons.ICONIFY_SETS) & (sources_icons.DENIED_SETS | {"openmoji"})


# --- npm tarballs -------------------------------------------------------------------

def _fake_tarball(cache, name, version, files):
  path = os.path.join(cache, npm_packages.tarball_name(name, version))
  with tarfile.open(path, "w:gz") as tar:
    for rel, data in files.items():
      info = tarfile.TarInfo(rel)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def test_unpack_only_requested_members_and_incrementally(tmp_path):
  cache = str(tmp_path)
  assert npm_packages.tarball_name("@iconify/json", "2.2.535") == "iconify-json-2.2.535.tgz"
  _fake_tarball(cache, "@x/y", "1.0", {
      "package/package.json": b'{"version": "1.0"}', "package/json/a.json": b"A",
      "package/json/b.json": b"B", "package/../evil.txt": b"no"})
  pkg = npm_packages.unpacked("@x/y", ["package.json", "json/a.json"], "1.0", cache, fetch=False)
  assert npm_packages.package_json(pkg)["version"] == "1.0"
  assert os.listdir(os.path.join(pkg, "json")) == ["a.json"]
  pkg = npm_packages.unpacked("@x/y", ["json/*.json"], "1.0", cache, fetch=False)
  assert sorted(os.listdir(os.path.join(pkg, "json"))) == ["a.json", "b.json"]
  assert not os.path.exists(os.path.join(cache, "evil.txt"))
  with pytest.raises(MissingSource, match=r"npm pack @x/z@2\.0 --pack-destination"):
    npm_packages.unpacked("@x/z", ["package.json"], "2.0", cache, fetch=False)


# --- iconify SVGs -------------------------------------------------------------------

# An L in the top-left quadrant of a 16x16 box: every flip and turn moves it.
L_ICON = {"body": '<path fill="currentColor" d="M0 0h3v8h5v3H0z"/>'}


def _dark(icon):
  img = render_cache.render({"svg": sources_icons.icon_svg(icon)}, 16)
  return img.mean(-1) < 128


def test_icon_svg_aliases_flip_and_rotate_like_iconify():
  data = {"prefix": "t", "icons": {"l": L_ICON}, "aliases": {
      "l-h": {"parent": "l", "hFlip": True}, "l-v": {"parent": "l", "vFlip": True},
      "l-r1": {"parent": "l", "rotate": 1}, "l-r1-h": {"parent": "l-r1", "hFlip": True},
      "l-same": {"parent": "l"}}}
  base = _dark(sources_icons._resolve(data, "l"))
  assert base[1, 1] and not base[1, 14] and not base[14, 1]
  np.testing.assert_array_equal(_dark(sources_icons._resolve(data, "l-h")), base[:, ::-1])
  np.testing.assert_array_equal(_dark(sources_icons._resolve(data, "l-v")), base[::-1])
  np.testing.assert_array_equal(_dark(sources_icons._resolve(data, "l-r1")), np.rot90(base, -1))
  # An alias of an alias: iconify merges the flips and turns, and iconToSVG
  # draws the mirror first, then turns it.
  np.testing.assert_array_equal(_dark(sources_icons._resolve(data, "l-r1-h")),
                                np.rot90(base[:, ::-1], -1))
  images = dict(sources_icons._images(data))
  assert images["l"] == ["l-same"] and "l-same" not in images   # same picture: a name, not an image
  assert {"l-h", "l-v", "l-r1", "l-r1-h"} <= set(images)


@needs_npm(sources_icons.ICONIFY, sources_icons.EMOJIBASE)
def test_iconify_real_sets(tmp_path):
  pkg = sources_icons.iconify_dir(["mdi", "noto"])
  version = npm_packages.package_json(pkg)["version"]
  assert version == npm_packages.PINNED[sources_icons.ICONIFY]
  names = sources_icons.EmojiNames(sources_icons.emojibase_dir())

  def trimmed(set_name, keep):
    data = sources_icons.load_set(pkg, set_name)
    return {**data, "icons": {k: data["icons"][k] for k in keep},
            "aliases": {a: v for a, v in data.get("aliases", {}).items() if v["parent"] in keep}}

  mdi = sources_icons.set_records(trimmed("mdi", ["account-circle-outline", "account-circle",
                                                  "cat", "home-variant", "timer"]),
                                  "mdi", version, names)
  by = {r["key"].rsplit("/", 1)[1]: r for r in mdi}
  assert by["account-circle-outline"]["concept"] == by["account-circle"]["concept"]
  assert by["account-circle-outline"]["concept"] == "name:account-circle"
  assert by["cat"]["concept"] == "emoji:1F408"   # joins the emoji families' cat
  assert by["account-circle"]["category"] == "Account / User"
  assert by["cat"]["licence"] == "Apache-2.0" and "mdi.json" in by["cat"]["attribution"]
  assert all(f in r for r in mdi for f in corpus_split.RECORD_FIELDS)
  assert any("account circle" in c for c in by["account-circle-outline"]["captions"])
  # mdi's 'stopwatch' is an alias of 'timer' (the same picture): the stopwatch emoji's
  # concept goes with the timer's, so a held-out stopwatch is never a training caption.
  assert by["timer"]["concept"] == "name:timer"
  assert by["timer"]["alias_concepts"] == ["emoji:23F1"] == [names_concept("stopwatch", names)]
  assert by["cat"]["alias_concepts"] == ["name:cat-emoji", "name:cat-emoticon"]   # emoji-cat

  noto = sources_icons.set_records(trimmed("noto", ["grinning-face", "waving-hand",
                                                    "waving-hand-light-skin-tone"]),
                                   "noto", version, names)
  by = {r["key"].rsplit("/", 1)[1]: r for r in noto}
  assert by["grinning-face"]["concept"] == "emoji:1F600"
  assert by["grinning-face"]["group"] == "smileys & emotion"
  assert by["waving-hand-light-skin-tone"]["concept"] == by["waving-hand"]["concept"]
  assert all("grinning face" in c.lower() for c in by["grinning-face"]["captions"])
  assert by["grinning-face"]["family"] == "noto" and by["grinning-face"]["kind"] == "emoji"

  stats = {}
  recs = mdi[:3] + noto[:2]
  images = render_cache.render_records(recs, 32, str(tmp_path), workers=1, stats=stats)
  assert set(images) == {r["key"] for r in recs}
  assert all(im.shape == (32, 32, 3) and im.min() < 128 and im.max() == 255
             for im in images.values())
  again = {}
  images2 = render_cache.render_records(recs, 32, str(tmp_path), workers=1, stats=again)
  assert all(s["rendered"] == 0 for s in again.values())   # all from the cache
  assert all(np.array_equal(images[k], images2[k]) for k in images)


@needs_npm(sources_openmoji.PACKAGE)
def test_openmoji_records(tmp_path):
  recs = sources_openmoji.records()
  styles = {r["style"] for r in recs}
  assert styles == {"color", "black"} and len(recs) > 8000
  grin = next(r for r in recs if r["key"] == "openmoji/color/1F600")
  assert grin["group"] == "smileys-emotion" and grin["subgroup"] == "face-smiling"
  assert grin["concept"] == "emoji:1F600" and grin["licence"] == "CC-BY-SA-4.0"
  assert "Emily" in grin["attribution"]   # openmoji_author of 1F600
  line = next(r for r in recs if r["key"] == "openmoji/black/1F600")
  images = render_cache.render_records([grin, line], 32, str(tmp_path), workers=1)
  colour = images[grin["key"]].astype(int)
  assert (np.abs(colour[..., 0] - colour[..., 2]) > 60).any()   # yellow face
  assert np.ptp(images[line["key"]].astype(int), axis=-1).max() < 40   # line art is grey


@needs_npm(sources_fluent3d.PACKAGE, sources_icons.EMOJIBASE)
def test_fluent3d_records(tmp_path):
  stats = {}
  recs = sources_fluent3d.records(stats=stats)
  assert len(recs) > 3000 and stats["fluent3d_files"] == len(recs) + stats["fluent3d_unnamed"]
  r = next(r for r in recs if r["concept"] == "emoji:1F600")
  assert r["family"] == "fluent" and r["render"]["path"].endswith(".webp")
  image = render_cache.render_records([r], 32, str(tmp_path), workers=1)[r["key"]]
  assert image.shape == (32, 32, 3) and image[0, 0].tolist() == [255, 255, 255]


@needs_tuxpaint
def test_tuxpaint_records(tmp_path):
  recs = sources_tuxpaint.records()
  assert len(recs) > 900
  assert not any("_mirror" in r["key"] for r in recs)
  assert not any("cartoon" in r["category"].split("/") for r in recs)
  quarter = next(r for r in recs if r["key"] == "tuxpaint/symbols/money/us/coins/025quarter")
  assert quarter["category"] == "symbols/money/us/coins"
  assert any("A US 25 cent piece ($.25) called a quarter." in c for c in quarter["captions"])
  assert not any(".utf8=" in c for r in recs for c in r["captions"])
  svg = next(r for r in recs if r["render"]["path"].endswith(".svg"))
  png = next(r for r in recs if r["render"]["path"].endswith(".png"))
  images = render_cache.render_records([svg, png], 32, str(tmp_path), workers=1)
  assert len(images) == 2


def test_tuxpaint_names_and_descriptions(tmp_path):
  p = tmp_path / "x.txt"
  p.write_text("de.utf8=Eine Giraffe.\nA giraffe is tall.\nfr.utf8=Une girafe.\n")
  assert sources_tuxpaint.description(str(p)) == "A giraffe is tall."
  assert sources_tuxpaint.stamp_name("025quarter") == "quarter"
  assert sources_tuxpaint.stamp_name("blue_fedora") == "blue fedora"
  assert sources_tuxpaint.category("animals/insects/cartoon") == "animals/insects"


# --- captions -----------------------------------------------------------------------

def test_captions_vary_and_are_stable():
  names = ["account circle", "grinning face", "apple", "umbrella", "SOS button", "hourglass",
           "shopping cart", "x-ray"] * 25
  texts = {}
  for i, n in enumerate(names):
    kind = "emoji" if i % 2 else "icon"
    out = captions_alt.alt_texts(f"k{i}", kind, n, source="mdi", style="outline",
                                 tags=["happy", "smile"], category="Account / User",
                                 aliases=["user"], k=3)
    assert len(out) == 3 and len({t.lower() for t in out}) == 3
    assert out == captions_alt.alt_texts(f"k{i}", kind, n, source="mdi", style="outline",
                                         tags=["happy", "smile"], category="Account / User",
                                         aliases=["user"], k=3)
    for t in out:   # the form, with the name taken out
      texts[re.sub(re.escape(n), "#", t, flags=re.I)] = True
  assert len(texts) >= 25   # many distinct forms in use, not one template
  assert captions_alt.with_article("apple") == "an apple"
  assert captions_alt.with_article("unicorn") == "a unicorn"
  assert captions_alt.with_article("SOS button") == "an SOS button"
  assert captions_alt.with_article("people holding hands") == "people holding hands"
  stamp = captions_alt.alt_texts("s", "stamp", "giraffe", description="A giraffe is tall.", k=20)
  assert "Tux Paint stamp of a giraffe: A giraffe is tall." in stamp


def test_zero_shot_templates_are_never_caption_forms():
  forms = {re.sub(r"\{[a-zA-Z]+\}", "{}", t).lower() for _, _, t in captions_alt.FORMS}
  for t in corpus_split.EVAL_TEMPLATES:
    prefix = t.lower().split("{}")[0].strip()   # 'a picture of'
    assert not any(f.startswith(prefix) for f in forms), t


# --- licences -----------------------------------------------------------------------

def test_attribution_files(tmp_path):
  def rec(key, family, source, licence, attribution):
    return {"key": key, "family": family, "source": source, "version": "1", "licence": licence,
            "attribution": attribution}
  via, sa = "via npm openmoji@1", "CC-BY-SA-4.0"
  recs = [rec("a/1", "openmoji", "openmoji/color", sa, f"by Ann; {via} (color/svg/1.svg)"),
          rec("a/2", "openmoji", "openmoji/color", sa, f"by Bob; {via} (color/svg/2.svg)"),
          rec("a/3", "openmoji", "openmoji/color", sa, f"by Ann; {via} (color/svg/3.svg)"),
          rec("b/1", "game-icons", "iconify/game-icons", "CC-BY-3.0",
              "Game Icons by GameIcons; via npm @iconify/json@1 (json/game-icons.json)")]
  paths = attribution.write(recs, str(tmp_path))
  items = json.load(open(paths["json"]))
  om = next(e for e in items if e["family"] == "openmoji")
  assert om["images"] == 3 and om["attributions"] == [f"by Ann; {via}", f"by Bob; {via}"]
  md = open(paths["md"]).read()
  assert "| game-icons | iconify/game-icons | 1 | CC-BY-3.0 | 1 |" in md


# --- the render cache ---------------------------------------------------------------

def test_render_records_pool_cache_and_failures(tmp_path):
  def rec(i, source, svg):
    return {"key": f"{source}/{i}", "source": source, "version": "1", "render": {"svg": svg}}
  box = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8">'
         '<rect width="{}" height="4"/></svg>')
  recs = [rec(i, "a", box.format(i % 7 + 1).encode()) for i in range(40)]   # > one chunk: pool
  recs += [rec(0, "b", b"<svg"), rec(1, "b", b'<svg xmlns="http://www.w3.org/2000/svg"/>')]
  stats = {}
  images = render_cache.render_records(recs, 16, str(tmp_path), workers=2, stats=stats)
  assert len(images) == 40 and "b/0" not in images and "b/1" not in images   # broken, blank
  assert stats["b"]["failed"] == 2 and stats["a"]["rendered"] == 40
  assert (images["a/3"][:8].mean(-1) < 128).sum() == 8 * 8   # a 4x4 box at 2x scale, top left
  assert os.path.basename(stats["a"]["cache"]) == "a-1-16.npz"
  again = {}
  render_cache.render_records(recs, 16, str(tmp_path), workers=2, stats=again)
  assert again["a"]["rendered"] == again["b"]["rendered"] == 0   # failures are not retried
