"""eval/validation.py and eval/curves.py: the curve cadence, the validation tasks it scores, and
the report's reading of the runs' metrics (a known answer per run, a resumed run's repeated step,
curves scored on other task data left out)."""

import json
import os

import ml_collections
import pytest

from mode_jax.eval import curves, validation


def _config(epochs, tasks=""):
  return ml_collections.ConfigDict({"val_every_epochs": epochs,
                                    "evaluate": {"tasks": tasks}})


def test_every_is_epochs_of_the_plan_in_steps():
  assert validation.every(_config(1.0), 52) == 52
  assert validation.every(_config(0.5), 52) == 26
  assert validation.every(_config(0.01), 52) == 1     # at least every step
  assert validation.every(_config(0.0), 52) == 0      # no curves
  with pytest.raises(ValueError, match="val_every_epochs"):
    validation.every(_config(-1.0), 52)


def _write_task(d, name, split=None, kind="zeroshot"):
  spec = {"kind": kind, "classnames": ["a", "b"]} if kind == "zeroshot" else {"kind": kind}
  if split:
    spec["split"] = split
  json.dump(spec, open(os.path.join(d, f"{name}.json"), "w"))


def test_validation_tasks_are_the_validation_split_within_evaluate_tasks(tmp_path):
  w = str(tmp_path)
  assert validation.validation_tasks(_config(1.0), w) == {}   # no shards/eval: no curves
  d = tmp_path / "shards" / "eval"
  d.mkdir(parents=True)
  _write_task(d, "mnist")
  _write_task(d, "val_a", "validation")
  _write_task(d, "val_b", "validation", kind="retrieval")
  assert sorted(validation.validation_tasks(_config(1.0), w)) == ["val_a", "val_b"]
  assert sorted(validation.validation_tasks(_config(1.0, "mnist,val_b"), w)) == ["val_b"]
  assert validation.hooks(_config(0.0), w, 10, "seed") == {}
  assert validation.hooks(_config(1.0, "mnist"), w, 10, "seed") == {}
  suite = _config(1.0)
  suite.evaluate.suite = "mode26"   # CLIP_benchmark suites have no validation split
  assert validation.validation_tasks(suite, w) == {}


def _jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_read_gives_every_runs_points_on_the_global_epoch_axis(tmp_path):
  w = str(tmp_path)
  assert curves.read(w, 2, {}) == ([], [])   # no plan: nothing trained
  os.makedirs(os.path.join(w, "seed"))
  json.dump({"steps_per_epoch": 10, "seed": 15, "expert": 5, "total": 20},
            open(os.path.join(w, "seed", "plan.json"), "w"))
  _jsonl(os.path.join(w, "seed", "metrics.jsonl"), [
      {"step": 5, "loss": 3.0},
      {"step": 10, "val/v": 20.0, "val/r": 1.0},
      {"step": 10, "loss": 2.0},
      {"step": 15, "val/v": 30.0, "val/r": 2.0},
      {"step": 15, "val/v": 31.0, "val/r": 2.5}])   # resumed: the later row is the run's
  _jsonl(os.path.join(w, "experts", "1", "metrics.jsonl"), [
      {"step": 20, "val/v": 40.0, "val/r": 3.0}])
  _jsonl(os.path.join(w, "dense", "metrics.jsonl"), [
      {"step": 20, "val/v": 35.0, "val/r": 2.0}])
  evaluated = {"v": "fv", "r": "fr"}
  for rel in ("seed", "experts/1", "dense"):
    json.dump({"tasks": evaluated, "every": 5},
              open(os.path.join(w, *rel.split("/"), curves.RECORD), "w"))
  rows, left_out = curves.read(w, 2, evaluated)   # expert 0 logged nothing: no line
  assert left_out == []
  got = [(r["run"], r["step"], r["epoch"], r["task"], r["score"]) for r in rows]
  assert got == [("seed", 10, 1.0, "r", 1.0), ("seed", 10, 1.0, "v", 20.0),
                 ("seed", 15, 1.5, "r", 2.5), ("seed", 15, 1.5, "v", 31.0),
                 ("expert_1", 20, 2.0, "r", 3.0), ("expert_1", 20, 2.0, "v", 40.0),
                 ("dense", 20, 2.0, "r", 2.0), ("dense", 20, 2.0, "v", 35.0)]
  head, last = curves.table(rows)
  assert head == ["run", "epoch", "r", "v"]
  assert last == [{"run": "seed", "epoch": 1.5, "r": 2.5, "v": 31.0},
                  {"run": "expert_1", "epoch": 2.0, "r": 3.0, "v": 40.0},
                  {"run": "dense", "epoch": 2.0, "r": 2.0, "v": 35.0}]
  curves.plot(str(tmp_path / "c.png"), rows, {"v": 50.0})
  assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

  # Task data changed since a run scored it (or a task no longer evaluated, or a run that
  # recorded nothing): those points are left out and named, the rest stay.
  rows, left_out = curves.read(w, 2, {"v": "fv", "r": "other data"})
  assert {r["task"] for r in rows} == {"v"} and len(rows) == 4
  assert left_out == ["seed on r", "expert_1 on r", "dense on r"]
  os.remove(os.path.join(w, "dense", curves.RECORD))
  rows, left_out = curves.read(w, 2, {"v": "fv"})
  assert {r["run"] for r in rows} == {"seed", "expert_1"}
  assert left_out == ["seed on r", "expert_1 on r", "dense on r", "dense on v"]
