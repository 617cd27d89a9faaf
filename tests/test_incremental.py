"""Incremental equals fresh: after a change, re-running a workdir re-runs exactly the stages
that depend on it, and gives what a fresh run of the changed config gives, bit for bit.

On a tiny pipeline (Fashion-MNIST and MNIST pairs, a random 2-layer BERT as the
caption encoder, a 1-block CLIP, n = 2 experts) run in this process: run it
once, then change one thing at a time and re-run the same workdir:

  (a) the number of experts            cluster, assign, experts, evaluate, report
  (b) one data source (MNIST dropped)  everything
  (c) the learning rate                seed, experts, dense, evaluate, report
      an expert-only field (ooc_ratio) experts, evaluate, report
  (d) one evaluation task dropped      evaluate, report

Which stages re-ran is read from their manifests (a re-run writes a new one);
the report and every eval logit must equal a fresh run's in a new workdir.
Then a kill -9 between stages after a change, and a restart.
"""

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mode_jax import provenance
from tests.helpers import demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every manifest of the stage graph, by the stage that writes it.
UNITS = {"prepare": "shards", "embed": "embed", "cluster": "cluster", "assign": "assign",
         "seed": "seed", "dense": "dense", "evaluate": "eval", "report": "report"}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
  """A random BERT whose vocabulary covers the captions (the paper's encoder is SimCSE;
  what is tested here is the stage graph, not the embedding quality)."""
  from mode_jax.data.corpus.sources import fmnist, mnist
  from mode_jax.text import random_bert
  words = set()
  for module in (fmnist, mnist):
    for text in [t for names in module.CLASSNAMES for t in names] + list(
        module.TRAIN_TEMPLATES) + list(module.EVAL_TEMPLATES):
      words |= set(text.replace("{}", " ").replace(".", " ").replace(",", " ").lower().split())
  return random_bert.write_random_bert(str(tmp_path_factory.mktemp("bert")), sorted(words),
                                       layers=1, hidden=16, heads=2)


def tiny_config(encoder, *overrides: str):
  """configs/demo.py:runlocal,n=2 shrunk further, with `key=value` overrides applied."""
  from configs import demo
  c = demo.get_config("runlocal,n=2")
  c.prepare.update(sources="fmnist,mnist", fmnist_train_limit=96, eval_limit=40,
                   mnist_limit=120)
  c.embed.update(encoder=encoder, batch_size=64)
  c.model.text.features = 16   # the random BERT's width: the locked text tower reads embed/
  c.cluster.update(m=4, iters_per_file=5, coarse_iters=10)
  c.report.update(bootstrap_samples=20, clusters=False, plots=False)
  for item in overrides:
    key, value = item.split("=", 1)
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = type(node[last])(value) if not isinstance(node[last], str) else value
  return c


def run_pipeline(config, workdir):
  from mode_jax import stages
  os.makedirs(workdir, exist_ok=True)
  stages.get("pipeline").run(config, str(workdir))


def manifests(workdir) -> dict[str, dict]:
  out = {}
  for stage, rel in UNITS.items():
    m = provenance.read(str(workdir), rel)
    if m is not None:
      out[stage] = m
  for d in sorted(glob.glob(os.path.join(workdir, "experts", "*", provenance.MANIFEST))):
    out[f"experts/{os.path.basename(os.path.dirname(d))}"] = json.load(open(d))
  return out


def reran(before: dict, after: dict) -> set[str]:
  """Units whose manifest was written again (or is new)."""
  return {u for u, m in after.items() if before.get(u) != m}


def results(workdir) -> list[list[str]]:
  with open(os.path.join(workdir, "report", "results.csv")) as f:
    return list(csv.reader(f))


def assert_same_outputs(a, b):
  """The report's numbers and every eval logit (and routing embedding) bit for bit."""
  assert results(a) == results(b)
  files = lambda w: sorted(os.path.relpath(f, w) for f in
                           glob.glob(os.path.join(w, "eval", "*", "*.np[yz]")))
  assert files(a) == files(b) and files(a)
  for rel in files(a):
    x, y = np.load(os.path.join(a, rel)), np.load(os.path.join(b, rel))
    if rel.endswith(".npz"):
      assert sorted(x.files) == sorted(y.files), rel
      for k in x.files:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f"{rel}:{k}")
    else:
      np.testing.assert_array_equal(x, y, err_msg=rel)


@pytest.fixture(scope="module")
def base(encoder, tmp_path_factory):
  demo_data.skip_without("runlocal", sources="fmnist,mnist")
  w = tmp_path_factory.mktemp("base") / "w"
  run_pipeline(tiny_config(encoder), w)
  return w


_FRESH = {}   # overrides -> a fresh run's workdir (the kill test reuses (c)'s)


def fresh_run(encoder, tmp_path, *overrides):
  if overrides not in _FRESH:
    _FRESH[overrides] = tmp_path / "fresh"
    run_pipeline(tiny_config(encoder, *overrides), _FRESH[overrides])
  return _FRESH[overrides]


def _changed(base, tmp_path, encoder, *overrides):
  """Re-runs a copy of the base workdir with `overrides`: (workdir, re-ran units), and
  checks it against a fresh run of the changed config."""
  w = tmp_path / "incremental"
  shutil.copytree(base, w)
  before = manifests(w)
  run_pipeline(tiny_config(encoder, *overrides), w)
  assert_same_outputs(w, fresh_run(encoder, tmp_path, *overrides))
  return w, reran(before, manifests(w))


TRAINING = {"seed", "dense", "experts/0", "experts/1"}
LR = ("optim.lr=0.003",)   # (c), and the change the kill test makes
AFTER_TRAINING = {"evaluate", "report"}


def test_a_more_experts_reruns_the_clustering_and_the_experts_only(base, tmp_path, encoder):
  w, got = _changed(base, tmp_path, encoder, "cluster.n=3")
  assert got == {"cluster", "assign", "experts/0", "experts/1", "experts/2"} | AFTER_TRAINING
  assert json.load(open(os.path.join(w, "experts", "0", "manifest.json")))["state"] == "done"


def test_b_one_data_source_less_reruns_everything(base, tmp_path, encoder):
  w, got = _changed(base, tmp_path, encoder, "prepare.sources=fmnist")
  assert got == set(UNITS) | TRAINING
  assert not os.path.exists(os.path.join(w, "eval", "dense", "mnist.npz"))   # moved aside
  assert glob.glob(os.path.join(w, "stale", "eval__dense__mnist.npz-*"))


def test_c_learning_rate_retrains_the_seed_and_below(base, tmp_path, encoder):
  _, got = _changed(base, tmp_path, encoder, *LR)
  assert got == TRAINING | AFTER_TRAINING


def test_c_an_expert_only_field_retrains_the_experts_only(base, tmp_path, encoder):
  _, got = _changed(base, tmp_path, encoder, "expert_stream.ooc_ratio=0.25")
  assert got == {"experts/0", "experts/1"} | AFTER_TRAINING


def test_d_one_evaluation_task_less_reruns_evaluate_and_report(base, tmp_path, encoder):
  kept = os.path.join("eval", "dense", "fashion_mnist.npz")
  stamp = os.path.getmtime(os.path.join(base, kept))
  w, got = _changed(base, tmp_path, encoder, "evaluate.tasks=fashion_mnist")
  assert got == AFTER_TRAINING
  assert os.path.getmtime(os.path.join(w, kept)) == stamp   # copytree keeps it; not redone
  assert not os.path.exists(os.path.join(w, "eval", "meta_emb", "mnist.npy"))


def test_nothing_changed_nothing_reruns(base, encoder):
  before = manifests(base)
  run_pipeline(tiny_config(encoder), base)
  assert reran(before, manifests(base)) == set()


def test_kill_9_between_stages_after_a_change_then_restart(base, tmp_path, encoder):
  """A changed learning rate, killed as the dense stage starts (seed and experts retrained,
  their manifests done), restarted: equal to a fresh run; nothing is trained twice."""
  w = tmp_path / "killed"
  shutil.copytree(base, w)
  overrides = LR
  cfg = tiny_config(encoder, *overrides)
  script = (f"import sys; sys.path.insert(0, {ROOT!r}); "
            f"from tests.test_incremental import run_pipeline, tiny_config; "
            f"run_pipeline(tiny_config({encoder!r}, *{overrides!r}), {str(w)!r})")
  proc = subprocess.Popen([sys.executable, "-u", "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  lines = []
  deadline = time.time() + 600
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("==== dense") or time.time() > deadline:
      break
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert any(l.startswith("==== dense") for l in lines), "".join(lines)[-3000:]
  before = manifests(w)
  assert before["seed"]["state"] == "done" and before["experts/1"]["state"] == "done"
  run_pipeline(cfg, w)
  assert reran(before, manifests(w)) == {"dense"} | AFTER_TRAINING
  assert_same_outputs(w, fresh_run(encoder, tmp_path, *overrides))
