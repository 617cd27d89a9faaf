"""The leak-proof split: concept keys, pHash near-duplicates, held-out families and concepts."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mode_jax.data.corpus import split as cs


class FakeEmoji:
  """The EmojiNames interface: hexcode by compact name."""

  def hexcode(self, name):
    return {"cat": "1F408", "giraffe": "1F992"}.get("".join(c for c in name.lower() if c.isalnum()))


def test_emoji_concept_drops_tones_selectors_and_gender():
  assert cs.emoji_concept("1F44B-1F3FB") == "emoji:1F44B"
  assert cs.emoji_concept("2764-fe0f") == "emoji:2764"
  assert cs.emoji_concept("1F3C3-1F3FD-200D-2642-FE0F") == "emoji:1F3C3"   # man running, tone
  assert cs.emoji_concept("1F9D1-200D-1F3A8") == "emoji:1F9D1-200D-1F3A8"   # artist stays


@pytest.mark.parametrize("name,suffixes,prefixes,stem,style", [
    ("account-circle-outline", (), (), "account-circle", ["outline"]),
    ("home-bold-duotone", (), (), "home", ["bold", "duotone"]),
    ("home-variant", (), (), "home", ["variant"]),
    ("10k-outline-rounded", ("outline-rounded", "rounded"), (), "10k", ["outline-rounded"]),
    ("baseline-home", (), ("baseline", "outline"), "home", ["baseline"]),
    ("baby-2", (), (), "baby", []),
    ("outline", (), (), "outline", []),   # nothing left: the name stays
    ("bell-off", (), (), "bell-off", []),  # 'off' changes the meaning
])
def test_split_style(name, suffixes, prefixes, stem, style):
  assert cs.split_style(name, suffixes, prefixes) == (stem, style)


def test_name_concepts_join_emoji():
  assert cs.icon_concept("cat-outline", FakeEmoji()) == "emoji:1F408"
  assert cs.name_concept("Giraffe", FakeEmoji()) == "emoji:1F992"
  assert cs.name_concept("cart-shopping") == cs.name_concept("Shopping cart")
  assert cs.name_concept("cart-shopping") == "name:cart-shopping"


def test_concept_holdout_is_seeded_by_key():
  concepts = [f"name:c{i}" for i in range(20000)]
  held = {c for c in concepts if cs.concept_heldout(c, 0.1, seed=0)}
  assert 0.09 < len(held) / len(concepts) < 0.11
  more = {c for c in concepts + ["name:new"] if cs.concept_heldout(c, 0.1, seed=0)}
  assert more - {"name:new"} == held   # adding concepts never moves another across
  assert held != {c for c in concepts if cs.concept_heldout(c, 0.1, seed=1)}


# --- pHash --------------------------------------------------------------------------

def test_dct_matches_scipy():
  fftpack = pytest.importorskip("scipy.fftpack")
  x = np.random.default_rng(0).normal(size=(32, 32))
  ref = fftpack.dct(fftpack.dct(x, axis=0), axis=1) / 4   # scipy's unnormalised DCT-II is 2x
  d = cs.dct_matrix(32)
  np.testing.assert_allclose(d @ x @ d.T, ref, atol=1e-9)


def _drawing(seed, size=64):
  """An icon-like picture: a few dark shapes on white, inside a 4 px margin (icons' padding)."""
  rng = np.random.default_rng(seed)
  im = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(im)
  for _ in range(4):
    w, h = rng.integers(10, 30, 2)
    x0, y0 = rng.integers(4, size - 4 - w), rng.integers(4, size - 4 - h)
    colour = tuple(int(c) for c in rng.integers(0, 160, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
        [int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
  return np.asarray(im)


def _near_copy(image):
  """Shifted right and down by one pixel, 20 levels brighter: a re-export of the same icon."""
  out = np.full_like(image, 255)
  out[1:, 1:] = image[:-1, :-1]
  return np.clip(out.astype(int) + 20, 0, 255).astype(np.uint8)


def test_phash_near_copy_within_threshold_different_images_not():
  images = np.stack([_drawing(s) for s in range(200)])
  h = cs.phash(images)
  h_copy = cs.phash(np.stack([_near_copy(im) for im in images]))
  same = cs.hamming(h, h_copy)
  assert np.mean(same <= cs.PHASH_MAX_DISTANCE) >= 0.98, np.bincount(same)
  assert np.median(same) == 0   # crop and contrast stretch undo the shift and brightening
  diff = cs.hamming(h[:, None], h[None, :])[np.triu_indices(len(h), 1)]
  assert diff.min() > 2 * cs.PHASH_MAX_DISTANCE   # distinct drawings are far apart
  grey = images[:3].mean(-1).astype(np.uint8)
  np.testing.assert_array_equal(cs.phash(grey), cs.phash(np.repeat(grey[..., None], 3, -1)))
  # bit 63 is the DC term, always above the median of a white-dominated drawing
  assert int(h[0]) >> 63 == 1


def test_near_duplicates_chunked():
  ref = np.array([0, 0b1111, 2**63], np.uint64)
  query = np.array([0b111, 2**63 + 1, 2**40 - 1] * 100, np.uint64)   # > one chunk
  got = cs.near_duplicates(query, ref, max_distance=1)
  np.testing.assert_array_equal(got, [True, True, False] * 100)
  assert not cs.near_duplicates(query, np.zeros(0, np.uint64), 1).any()


# --- the split ----------------------------------------------------------------------

def _records(n_concepts=60):
  """Three families drawing the same concepts; 'om' plays OpenMoji (held out)."""
  recs, images, seed = [], {}, 0
  for fam in ("noto", "mdi", "om"):
    for c in range(n_concepts):
      key = f"{fam}/{c}"
      recs.append({"key": key, "family": fam, "concept": f"name:c{c}", "captions": [f"c{c}"],
                   "render": {}, "licence": "MIT", "attribution": "", "source": fam,
                   "version": "1", "group": f"g{c % 3}", "subgroup": f"s{c % 6}",
                   "style": "color", "category": f"top{c % 2}/sub{c % 4}"})
      images[key] = _drawing(1000 + seed)
      seed += 1
  return recs, images


def test_split_holds_out_families_and_concepts_without_overlap():
  recs, images = _records()
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0,
                val_frac=0.0)
  by = {r["key"]: r for r in recs}
  train, fam, con = sp["train"], sp["heldout_family"], sp["heldout_concept"]
  assert {by[k]["family"] for k in train}.isdisjoint({by[k]["family"] for k in fam})
  assert {by[k]["concept"] for k in train}.isdisjoint({by[k]["concept"] for k in con})
  assert {by[k]["family"] for k in fam} == {"om"}
  held = {c for c in {r["concept"] for r in recs} if cs.concept_heldout(c, 0.2, 0)}
  assert {by[k]["concept"] for k in con} == held and 5 < len(held) < 20
  assert len(train) == 2 * (60 - len(held)) and sp["counts"]["train"] == len(train)
  assert sp["counts"]["by_family"]["om"]["heldout_family"] == 60


def test_split_joins_the_other_sources_concepts():
  """A concept another source trains on stays in training; one it holds out is held out."""
  recs, images = _records()
  held = sorted(c for c in {r["concept"] for r in recs} if cs.concept_heldout(c, 0.2, 0))
  free = sorted({r["concept"] for r in recs} - set(held))
  trained, also_held = held[:2], free[:3]   # e.g. Fashion-MNIST's 'dress', a clip-art title
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0,
                train_concepts=trained + ["name:absent"], heldout_concepts=also_held,
                val_frac=0.0)
  by = {r["key"]: r for r in recs}
  con = {by[k]["concept"] for k in sp["heldout_concept"]}
  assert con == (set(held) - set(trained)) | set(also_held)
  assert {by[k]["concept"] for k in sp["train"]} == (set(free) - set(also_held)) | set(trained)
  assert sp["counts"]["kept_for_other_sources"] == 2
  assert sp["counts"]["held_for_other_sources"] == 3


def test_split_drops_planted_near_duplicate_keeps_different_image():
  recs, images = _records()
  sp0 = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0, val_frac=0.0)
  victim, other = sp0["heldout_family"][:2]
  images[victim] = _near_copy(images[sp0["train"][0]])   # a re-export of a training image
  clip = _drawing(99999)
  images[other] = _near_copy(clip)   # a copy of an image of another training source
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0,
                extra_train_hashes=cs.phash(clip[None]), val_frac=0.0)
  assert sp["near_duplicates"] == sorted([victim, other])
  assert victim not in sp["heldout_family"] and victim not in sp["heldout_concept"]
  assert len(sp["heldout_family"]) == 58 and sp["counts"]["near_duplicates"] == 2
  assert sp["train"] == sp0["train"]


def test_split_skips_unrendered_and_reports_unknown_family():
  recs, images = _records(10)
  del images["noto/0"]
  sp = cs.split(recs, images, heldout_families=("om", "tuxpaint"), concept_frac=0.0)
  assert "noto/0" not in sp["train"] and sp["counts"]["rendered"] == len(recs) - 1
  assert sp["counts"]["unknown_heldout_families"] == ["tuxpaint"]


def test_validation_band_comes_from_training_families_and_leaves_the_heldout_split_alone():
  recs, images = _records()
  by = {r["key"]: r for r in recs}
  sp0 = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0, val_frac=0.0)
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0, val_frac=0.2)
  val = {c for c in {r["concept"] for r in recs} if 0.2 <= cs.concept_hash(c, 0) < 0.4}
  assert 5 < len(val) < 20 and sp0["validation"] == []
  assert {by[k]["concept"] for k in sp["validation"]} == val
  assert {by[k]["family"] for k in sp["validation"]} == {"noto", "mdi"}
  assert len(sp["validation"]) == 2 * len(val) == sp["counts"]["validation"]
  assert sp["counts"]["validation_concepts"] == len(val)
  # training gives up exactly the validation images; the held-out concepts do not move
  assert sorted(sp["train"] + sp["validation"]) == sorted(sp0["train"])
  assert sp["heldout_concept"] == sp0["heldout_concept"]
  # no held-out task shows a validation concept: OpenMoji's images of them are dropped
  assert not {by[k]["concept"] for k in sp["heldout_family"]} & val
  assert len(sp["heldout_family"]) == 60 - len(val)
  # a validation image that copies a training image is dropped like a held-out one
  victim = sp["validation"][0]
  images[victim] = _near_copy(images[sp["train"][0]])
  sp2 = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0, val_frac=0.2)
  assert victim in sp2["near_duplicates"] and victim not in sp2["validation"]


def test_validation_tasks():
  recs, images = _records()
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0, val_frac=0.2)
  by = {r["key"]: r for r in recs}
  samples, meta = cs.validation_groups(recs, sp, min_images=1)
  assert {s["key"] for s in samples} == set(sp["validation"])
  assert all(meta["classes"][s["label"]] == by[s["key"]]["group"] for s in samples)
  assert meta["kind"] == "zeroshot" and meta["templates"] == cs.EVAL_TEMPLATES
  samples, meta = cs.validation_categories(recs, sp, min_images=1)
  assert {s["key"] for s in samples} == set(sp["validation"])
  assert all(meta["classes"][s["label"]] == by[s["key"]]["category"] for s in samples)
  samples, _ = cs.concept_retrieval(recs, sp, seed=0, part="validation")
  val = {by[k]["concept"] for k in sp["validation"]}
  assert sorted(by[s["key"]]["concept"] for s in samples) == sorted(val)


# --- evaluation tasks ---------------------------------------------------------------

def test_eval_tasks():
  recs, images = _records()
  recs.append({**recs[-1], "key": "om/comp", "group": "component", "subgroup": "skin-tone"})
  images["om/comp"] = _drawing(7)
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0, val_frac=0.0)
  samples, meta = cs.openmoji_zeroshot(
      [{**r, "family": "openmoji"} if r["family"] == "om" else r for r in recs], sp,
      level="group", min_images=15)
  assert meta["classes"] == ["g0", "g1", "g2"] and meta["kind"] == "zeroshot"
  assert len(samples) == 60 and "om/comp" not in {s["key"] for s in samples}
  assert sorted({s["label"] for s in samples}) == [0, 1, 2]
  samples, meta = cs.openmoji_zeroshot(
      [{**r, "family": "openmoji"} if r["family"] == "om" else r for r in recs], sp,
      level="subgroup", min_images=11)
  assert len(meta["classes"]) == 0 and set(meta["dropped_classes"]) >= {"s0", "s5"}
  tux = [{**r, "family": "tuxpaint"} if r["family"] == "om" else r for r in recs]
  samples, meta = cs.tuxpaint_zeroshot(tux, sp, depth=1, min_images=1)
  assert meta["classes"] == ["top0", "top1"] and len(samples) == 61
  samples, meta = cs.tuxpaint_zeroshot(tux, sp, depth=2, min_images=1)
  assert len(meta["classes"]) == 4
  samples, meta = cs.concept_retrieval(recs, sp, seed=0)
  held = {r["concept"] for r in recs if r["key"] in set(sp["heldout_concept"])}
  assert len(samples) == len(held) and meta["kind"] == "retrieval"
  by = {r["key"]: r for r in recs}
  assert {by[s["key"]]["concept"] for s in samples} == held
  assert samples == cs.concept_retrieval(recs, sp, seed=0)[0]
  assert all(s["texts"] == by[s["key"]]["captions"] for s in samples)


# --- concepts joined by aliases, captions training has ----------------------------

def test_concept_groups_join_aliases_transitively():
  recs = [{"concept": "name:c", "alias_concepts": ["name:b"]},
          {"concept": "name:b", "alias_concepts": ["name:a"]},
          {"concept": "name:d"}, {"concept": "name:e", "alias_concepts": []}]
  assert cs.concept_groups(recs) == {"name:a": "name:a", "name:b": "name:a", "name:c": "name:a",
                                     "name:d": "name:d", "name:e": "name:e"}


def test_split_moves_alias_joined_concepts_as_one():
  """mdi 'timer' is also 'stopwatch': a held-out stopwatch must not train as timer's alias."""
  recs, images = _records()
  concepts = sorted({r["concept"] for r in recs})
  held = [c for c in concepts if cs.concept_heldout(c, 0.2, 0)]
  free = [c for c in concepts if c not in held]
  # one pair whose group key (the smaller) is held out, one whose group key trains
  pair_held = next((h, f) for h in held for f in free if h < f)
  pair_free = next((h, f) for h in held for f in free if f < h and not {h, f} & set(pair_held))
  for r in recs:
    if r["family"] == "noto" and r["concept"] in (pair_held[1], pair_free[1]):
      r["alias_concepts"] = [pair_held[0] if r["concept"] == pair_held[1] else pair_free[0]]
  by = {r["key"]: r for r in recs}
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0)
  train = {by[k]["concept"] for k in sp["train"]}
  con = {by[k]["concept"] for k in sp["heldout_concept"]}
  assert set(pair_held) <= con and not set(pair_held) & train
  assert set(pair_free) <= train and not set(pair_free) & con
  assert con == set(held) - {pair_free[0]} | {pair_held[1]}
  assert sp["counts"]["concept_groups"] == len(concepts) - 2
  assert sp["counts"]["largest_concept_group"] == 2


def test_split_other_sources_names_act_on_alias_groups():
  """A clip-art title held out (or trained) that is only an alias still moves its group."""
  recs, images = _records(20)
  free = sorted(c for c in {r["concept"] for r in recs} if not cs.concept_heldout(c, 0.2, 0))
  held = sorted(c for c in {r["concept"] for r in recs} if cs.concept_heldout(c, 0.2, 0))
  for r in recs:
    if r["concept"] == free[0]:
      r["alias_concepts"] = ["name:stopwatch"]
    if r["concept"] == held[0]:
      r["alias_concepts"] = ["name:dress"]
  by = {r["key"]: r for r in recs}
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0,
                train_concepts=["name:dress"], heldout_concepts=["name:stopwatch"])
  con = {by[k]["concept"] for k in sp["heldout_concept"]}
  assert free[0] in con and held[0] not in con
  assert con == set(held) - {held[0]} | {free[0]}
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0,
                train_concepts=["name:stopwatch"], heldout_concepts=["name:stopwatch"])
  assert sp["counts"]["conflicting_groups"] == 1   # training wins: the audit checks captions
  assert free[0] in {by[k]["concept"] for k in sp["train"]}


def test_concept_retrieval_drops_training_captions():
  recs, images = _records(60)
  sp = cs.split(recs, images, heldout_families=("om",), concept_frac=0.2, seed=0)
  base, _ = cs.concept_retrieval(recs, sp, seed=0)
  by = {r["key"]: r for r in recs}
  first = base[0]["key"]   # its concept's drawn record
  c = by[first]["concept"]
  for r in recs:
    r["captions"] = [f"{r['key']} one", f"{r['concept']} shared"]
  known = {f"{c}  SHARED.", f"{first} one"}   # near: case, spacing, punctuation
  keys = {k for k in known}
  from mode_jax.data.corpus import audit
  knows = lambda t: audit.caption_key(t) in {audit.caption_key(k) for k in keys}
  samples, _ = cs.concept_retrieval(recs, sp, seed=0, known=knows)
  assert len(samples) == len(base)
  got = {by[s["key"]]["concept"]: s for s in samples}
  others = sorted(r["key"] for r in recs if r["concept"] == c and r["key"] in sp["heldout_concept"])
  assert got[c]["key"] != first and got[c]["key"] in others   # its captions are all known
  assert got[c]["texts"] == [f"{got[c]['key']} one"]
  assert all(s["texts"] == by[s["key"]]["captions"] for s in samples
             if by[s["key"]]["concept"] != c)
