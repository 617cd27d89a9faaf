"""The whole MoDE pipeline on the shrunk demo config: outputs, resume, missing inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import demo_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, timeout=900):
  env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def test_stage_without_inputs_names_the_stage_that_makes_them(tmp_path):
  for stage, needs in (("experts", "seed"), ("evaluate", "prepare"), ("cluster", "embed"),
                       ("seed", "prepare"), ("embed", "prepare"),
                       ("report", "evaluate")):
    r = launch(stage, "--config", "configs/demo.py:runlocal", "--workdir", str(tmp_path))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and last.startswith("error: missing"), (stage, r.stderr[-1500:])
    assert f"launch.py {needs}" in last or needs in last, (stage, last)


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
  demo_data.skip_without("runlocal")
  w = str(tmp_path_factory.mktemp("demo"))
  r = launch("pipeline", "--config", "configs/demo.py:runlocal", "--workdir", w)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return w, r


def test_pipeline_writes_every_stage_output(demo_workdir):
  w, r = demo_workdir
  for rel in ("shards/prepare.json", "embed/meta.json", "cluster/fine_centers.npy",
              "cluster/fine_to_expert.npy", "seed/plan.json", "report/results.md",
              "report/results.csv"):
    assert os.path.exists(os.path.join(w, rel)), rel
  assert any(f.endswith(".png") for f in os.listdir(os.path.join(w, "report")))
  header = open(os.path.join(w, "report", "results.csv")).readline()
  for col in ("dense", "expert_0", "expert_3", "uniform", "MoDE"):
    assert col in header
  tasks = {f[:-5] for f in os.listdir(os.path.join(w, "shards", "eval")) if f.endswith(".json")}
  for model in ("dense", "expert_0", "expert_1", "expert_2", "expert_3"):
    for t in tasks:
      assert os.path.exists(os.path.join(w, "eval", model, f"{t}.npz")), (model, t)


def test_experts_fork_from_the_seed_milestone(demo_workdir):
  w, _ = demo_workdir
  plan = json.load(open(os.path.join(w, "seed", "plan.json")))
  rows = [json.loads(l) for l in open(os.path.join(w, "experts", "0", "metrics.jsonl"))]
  steps = [r["step"] for r in rows if "loss" in r]
  assert min(steps) > plan["seed"] and max(steps) == plan["seed"] + plan["expert"]
  # The seed's fork step survives checkpoint clean-up.
  assert str(plan["seed"]) in os.listdir(os.path.join(w, "seed", "ckpt"))
  # Expert streams differ: experts trained on different data end up different.
  a = np.load(os.path.join(w, "eval", "expert_0", "fashion_mnist.npz"))["logits"]
  b = np.load(os.path.join(w, "eval", "expert_1", "fashion_mnist.npz"))["logits"]
  assert not np.allclose(a, b)


def test_validation_curves_are_logged_while_training_and_match_the_evaluate_stage(
    demo_workdir):
  """Each run logs val/<task> at every curve point; each expert's and dense's last point
  (scored in the training loop on the training state) equals what the evaluate stage scores
  from its final checkpoint, and the report plots them."""
  import csv
  from configs import demo
  from mode_jax.eval import curves, validation
  w, _ = demo_workdir
  plan = json.load(open(os.path.join(w, "seed", "plan.json")))
  every = validation.every(demo.get_config("runlocal"), plan["steps_per_epoch"])
  final = plan["seed"] + plan["expert"]
  val = [l.split(",")[0] for l in open(os.path.join(w, "report", "results.csv"))
         if ",validation," in l and not l.startswith("average")]
  assert val and every
  rows = list(csv.DictReader(open(os.path.join(w, "report", "validation_curves.csv"))))
  steps = lambda run: sorted({int(r["step"]) for r in rows if r["run"] == run})
  assert steps("seed") == sorted(set(range(every, plan["seed"], every)) | {plan["seed"]})
  for run in ("expert_0", "expert_3", "dense"):
    assert steps(run) == sorted(set(range(plan["seed"] + 1, final, 1))
                                & set(range(0, final, every)) | {final}), run
  assert {r["task"] for r in rows} == set(val)
  report = {r["task"]: r for r in csv.DictReader(open(os.path.join(w, "report",
                                                                   "results.csv")))}
  finals = [r for r in rows if r["run"] != "seed" and int(r["step"]) == final]
  assert len(finals) == 5 * len(val)   # 4 experts and dense
  for r in finals:
    assert float(r["score"]) == pytest.approx(float(report[r["task"]][r["run"]]), abs=1e-3)
  assert os.path.exists(os.path.join(w, "report", "validation_curves.png"))
  record = json.load(open(os.path.join(w, "experts", "2", curves.RECORD)))
  assert sorted(record["tasks"]) == sorted(val) and record["every"] == every


def test_dense_continues_the_seed_data_stream(demo_workdir):
  """The dense baseline's input picks up where the seed stopped, as one continuous run.

  Regression: it restarted the seed's stream at position 0, so its epochs replayed
  the seed's first epochs (same order, crops and captions).
  """
  from configs import demo
  from mode_jax import checkpoint as ckpt_lib
  w, _ = demo_workdir
  plan = json.load(open(os.path.join(w, "seed", "plan.json")))
  batch = demo.get_config("runlocal").batch_size
  for run, step, position in (("seed", plan["seed"], plan["seed"] * batch),
                              ("dense", plan["seed"] + plan["expert"],
                               (plan["seed"] + plan["expert"]) * batch)):
    ck = ckpt_lib.Checkpointer(os.path.join(w, run, "ckpt"), async_save=False)
    meta = ck.meta(step)
    ck.close()
    assert meta["data"]["position"] == position, (run, meta["data"])


def test_rerun_resumes_without_recomputing(demo_workdir):
  w, _ = demo_workdir
  before = os.path.getmtime(os.path.join(w, "eval", "dense", "mnist.npz"))
  r = launch("pipeline", "--config", "configs/demo.py:runlocal", "--workdir", w)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "seed: up to date" in r.stdout and "experts: up to date" in r.stdout
  assert os.path.getmtime(os.path.join(w, "eval", "dense", "mnist.npz")) == before


def test_notebook_runs_headless_on_the_demo_workdir(demo_workdir):
  nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel")
  nbclient = pytest.importorskip("nbclient", reason="pip install nbformat nbclient ipykernel")
  w, _ = demo_workdir
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "mode_demo.ipynb"), as_version=4)
  os.environ["MODE_JAX_WORKDIR"] = w
  try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
  finally:
    del os.environ["MODE_JAX_WORKDIR"]
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "routing weights:" in text and "accuracy on these 8 images" in text


@pytest.mark.parametrize("config", ["mode_l14"])   # b32, b16: the same shrunk shapes
def test_paper_configs_run_shrunk(demo_workdir, tmp_path, config):
  """`:runlocal` paper configs without shards train their seed on the demo corpus (data
  stages reused); with shards they run a researcher's data (tests/test_own_data.py)."""
  import shutil
  w, _ = demo_workdir
  mine = str(tmp_path / "w")
  shutil.copytree(w, mine, ignore=lambda d, names: [
      n for n in names if d == w and n in ("seed", "experts", "dense", "eval", "report")])
  r = launch("seed", "--config", f"configs/{config}.py:runlocal", "--workdir", mine)
  assert r.returncode == 0, r.stderr[-3000:]
  plan = json.load(open(os.path.join(mine, "seed", "plan.json")))
  assert str(plan["seed"]) in os.listdir(os.path.join(mine, "seed", "ckpt"))


def test_relative_workdir_evaluates(demo_workdir):
  """Stages resolve shard patterns inside a workdir given as a relative path."""
  w, _ = demo_workdir
  target = os.path.join(w, "eval", "dense", "mnist.npz")
  before = np.load(target)["logits"]
  os.remove(target)
  r = launch("evaluate", "--config", "configs/demo.py:runlocal",
             "--workdir", os.path.relpath(w, ROOT))
  assert r.returncode == 0, r.stderr[-3000:]
  np.testing.assert_allclose(np.load(target)["logits"], before, atol=1e-5)


def test_random_ablation_trains_experts_on_random_splits(demo_workdir, tmp_path):
  """`:ablation=random` (paper Table 5, Random-n): same sizes, data dealt out at random."""
  import shutil
  from configs import demo
  from mode_jax.data import expert_stream
  from mode_jax.train import runs
  from mode_jax.data.io import loader
  w, first = demo_workdir
  cfg = demo.get_config("runlocal")
  index = loader.load_index(runs.input_config(cfg), w, progress=False)
  streams = {}
  for ablation in ("", "random"):
    es = expert_stream.default_config()
    es.expert, es.ablation = 0, ablation
    streams[ablation] = expert_stream.expert_stream(es, w, index)
  assert streams[""].num_in_cluster == streams["random"].num_in_cluster
  assert not np.array_equal(streams[""].indices, streams["random"].indices)

  mine = str(tmp_path / "w")
  shutil.copytree(w, mine, ignore=lambda d, names: [
      n for n in names if d == w and n in ("experts", "dense", "eval", "report")])
  r = launch("experts", "--config", "configs/demo.py:runlocal,ablation=random,expert=0",
             "--workdir", mine)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"[expert 0] {streams['random'].num_in_cluster} in-cluster" in r.stdout
  assert os.listdir(os.path.join(mine, "experts", "0", "ckpt"))
  assert not os.path.exists(os.path.join(mine, "experts", "1"))   # expert=0 trains only one


def test_export_refuses_the_locked_text_tower_in_one_line(demo_workdir, tmp_path):
  """The demo's locked text tower is no Hugging Face CLIP: `export` says so before writing
  (tests/test_own_data.py exports and classifies the paper recipe's models)."""
  w, _ = demo_workdir
  out = str(tmp_path / "bundle")
  r = launch("export", "--config", "configs/demo.py:runlocal", "--workdir", w,
             f"--config.export.out={out}")
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode != 0 and last.startswith("error:") and "text.features" in last, last
  assert not os.path.exists(out)


def test_probe_then_report_tabulates_the_probe_of_these_models(demo_workdir, tmp_path,
                                                              capsys):
  """`probe` after `report` (docs/evaluation.md's order) re-reports with the probe table (the
  report said "up to date" and left it out); a probe of other weights is never tabulated."""
  import shutil
  from configs import demo
  from mode_jax.stages import report
  w, _ = demo_workdir
  mine = str(tmp_path / "w")
  shutil.copytree(w, mine)
  r = launch("probe", "--config", "configs/demo.py:runlocal", "--config.evaluate.tasks=mnist",
             "--workdir", mine)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert os.path.exists(os.path.join(mine, "probe", "mnist.json"))
  config = demo.get_config("runlocal")
  capsys.readouterr()
  report.run(config, mine)
  assert "new input probe" in capsys.readouterr().out
  assert "## Linear probe" in open(os.path.join(mine, "report", "results.md")).read()
  spec = json.load(open(os.path.join(mine, "probe", "mnist.json")))
  spec["idents"]["models"]["dense"] = "weights of another run"
  json.dump(spec, open(os.path.join(mine, "probe", "mnist.json"), "w"))
  report.run(config, mine)
  assert "## Linear probe" not in open(os.path.join(mine, "report", "results.md")).read()
