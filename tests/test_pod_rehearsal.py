"""Pod rehearsal: the runlocal pipeline (prepare to report) as 2 processes x 4 CPU
devices under jax.distributed on localhost, with the workdir on a GCS emulator
the test starts and stops, against 1 process x 8 devices on a local folder.

The pod is killed (kill -9 of one host, then its partner) in the middle of the
seed stage and restarted; it resumes from its last checkpoint and must give
- the same results table (scores within 0.01) and evaluation logits (1e-4) as
  the uninterrupted 1 x 8 run;
- every file written by one process only (in each of the two runs), and every
  host reading only its share (the per-host reports of embed, cluster and
  assign, and the I/O logs).

Checkpoints stay in the workdir on the bucket (<workdir>/seed/ckpt, ...): Orbax
writes them from both processes through TensorStore's GCS driver, on the
emulator of tests/helpers/gcs_emulator.py (patched where TensorStore needs GCS's
answers).
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from tests.helpers import demo_data, stores
from tests.helpers.procs import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "mode"
# 5 shards; a seed stage long enough to be killed in the middle (1.5 epochs of 15 steps,
# a checkpoint every 10; killed once step KILL_AFTER is committed), then half-epoch
# experts and dense.
# Three small sources: the rehearsal tests hosts, not the corpus (test_pipeline runs it).
# Two tasks (one zero-shot, one retrieval on the validation split, so every run also scores
# it while training, once an epoch and at its end: eval/validation.py) and a report without plots or cluster pages: the
# rehearsal tests who reads and writes what, test_report the tables and plots.
OVERRIDES = ["--config.prepare.shard_size=100", "--config.mode.total_epochs=2",
             "--config.mode.seed_epochs=1.5", "--config.prepare.sources=icons,fmnist,mnist",
             "--config.evaluate.tasks=fashion_mnist,val_icon_retrieval",
             "--config.val_every_epochs=1",
             "--config.report.bootstrap_samples=100", "--config.report.plots=False",
             "--config.report.clusters=False"]
KILL_AFTER = 10
TIMEOUT = 1500


def _base_env(**kw):
  return clean_env(MODE_JAX_BARRIER_TIMEOUT="900", **kw)


@pytest.fixture(scope="module")
def gcs():
  """A GCS emulator on localhost with one bucket; yields the env that points clients at it."""
  demo_data.skip_without("runlocal")
  pytest.importorskip("gcp_storage_emulator",
                      reason="pip install -r requirements-test.txt (gcp-storage-emulator)")
  with stores.gcs_emulator(BUCKET) as env:
    yield env


def _gcsfs():
  import gcsfs
  return gcsfs.GCSFileSystem(token="anon", project="test", skip_instance_cache=True)


def _pipeline_args(workdir):
  return [sys.executable, os.path.join(ROOT, "launch.py"), "pipeline", "--config",
          "configs/demo.py:runlocal", *OVERRIDES, "--workdir", workdir]


def _start_pod(workdir, gcs_env, tmp_path, tag):
  port = portpicker.pick_unused_port()
  procs = []
  for i in range(2):
    log = open(tmp_path / f"{tag}-{i}.log", "w")
    env = _base_env(**gcs_env, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                    JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(i), MODE_JAX_IO_LOG=str(tmp_path / f"io-{tag}"))
    procs.append(subprocess.Popen(_pipeline_args(workdir), cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def _wait(procs, tmp_path, tag):
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, (tmp_path / f"{tag}-{i}.log").read_text()[-4000:]


def _download(url, local):
  fs = _gcsfs()
  fs.get(url.removeprefix("gs://").rstrip("/") + "/", str(local), recursive=True)
  return str(local)


def _table(workdir, name):
  with open(os.path.join(workdir, "report", name)) as f:
    return list(csv.reader(f))


def _assert_same_results(a, b):
  """Same rows and columns (results and validation curves); every score within 0.01; every
  logit within 1e-4."""
  for table in ("results.csv", "validation_curves.csv"):
    _assert_same_table(*(_table(w, table) for w in (a, b)))
  files = sorted(os.path.relpath(f, a) for f in glob.glob(os.path.join(a, "eval", "*", "*.npz")))
  assert len(files) >= 10
  assert files == sorted(os.path.relpath(f, b)
                         for f in glob.glob(os.path.join(b, "eval", "*", "*.npz")))
  for f in files:
    x, y = np.load(os.path.join(a, f)), np.load(os.path.join(b, f))
    np.testing.assert_array_equal(x["labels"], y["labels"], err_msg=f)
    np.testing.assert_allclose(x["logits"], y["logits"], atol=1e-4, err_msg=f)


def _assert_same_table(ra, rb):
  assert len(ra) > 1 and ra[0] == rb[0] and [r[:2] for r in ra] == [r[:2] for r in rb]
  for x, y in zip(ra[1:], rb[1:]):
    for u, v in zip(x[1:], y[1:]):
      try:
        fu, fv = float(u), float(v)
      except ValueError:
        assert u == v
        continue
      assert abs(fu - fv) <= 0.01 + 1e-9, (x[:2], u, v)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
  w = str(tmp_path_factory.mktemp("one_by_eight"))
  r = subprocess.run(_pipeline_args(w), cwd=ROOT, capture_output=True, text=True,
                     timeout=TIMEOUT,
                     env=_base_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return w


def _committed_steps(url):
  """Seed steps Orbax has committed under <url>/seed/ckpt (on GCS: <step>/commit_success.txt)."""
  found = _gcsfs().glob(url.removeprefix("gs://") + "/seed/ckpt/*/commit_success.txt")
  return sorted(int(s) for s in (f.split("/")[-2] for f in found) if s.isdigit())


@pytest.fixture(scope="module")
def pod_run(gcs, tmp_path_factory):
  """The 2 x 4 pod on gs://, killed mid-seed once step KILL_AFTER is committed, restarted."""
  tmp = tmp_path_factory.mktemp("pod")
  url = f"gs://{BUCKET}/pod"
  procs = _start_pod(url, gcs, tmp, "first")
  deadline = time.time() + TIMEOUT
  while not (steps := _committed_steps(url)) or max(steps) < KILL_AFTER:
    assert all(p.poll() is None for p in procs), (tmp / "first-0.log").read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(1)
  procs[1].send_signal(signal.SIGKILL)   # one host dies mid-seed ...
  procs[1].wait()
  time.sleep(2)
  procs[0].send_signal(signal.SIGKILL)   # ... its partner is stopped by the scheduler
  procs[0].wait()
  # What the first run read and wrote (the restart rewrites the per-host reports of
  # the stages it finds done, with nothing read).
  before_kill = _download(url, tmp / "copy-first")
  _wait(_start_pod(url, gcs, tmp, "again"), tmp, "again")
  return url, _download(url, tmp / "copy"), tmp, before_kill


def test_two_hosts_on_gcs_killed_and_resumed_match_one_host_on_disk(local_run, pod_run):
  url, copy, tmp, _ = pod_run
  first = (tmp / "first-0.log").read_text()
  assert "==== seed" in first and "==== experts" not in first   # killed mid-seed
  assert "[seed] resumed from" in (tmp / "again-0.log").read_text()
  plan = json.load(open(os.path.join(copy, "seed", "plan.json")))
  assert plan["seed"] in _committed_steps(url)   # the seed's checkpoints, on the bucket
  # The same clustering: every host's rows counted, the same fine -> expert map.
  metas = [json.load(open(os.path.join(w, "cluster", "meta.json"))) for w in (local_run, copy)]
  assert metas[0]["n_points"] == metas[1]["n_points"] > 0
  np.testing.assert_array_equal(*(np.load(os.path.join(w, "cluster", "fine_to_expert.npy"))
                                  for w in (local_run, copy)))
  _assert_same_results(local_run, copy)


def _io_log(tmp, run):
  rows = []
  for f in glob.glob(os.path.join(tmp, f"io-{run}", "io-*.jsonl")):
    rows += [json.loads(line) for line in open(f)]
  return rows


@pytest.mark.parametrize("run", ["first", "again"])
def test_each_file_has_one_writer(pod_run, run):
  """In each run, every workdir file written through mode_jax.workdir has one writer
  process. (Orbax writes checkpoints through TensorStore and epath, not logged here:
  each process its own ocdbt.process_<i>, the primary the rest.)"""
  url, _, tmp, _ = pod_run
  rows = _io_log(tmp, run)
  assert len({r["pid"] for r in rows}) == 2
  writers = {}
  for r in rows:
    if r["op"] == "write":
      writers.setdefault(r["path"], set()).add(r["pid"])
  last = {"first": "/seed/plan.json", "again": "/report/results.csv"}[run]
  assert any(p.endswith(last) for p in writers), sorted(writers)[-10:]
  shared = {p: w for p, w in writers.items() if len(w) > 1}
  assert not shared, sorted(shared)[:10]
  assert all(p.startswith(url + "/") for p in writers), [p for p in writers
                                                         if not p.startswith(url)][:5]


def _hosts(copy, stage):
  reports = [json.load(open(f)) for f in
             sorted(glob.glob(os.path.join(copy, stage, "hosts", "process-*-of-2.json")))]
  assert [r["process"] for r in reports] == [0, 1], stage
  return reports


def test_each_host_reads_only_its_share(pod_run):
  """In the first run, which did embed, cluster and assign before the kill."""
  _, _, tmp, copy = pod_run
  train = sorted(os.path.basename(f)[:-4]
                 for f in glob.glob(os.path.join(copy, "shards", "train-*.tar")))
  assert len(train) >= 4
  # embed and assign: disjoint shares of whole files that together cover every shard once.
  for stage in ("embed", "assign"):
    reads = [{os.path.basename(f).removesuffix(".npz") for f in r["read"]}
             for r in _hosts(copy, stage)]
    assert reads[0] and reads[1], stage                   # both hosts worked
    assert not reads[0] & reads[1], stage                 # disjoint shares
    assert sorted(reads[0] | reads[1]) == train, stage    # together: every shard once
  # cluster: row blocks [lo, hi) of the embed files; together each file's rows once.
  spans = {}
  for r in _hosts(copy, "cluster"):
    assert r["rows"] > 0
    for name, lo, hi in r["read"]:
      spans.setdefault(name.removesuffix(".npz"), []).append((lo, hi, r["process"]))
  assert sorted(spans) == train
  for name, s in spans.items():
    s.sort()
    n = len(np.load(os.path.join(copy, "embed", name + ".npz"))["keys"])
    assert s[0][0] == 0 and s[-1][1] == n, (name, s)
    assert all(x[1] == y[0] for x, y in zip(s, s[1:])), (name, s)
  # The I/O logs agree: in embed and assign no host opened another host's inputs.
  rows = _io_log(tmp, "first")
  pids = sorted({r["pid"] for r in rows})
  for stage, folder in (("embed", "shards"), ("assign", "embed")):
    opened = [{os.path.basename(r["path"]).rsplit(".", 1)[0] for r in rows
               if r["pid"] == pid and r["stage"] == stage and r["op"] == "read"
               and f"/{folder}/train-" in r["path"]} for pid in pids]
    assert opened[0] and opened[1] and not opened[0] & opened[1], (stage, opened)
