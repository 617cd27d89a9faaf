"""launch.py and configs: argument parsing, one-line errors, a runlocal training run."""

import os
import subprocess
import sys

import pytest

from configs import common
from mode_jax.data.corpus import fmnist_stream as fmnist_demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, timeout=600):
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def test_parse_arg_types_and_bare_keys():
  a = common.parse_arg("n=8,runlocal,lr=0.5,name=x", n=4, runlocal=False, lr=1.0, name="")
  assert (a.n, a.runlocal, a.lr, a.name) == (8, True, 0.5, "x")
  with pytest.raises(ValueError, match="unknown config argument 'bogus'"):
    common.parse_arg("bogus=1", n=4)


def test_unknown_stage_prints_usage():
  r = launch("frobnicate", "--config", "configs/fmnist_clip.py:runlocal", "--workdir", "/tmp/x")
  assert r.returncode != 0 and "stages:" in r.stderr


@pytest.mark.parametrize("override,named", [
    ("--config.model.variant=Q/7", "config.model.variant"),
    ("--config.optim.lr=-1", "config.optim.lr"),       # once trained with a negative LR
    ("--config.nonexistent=3", "--config.nonexistent"),   # once an AttributeError traceback
    ("--config.optim.lrr=1", "--config.optim.lrr"),
])
def test_bad_override_stops_before_compute_with_one_line(tmp_path, override, named):
  r = launch("train", "--config", "configs/fmnist_clip.py:runlocal", override,
             "--workdir", str(tmp_path))
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert named in lines[-1] and lines[-1].startswith("error:")
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "train" / "ckpt")


@pytest.mark.skipif(not os.path.exists(fmnist_demo.FMNIST_DIR), reason=fmnist_demo.INSTALL)
def test_runlocal_train_runs_and_resumes(tmp_path):
  r = launch("train", "--config", "configs/fmnist_clip.py:runlocal", "--workdir", str(tmp_path))
  assert r.returncode == 0, r.stderr[-2000:]
  acc = float(r.stdout.strip().splitlines()[-1].split(":")[1])
  assert 0.0 <= acc <= 1.0
  assert os.path.exists(tmp_path / "config.json")
  assert os.path.exists(tmp_path / "train" / "metrics.jsonl")
  # Re-running the finished command trains nothing more; a changed recipe trains afresh
  # (before provenance it resumed the old run's last step and reported its accuracy).
  r2 = launch("train", "--config", "configs/fmnist_clip.py:runlocal", "--workdir", str(tmp_path))
  assert r2.returncode == 0 and "train: up to date" in r2.stdout, r2.stdout
  r3 = launch("train", "--config", "configs/fmnist_clip.py:runlocal", "--config.optim.lr=0.003",
              "--workdir", str(tmp_path))
  assert r3.returncode == 0, r3.stderr[-2000:]
  assert "config changed (optim.lr 0.001 -> 0.003)" in r3.stdout, r3.stdout
  assert "resumed" not in r3.stdout + r3.stderr
  assert os.listdir(tmp_path / "stale")


def test_fmnist_idx_reader_matches_known_facts():
  if not os.path.exists(fmnist_demo.FMNIST_DIR):
    pytest.skip(fmnist_demo.INSTALL)
  x, y = fmnist_demo.load_split("t10k")
  assert x.shape == (10000, 28, 28) and y.shape == (10000,)
  assert sorted(set(y.tolist())) == list(range(10)) and (y == 9).sum() == 1000
  # Known first test labels of Fashion-MNIST: ankle boot, pullover, trouser, trouser.
  assert y[:4].tolist() == [9, 2, 1, 1]


def test_train_and_eval_templates_are_disjoint():
  assert not set(fmnist_demo.TRAIN_TEMPLATES) & set(fmnist_demo.EVAL_TEMPLATES)
