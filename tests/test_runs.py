"""The training runs of a workdir (mode_jax/train/runs.py): checkpoint places, finished models."""

import os

import ml_collections
import pytest

from mode_jax import checkpoint as ckpt_lib
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.train import runs


def _config(**kw):
  return ml_collections.ConfigDict({"checkpoint_root": "", "cluster": {"n": 2}, **kw})


def test_checkpoint_root_is_namespaced_by_the_workdir(tmp_path):
  """Two experiments sharing checkpoint_root never see each other's runs (the issue: a second
  workdir resumed the first one's checkpoints and exited 0 with its logits)."""
  root = str(tmp_path / "ckpt")
  c = _config(checkpoint_root=root)
  a, b = str(tmp_path / "exp_a"), str(tmp_path / "exp_b")
  da, db = runs.ckpt_dir(c, a, "seed"), runs.ckpt_dir(c, b, "seed")
  assert da != db and da.startswith(root + "/exp_a-") and db.startswith(root + "/exp_b-")
  assert runs.ckpt_dir(c, a, "seed") == da                    # stable for one workdir
  same_name = str(tmp_path / "other" / "exp_a")                # same name, another place
  assert runs.ckpt_dir(c, same_name, "seed") != da
  assert runs.ckpt_dir(_config(), a, "experts/1") == os.path.join(a, "experts", "1", "ckpt")


def _finished_workdir(w, config):
  wd.write_json(wd.path(w, runs.PLAN), {"seed": 3, "expert": 2, "total": 5})
  for name, rel in [("dense", runs.DENSE_DIR)] + [
      (f"expert_{c}", runs.expert_rel(c)) for c in range(config.cluster.n)]:
    d = provenance.decide(w, rel, name, {}, {})
    provenance.start(w, rel, d)
    provenance.finish(w, rel, d, step=5)
    os.makedirs(os.path.join(runs.ckpt_dir(config, w, rel), "5"))


def test_finished_models_need_a_done_manifest_and_the_final_step(tmp_path):
  w, c = str(tmp_path), _config()
  _finished_workdir(w, c)
  got = runs.finished_models(c, w)
  assert sorted(got) == ["dense", "expert_0", "expert_1"]
  assert got["expert_1"].step == 5 and got["expert_1"].fingerprint == \
      provenance.read(w, runs.expert_rel(1))["fingerprint"]
  os.rmdir(os.path.join(runs.ckpt_dir(c, w, runs.expert_rel(1)), "5"))
  with pytest.raises(wd.MissingInput, match="launch.py experts"):
    runs.finished_models(c, w)


def test_no_orbax_manager_is_left_open(tmp_path, monkeypatch):
  """finished_models and seed_step leave no CheckpointManager open (the issue: they opened one
  per model and never closed it)."""
  opened, closed = [], []
  real_init, real_close = ckpt_lib.Checkpointer.__init__, ckpt_lib.Checkpointer.close
  monkeypatch.setattr(ckpt_lib.Checkpointer, "__init__",
                      lambda self, *a, **k: (opened.append(self), real_init(self, *a, **k))[1])
  monkeypatch.setattr(ckpt_lib.Checkpointer, "close",
                      lambda self: (closed.append(self), real_close(self))[1])
  w, c = str(tmp_path), _config()
  _finished_workdir(w, c)
  runs.finished_models(c, w)
  with pytest.raises(wd.MissingInput):   # the seed has no milestone here
    runs.seed_step(c, w)
  assert len(opened) == len(closed) and set(map(id, opened)) == set(map(id, closed))


def _recipe(tmp_path, lr):
  shards = tmp_path / "data"
  shards.mkdir(exist_ok=True)
  (shards / "00000.tar").write_bytes(b"pairs")
  return _config(optim={"lr": lr}, input={"shards": str(shards / "*.tar")})


def test_a_run_forked_from_a_seed_of_another_recipe_stops(tmp_path):
  """`launch.py experts` (or dense) alone after a change the seed has not seen stops, naming
  `seed`: it would fork the old seed and train on the new recipe's data (the review)."""
  w = str(tmp_path / "w")
  c = _recipe(tmp_path, 0.001)
  d = runs.decide(c, w, runs.SEED_DIR, "seed", {"data": runs.data_input(c, w)})
  provenance.start(w, runs.SEED_DIR, d)
  provenance.finish(w, runs.SEED_DIR, d, step=3)
  assert runs.current_seed(c, w).fingerprint == d.fingerprint
  with pytest.raises(wd.StaleInput, match=r"optim.lr 0.001 -> 0.003.*launch.py seed"):
    runs.current_seed(_recipe(tmp_path, 0.003), w)
  (tmp_path / "data" / "00000.tar").write_bytes(b"other pairs")
  with pytest.raises(wd.StaleInput, match=r"training data changed.*launch.py seed"):
    runs.current_seed(c, w)


def test_models_of_another_recipe_are_not_evaluated_as_this_one(tmp_path):
  """evaluate after an lr change without retraining stopped nowhere: it scored the old models
  under the new config's name. Now: StaleInput naming the stage that retrains them."""
  w = str(tmp_path / "w")
  c = _recipe(tmp_path, 0.001)
  wd.write_json(wd.path(w, runs.PLAN), {"seed": 3, "expert": 2, "total": 5})
  for rel in [runs.DENSE_DIR] + [runs.expert_rel(i) for i in range(2)]:
    d = runs.decide(c, w, rel, "x", {})
    provenance.start(w, rel, d)
    provenance.finish(w, rel, d, step=5)
    os.makedirs(os.path.join(runs.ckpt_dir(c, w, rel), "5"))
  assert sorted(runs.finished_models(c, w)) == ["dense", "expert_0", "expert_1"]
  with pytest.raises(wd.StaleInput, match=r"optim.lr 0.001 -> 0.003.*launch.py dense"):
    runs.finished_models(_recipe(tmp_path, 0.003), w)
