"""Fingerprints, manifests and stale outputs (mode_jax/provenance.py), against known answers."""

import json
import os
import time

import pytest

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import digests


def test_file_digest_is_content_not_size_or_mtime(tmp_path):
  """A rewrite with the same size and the same modification time is still a new digest
  (the issue's defect: fingerprints of size and mtime); a copy elsewhere is the same."""
  memo = str(tmp_path / "memo")
  f = tmp_path / "a.tar"
  f.write_bytes(b"0123456789")
  first = provenance.file_digest(str(f), memo)
  st = os.stat(f)
  time.sleep(0.01)
  f.write_bytes(b"9876543210")                       # same size ...
  os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))   # ... and the same mtime
  assert provenance.file_digest(str(f), memo) != first
  assert provenance.file_digest(str(f), memo) == provenance.file_digest(str(f))   # memo = read
  g = tmp_path / "elsewhere" / "a.tar"
  g.parent.mkdir()
  g.write_bytes(b"9876543210")
  assert provenance.file_digest(str(g)) == provenance.file_digest(str(f))


def test_data_fingerprint_follows_names_and_contents_not_location(tmp_path):
  a, b = tmp_path / "x", tmp_path / "y"
  for d in (a, b):
    d.mkdir()
    (d / "00000.tar").write_bytes(b"first")
    (d / "00001.tar").write_bytes(b"second")
  fp = lambda d, names: digests.fingerprint([str(d / n) for n in names], None)
  assert fp(a, ["00000.tar", "00001.tar"]) == fp(b, ["00000.tar", "00001.tar"])
  assert fp(a, ["00000.tar", "00001.tar"]) != fp(a, ["00001.tar", "00000.tar"])   # order
  (b / "00001.tar").write_bytes(b"Second")
  assert fp(a, ["00000.tar", "00001.tar"]) != fp(b, ["00000.tar", "00001.tar"])


def test_select_takes_sections_less_how_fields_and_records_absent_ones():
  import ml_collections
  c = ml_collections.ConfigDict({"optim": {"lr": 0.1, "b1": 0.9}, "log_every": 5,
                                 "model": {"attention": "auto", "width": 8}})
  got = provenance.select(c, ["optim", "model", "init.pretrained"], ["model.attention"])
  assert got == {"optim": {"lr": 0.1, "b1": 0.9}, "model": {"width": 8}, "init.pretrained": None}


def _decide(w, fields, inputs, **kw):
  return provenance.decide(str(w), "stage", "stage", fields,
                           {k: provenance.Input(v, {"n": v[-1]}, f"the {k}")
                            for k, v in inputs.items()}, **kw)


def test_decisions_run_resume_skip_rerun(tmp_path):
  d = _decide(tmp_path, {"lr": 1}, {"data": "d1"})
  assert d.action == "run" and d.todo
  provenance.start(str(tmp_path), "stage", d)
  again = _decide(tmp_path, {"lr": 1}, {"data": "d1"})
  assert again.action == "resume"                    # killed while running: resume
  provenance.finish(str(tmp_path), "stage", d, steps=3)
  assert _decide(tmp_path, {"lr": 1}, {"data": "d1"}).action == "skip"
  assert _decide(tmp_path, {"lr": 1}, {"data": "d1"}, complete=False).action == "rerun"
  other = _decide(tmp_path, {"lr": 2}, {"data": "d2"})
  assert other.action == "rerun"
  assert other.reason == "the data changed (n 1 -> 2); config changed (lr 1 -> 2)"
  # Tuples and lists are one value (a manifest holds JSON): no false change.
  assert _decide(tmp_path, {"lr": 1, "s": (1, 2)}, {"data": "d1"}).fingerprint == \
      _decide(tmp_path, {"lr": 1, "s": [1, 2]}, {"data": "d1"}).fingerprint


def test_outputs_without_a_manifest_are_of_unknown_origin(tmp_path):
  d = _decide(tmp_path, {}, {}, outputs_exist=True)
  assert d.action == "rerun" and "unknown origin" in d.reason


def test_a_rerun_moves_stale_outputs_aside_and_never_deletes(tmp_path):
  w = str(tmp_path)
  d = _decide(tmp_path, {"lr": 1}, {})
  provenance.start(w, "stage", d)
  wd.write_text(wd.path(w, "stage", "result.txt"), "old")
  provenance.finish(w, "stage", d)
  root = tmp_path / "ckroot"
  (root / "stage" / "ckpt").mkdir(parents=True)
  new = _decide(tmp_path, {"lr": 2}, {})
  moved = provenance.start(w, "stage", new, stale=[(wd.path(w, "stage"), w),
                                                   (str(root / "stage" / "ckpt"), str(root))])
  assert [os.path.relpath(m, tmp_path) for m in moved] == [
      f"stale/stage-{d.fingerprint}", f"ckroot/stale/stage__ckpt-{d.fingerprint}"]
  assert open(os.path.join(moved[0], "result.txt")).read() == "old"
  m = json.load(open(tmp_path / "stage" / "manifest.json"))
  assert m["state"] == "running" and m["fingerprint"] == new.fingerprint
  assert not (tmp_path / "stage" / "result.txt").exists()
  with pytest.raises(ValueError, match="is not under"):
    provenance.move_aside(str(root), str(tmp_path / "elsewhere"), "x")


def test_upstream_names_the_stage_that_makes_a_missing_input(tmp_path):
  with pytest.raises(wd.MissingInput, match="launch.py cluster"):
    provenance.upstream(str(tmp_path), "cluster", "cluster", "clustering")
  d = _decide(tmp_path, {}, {})
  provenance.start(str(tmp_path), "stage", d)
  with pytest.raises(wd.MissingInput):   # running is not done
    provenance.upstream(str(tmp_path), "stage", "stage", "it")
  provenance.finish(str(tmp_path), "stage", d, m=8, n=4)
  got = provenance.upstream(str(tmp_path), "stage", "stage", "it", facts=("n",))
  assert got.fingerprint == d.fingerprint and got.facts == {"n": 4}


def test_a_new_stage_version_reruns_and_says_so(tmp_path, monkeypatch):
  """A fixed bug changes outputs of the same inputs: the stage's version is in its key."""
  d = _decide(tmp_path, {"lr": 1}, {"data": "d1"})
  provenance.start(str(tmp_path), "stage", d)
  provenance.finish(str(tmp_path), "stage", d)
  monkeypatch.setitem(provenance.VERSIONS, "stage", 2)
  again = _decide(tmp_path, {"lr": 1}, {"data": "d1"})
  assert again.action == "rerun" and again.reason == "stage code changed (version 1 -> 2)"


def test_tree_digest_covers_every_file_of_a_model_folder(tmp_path):
  """A model folder is its weights and the files read beside them (tokenizer, pooling)."""
  m = tmp_path / "model"
  (m / "1_Pooling").mkdir(parents=True)
  for name, body in [("config.json", b"{}"), ("model.safetensors", b"w"),
                     ("tokenizer.json", b"t"), ("1_Pooling/config.json", b"mean")]:
    (m / name).write_bytes(body)
  first = provenance.tree_digest(str(m))
  copy = tmp_path / "copy"
  os.rename(m, copy)
  assert provenance.tree_digest(str(copy)) == first                # a moved copy: the same
  (copy / "tokenizer.json").write_bytes(b"T")
  assert provenance.tree_digest(str(copy)) != first
  (copy / "tokenizer.json").write_bytes(b"t")
  (copy / "1_Pooling" / "config.json").write_bytes(b"cls")
  assert provenance.tree_digest(str(copy)) != first
