"""The leak audit (mode_jax/data/corpus/audit.py) on toy data with known answers, and on
the runlocal demo corpus, which must not leak at all."""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mode_jax.data.corpus import audit
from mode_jax.data.corpus import split as cs
from mode_jax.data.io import wds_writer
from tests.helpers import demo_data


def _drawing(seed, size=32):
  """A few dark shapes on white, inside a margin: an icon-like picture."""
  rng = np.random.default_rng(seed)
  im = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(im)
  for _ in range(3):
    w, h = rng.integers(6, 14, 2)
    x0, y0 = rng.integers(2, size - 2 - w), rng.integers(2, size - 2 - h)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
        [int(x0), int(y0), int(x0 + w), int(y0 + h)],
        fill=tuple(int(c) for c in rng.integers(0, 160, 3)))
  return np.asarray(im)


def _popcount_nearest(query, reference):
  """Reference transcription: Python ints, every pair."""
  out = []
  for q in query:
    d = [bin(int(q) ^ int(r)).count("1") for r in reference]
    out.append((min(d), d.index(min(d))) if d else (65, -1))
  return out


# --- pieces ---------------------------------------------------------------------

@pytest.mark.parametrize("a,b,same", [
    ("Timer icon.", "timer-icon", True),
    ("  TIMER \t icon ", "timer icon", True),
    ("cart_shopping", "Cart (shopping)", True),
    ("ﬁsh ＩＣＯＮ", "fish icon", True),   # NFKC: ligature and full-width letters
    ("the number 7", "the number 1", False),   # digits are kept
    ("a red apple", "a red apples", False),
    ("café", "cafe", False),   # accents are letters of their own
])
def test_caption_key(a, b, same):
  assert (audit.caption_key(a) == audit.caption_key(b)) == same


def test_nearest_matches_brute_force():
  rng = np.random.default_rng(0)
  ref = rng.integers(0, 2**63, 700, dtype=np.uint64) | np.uint64(2**63)
  ref[5] = ref[9]   # a repeated hash: the first position is reported
  query = np.concatenate([ref[[3, 9]] ^ np.uint64(0b101),
                          rng.integers(0, 2**63, 300, dtype=np.uint64)])   # > one chunk
  dist, index = cs.nearest(query, ref)
  want = _popcount_nearest(query, ref)
  assert dist.tolist() == [d for d, _ in want]
  np.testing.assert_array_equal(cs.hamming(query, ref[index]), dist)   # a nearest one (ties)
  assert dist[:2].tolist() == [2, 2] and index[:2].tolist() == [3, 5]   # repeats: the first
  dist, index = cs.nearest(query[:3], np.zeros(0, np.uint64))
  assert dist.tolist() == [65] * 3 and index.tolist() == [-1] * 3


def test_phash_images_mixes_sizes():
  big = [_drawing(s, 32) for s in range(3)]
  small = [np.asarray(Image.fromarray(_drawing(10 + s, 32)).resize((20, 20))) for s in range(2)]
  mixed = [big[0], small[0], big[1], small[1], big[2]]
  got = cs.phash_images(mixed)
  np.testing.assert_array_equal(got[[0, 2, 4]], cs.phash(np.stack(big)))
  np.testing.assert_array_equal(got[[1, 3]], cs.phash(np.stack(small)))


# --- one task -------------------------------------------------------------------

TRAIN_TEXTS = [["Timer icon", "a clock"], ["a red apple"], ["cat"]]


def _training():
  images = [_drawing(s) for s in range(3)]
  samples = [{"__key__": f"t{i}", "png": im, "json": {"texts": t}}
             for i, (im, t) in enumerate(zip(images, TRAIN_TEXTS))]
  return audit.Training().add(samples), images


def _shifted(image):
  """One pixel right and down on white: a re-export of the same picture."""
  out = np.full_like(image, 255)
  out[1:, 1:] = image[:-1, :-1]
  return out


def test_task_audit_known_answers():
  training, images = _training()
  shifted = _shifted(images[1])
  other = _drawing(99)
  held = [images[2].copy(), shifted, other]
  ref = _popcount_nearest(cs.phash(np.stack(held)), training.hashes)
  assert ref[0][0] == 0 and ref[1][0] <= cs.PHASH_MAX_DISTANCE < ref[2][0]   # the toy's premise
  texts = ["timer icon.", "Timer icon", "a green apple", "a red apple", "CAT!"]
  t = audit.task_audit(training, ["e0", "e1", "e2"], held, texts, "retrieval")
  assert t["images"] == 3 and t["images_within"] == 2 and t["images_identical"] == 1
  assert t["min_distance"] == 0
  assert t["texts"] == 5 and t["texts_in_training"] == 2 and t["texts_nearly_in_training"] == 4
  assert t["leaks"] == 2 + 4
  assert t["examples"]["images"] == [["e0", "t2", 0], ["e1", "t1", ref[1][0]]]
  assert t["examples"]["texts"] == ["timer icon.", "Timer icon", "a red apple", "CAT!"]
  # A photo data set's test images: only the identical one leaks.
  t = audit.task_audit(training, ["e0", "e1", "e2"], held, [], "zeroshot", rule="identical")
  assert t["images_within"] == 2 and t["leaks"] == 1 and t["image_rule"] == "identical"
  clean = audit.task_audit(training, ["e2"], [other], ["a green apple"], "retrieval")
  assert clean["leaks"] == 0 and clean["min_distance"] == ref[2][0]
  none = audit.task_audit(audit.Training(), ["e2"], [other], ["cat"], "retrieval")
  assert none["min_distance"] is None and none["leaks"] == 0


def test_prompts_are_templates_times_every_name():
  meta = {"classnames": [["cat", "kitty"], "dog"], "templates": ["a {}.", "the {}"]}
  assert audit.prompts(meta) == ["a cat.", "the cat", "a kitty.", "the kitty", "a dog.",
                                 "the dog"]


# --- a corpus on disk -----------------------------------------------------------

def _write_task(shards, task, samples, meta):
  paths = wds_writer.write_shards(os.path.join(shards, "eval", task + "-%05d.tar"), samples, 10)
  with open(os.path.join(shards, "eval", task + ".json"), "w") as f:
    json.dump({**meta, "shards": [f"eval/{os.path.basename(p)}" for p in paths]}, f)


def test_audit_of_shards_on_disk(tmp_path):
  training, images = _training()
  shards = str(tmp_path / "shards")
  os.makedirs(os.path.join(shards, "eval"))
  wds_writer.write_shards(os.path.join(shards, "train-%05d.tar"),
                          [{"__key__": f"t{i}", "png": im, "json": {"texts": t}}
                           for i, (im, t) in enumerate(zip(images, TRAIN_TEXTS))], 2)
  other, grey_copy = _drawing(99), images[0].copy()
  _write_task(shards, "icon_retrieval",
              [{"__key__": "r0", "png": other, "json": {"texts": ["a green apple", "a clock."]}},
               {"__key__": "r1", "png": _shifted(images[1]), "json": {"texts": ["pear"]}}],
              {"kind": "retrieval", "classnames": [], "templates": []})
  _write_task(shards, "openmoji_groups",   # sample texts are not prompts: never checked
              [{"__key__": "z0", "png": other, "json": {"texts": ["Timer icon"], "label": 0}}],
              {"kind": "zeroshot", "classnames": [["red apple"], ["pear"]], "templates": ["a {}"]})
  _write_task(shards, "mnist",
              [{"__key__": "m0", "png": grey_copy, "json": {"texts": ["x"], "label": 0}},
               {"__key__": "m1", "png": _shifted(images[1]), "json": {"texts": ["x"], "label": 1}}],
              {"kind": "zeroshot", "classnames": [["zero"], ["one"]], "templates": ["{}"]})
  a = audit.audit(shards)
  assert a["train"] == {"images": 3, "captions": 4}
  r, z, m = a["tasks"]["icon_retrieval"], a["tasks"]["openmoji_groups"], a["tasks"]["mnist"]
  assert (r["images_within"], r["texts"], r["texts_in_training"],
          r["texts_nearly_in_training"], r["leaks"]) == (1, 3, 0, 1, 2)
  assert (z["images_within"], z["texts"], z["texts_in_training"], z["leaks"]) == (0, 2, 1, 1)
  assert (m["image_rule"], m["images_within"], m["images_identical"], m["leaks"]) == \
      ("identical", 2, 1, 1)
  assert a["leaks"] == 4 and a["photo_tasks"] == ["mnist"]
  # In memory, as `prepare` calls it: the same answers.
  evals = {t: (audit._read([os.path.join(shards, p) for p in meta["shards"]]), meta)
           for t, meta in audit.eval_tasks(shards).items()}
  again = audit.audit_samples(training, evals)
  assert {**again, "wall_s": 0} == {**a, "wall_s": 0}
  assert audit.summary_line("icon_retrieval", r) == (
      "icon_retrieval: leaks 2; 2 images, 1 within the pHash threshold (nearest 0 bits), "
      "0 identical; 3 texts, 0 in training, 1 nearly")


# --- the runlocal demo corpus ------------------------------------------------------

def test_runlocal_demo_corpus_does_not_leak(tmp_path):
  """Every held-out task of `configs/demo.py:runlocal`, every source: zero leaks."""
  demo_data.skip_without("runlocal")
  from configs import demo
  from mode_jax.data.corpus import build
  marker = build.run_prepare(demo.get_config("runlocal").prepare, str(tmp_path))
  a = json.load(open(tmp_path / "shards" / audit.AUDIT_FILE))
  assert audit.AUDIT_FILE in marker["files"]
  # prepare audits what it holds in memory; read back from the shards, the same answers
  assert {**audit.audit(str(tmp_path / "shards")), "wall_s": 0} == {**a, "wall_s": 0}
  assert set(a["tasks"]) == set(marker["eval"]) >= {
      "clipart_retrieval", "clipart_categories", "icon_retrieval", "openmoji_groups",
      "tuxpaint_categories", "fashion_mnist", "mnist"}
  assert a["train"]["images"] == marker["train_total"]
  for task, t in a["tasks"].items():
    assert t["images"] == marker["eval"][task] > 0 and t["texts"] > 0, task
    assert t["leaks"] == 0 and t["texts_nearly_in_training"] == 0, (task, t["examples"])
    if t["image_rule"] == "phash":
      assert t["images_within"] == 0 and t["min_distance"] > cs.PHASH_MAX_DISTANCE, task
    else:
      assert task in audit.PHOTO_TASKS and t["images_identical"] == 0
  assert marker["leaks"] == {task: 0 for task in a["tasks"]}


# --- the report's section ------------------------------------------------------------

from tests.test_report import workdir  # noqa: E402,F401  (the report's toy workdir fixture)


def test_report_lists_the_audit_one_line_per_task(workdir):
  from mode_jax.eval import report
  cfg = report.default_config()
  cfg.plots, cfg.bootstrap_samples, cfg.clusters = False, 0, False
  assert report.leak_audit_section(workdir) == ""   # no shards/leak_audit.json: no section
  training, images = _training()
  evals = {"caps": ([{"__key__": "c0", "png": images[0], "json": {"texts": ["cat", "dog"]}}],
                    {"kind": "retrieval"}),
           "mnist": ([{"__key__": "m0", "png": _drawing(7), "json": {"texts": ["x"]}}],
                     {"kind": "zeroshot", "classnames": [["one"]], "templates": ["{}"]})}
  a = audit.audit_samples(training, evals)
  audit.write(f"{workdir}/shards", a)
  report.run_report(cfg, workdir)
  md = open(f"{workdir}/report/results.md").read()
  section = md.split("## Leak audit\n\n", 1)[1].split("\n## ", 1)[0]
  lines = [ln for ln in section.splitlines() if ln.startswith("- ")]
  assert lines == ["- " + audit.summary_line(t, a["tasks"][t]) for t in ("caps", "mnist")]
  assert lines[0].startswith("- caps: leaks 2; 1 images, 1 within")   # the image and 'cat'
  assert "Leaks in all: 2." in section and "mnist count only identical" in section
