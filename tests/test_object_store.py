"""Workdirs on object stores served on localhost: S3 (moto's server) and GCS (an emulator).

Every stage but the checkpoints lives on the bucket. Orbax cannot write s3://
(TensorStore's OCDBT kvstore spec is built from a local path: see
mode_jax/checkpoint.py), so the seed stage stops before any compute with one line
naming --config.checkpoint_root, and runs once that points at a local folder.
On gs:// Orbax checkpoints save and restore from one and from two processes
(tests/helpers/gcs_emulator.py: what the emulator needed), and a save that
fails in Orbax's background thread ends the run with one line, not a hang.
"""

import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from mode_jax import workdir as wd
from tests.helpers import demo_data, stores
from tests.helpers.procs import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "mode"
CKPT_WORKER = os.path.join(ROOT, "tests", "helpers", "checkpoint_worker.py")
MALFORMED = "Malformed StorageGeneration"


@pytest.fixture(scope="module")
def s3():
  pytest.importorskip("moto", reason="pip install -r requirements-test.txt (moto[server])")
  with stores.moto_s3(BUCKET) as env:
    yield env


@pytest.fixture(scope="module")
def gcs():
  pytest.importorskip("gcp_storage_emulator",
                      reason="pip install -r requirements-test.txt (gcp-storage-emulator)")
  with stores.gcs_emulator(BUCKET) as env:
    yield env


@pytest.fixture
def gcs_unpatched():
  """The emulator as released (downloads without generation headers), for one test:
  it points this process's clients at itself while it runs, over `gcs`."""
  pytest.importorskip("gcp_storage_emulator",
                      reason="pip install -r requirements-test.txt (gcp-storage-emulator)")
  with stores.gcs_emulator(BUCKET, patched=False) as env:
    yield env


def test_fs_layer_round_trips_on_s3(s3):
  base = f"s3://{BUCKET}/unit"
  wd.write_json(wd.path(base, "a", "m.json"), {"x": 1})
  wd.save_npz(wd.path(base, "a", "b.npz"), emb=np.arange(6, dtype=np.float32).reshape(2, 3))
  wd.write_bytes(wd.path(base, "a", "c.bin"), b"0123456789")
  assert wd.read_json(wd.path(base, "a", "m.json")) == {"x": 1}
  np.testing.assert_array_equal(wd.load_npz(wd.path(base, "a", "b.npz"))["emb"],
                                np.arange(6).reshape(2, 3))
  assert sorted(wd.listdir(wd.path(base, "a"))) == ["b.npz", "c.bin", "m.json"]
  assert wd.glob(wd.path(base, "a", "*.npz")) == [wd.path(base, "a", "b.npz")]
  assert wd.isdir(wd.path(base, "a")) and not wd.exists(wd.path(base, "nope"))
  with wd.open(wd.path(base, "a", "c.bin"), "rb") as f:   # ranged read, as the shard reader
    f.seek(3)
    assert f.read(4) == b"3456"
  with pytest.raises(wd.MissingInput, match="launch.py embed"):
    wd.require(base, "embed/meta.json", "embed")


def launch(*args, env):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900,
                        env=clean_env(**env))


def test_stages_run_on_s3_with_checkpoints_on_a_local_folder(s3, tmp_path):
  demo_data.skip_without("runlocal")
  w = f"s3://{BUCKET}/w"
  cfg = ["--config", "configs/demo.py:runlocal", "--config.prepare.sources=clipart,fmnist,mnist"]
  # One launch: the data stages run on the bucket, then the seed stops before any work.
  r = launch("pipeline", *cfg, "--workdir", w, env=s3)
  lines = r.stderr.strip().splitlines()
  assert "==== assign" in r.stdout and "==== seed" in r.stdout, r.stderr[-3000:]
  assert r.returncode != 0 and lines[-1].startswith("error: checkpoints cannot go to s3://")
  assert "--config.checkpoint_root" in lines[-1]
  assert wd.exists(wd.path(w, "cluster", "fine_centers.npy"))
  assert wd.glob(wd.path(w, "assign", "train-*.npz"))
  assert not wd.exists(wd.path(w, "seed", "plan.json"))   # stopped before any work

  ckpt = tmp_path / "ckpt"
  r = launch("seed", *cfg, "--workdir", w, f"--config.checkpoint_root={ckpt}", env=s3)
  assert r.returncode == 0, r.stderr[-3000:]
  from mode_jax.train import runs
  space = runs.workdir_namespace(w)   # checkpoint_root/<this workdir's name and hash>
  assert os.listdir(ckpt) == [space] and space.startswith("w-")
  assert any(n.isdigit() for n in os.listdir(ckpt / space / "seed" / "ckpt"))
  assert wd.exists(wd.path(w, "seed", "plan.json"))       # everything else on the bucket
  assert wd.exists(wd.path(w, "seed", "metrics.jsonl"))


def test_orbax_checkpoints_save_and_restore_on_gcs(gcs):
  """One process: Orbax (TensorStore's GCS driver) writes and reads gs:// checkpoints."""
  import jax
  import jax.numpy as jnp
  from mode_jax import checkpoint as ckpt_lib
  d = f"gs://{BUCKET}/ckpt"
  state = {"params": {"w": jnp.arange(12.0).reshape(3, 4)}, "step": jnp.asarray(7)}
  ck = ckpt_lib.Checkpointer(d, async_save=False)
  ck.save(7, state, {"data": {"position": 224}, "step": 7}, force=True)
  ck.close()
  ck = ckpt_lib.Checkpointer(d, async_save=False)
  assert ck.latest_step() == 7 and ck.meta()["data"] == {"position": 224}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), state)
  restored, _ = ck.restore(abstract)
  np.testing.assert_array_equal(restored["params"]["w"], state["params"]["w"])
  ck.close()
  ck = ckpt_lib.Checkpointer(d, async_save=False)   # what evaluate does: parameters only
  np.testing.assert_array_equal(ck.restore_params(abstract)["w"], state["params"]["w"])
  ck.close()
  assert wd.exists(wd.path(d, "7", "commit_success.txt"))


@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_exists_sees_a_file_another_host_wrote_after_a_listing(store, request):
  """gcsfs and s3fs cache listings per instance, without expiry: after a listing,
  exists() of a file another host wrote since answers False from the cache. Ours
  (workdir) and the instances epath makes for Orbax must ask the store."""
  import fsspec
  from etils import epath
  request.getfixturevalue(store)
  proto = {"gcs": "gs", "s3": "s3"}[store]
  d = f"{proto}://{BUCKET}/listing-{store}"
  wd.write_bytes(wd.path(d, "a"), b"1")
  cached = fsspec.filesystem(proto, use_listings_cache=True, skip_instance_cache=True)
  assert sorted(wd.basename(p) for p in cached.ls(d)) == ["a"]
  assert wd.listdir(d) == ["a"]
  assert [p.name for p in epath.Path(d).iterdir()] == ["a"]

  other_host = fsspec.filesystem(proto, skip_instance_cache=True)
  other_host.pipe_file(f"{d}/b", b"2")

  assert not cached.exists(f"{d}/b")            # fsspec's default: the stale listing
  assert wd.exists(wd.path(d, "b"))
  assert epath.Path(d, "b").exists()            # Orbax's polls go through epath
  assert wd.listdir(d) == ["a", "b"]


@pytest.mark.parametrize("patched", [False, True])
def test_tensorstore_reads_generations_from_the_emulator(patched, request):
  """The root cause, on TensorStore's GCS driver alone: without the download's
  x-goog-generation header it takes generation 0 and refuses its next conditional
  read; with it (and GCS's preconditions) the read answers "unchanged" and a write
  conditioned on an old generation is refused, as on GCS."""
  import tensorstore as ts
  request.getfixturevalue("gcs" if patched else "gcs_unpatched")
  kv = ts.KvStore.open({"driver": "gcs", "bucket": BUCKET, "path": "kv/"}).result()
  first = kv.write("k", b"one").result()
  second = kv.write("k", b"two").result()
  read = kv.read("k").result()
  assert read.value == b"two"
  if not patched:
    assert read.stamp.generation != second.generation
    with pytest.raises(ValueError, match=MALFORMED):
      kv.read("k", if_not_equal=read.stamp.generation).result()
    return
  assert read.stamp.generation == second.generation
  assert kv.read("k", if_not_equal=read.stamp.generation).result().state == "unspecified"
  refused = kv.write("k", b"three", if_equal=first.generation).result()
  assert refused.generation == b""                # condition failed: nothing written
  assert kv.read("k").result().value == b"two"


FAILING_SAVES = """
import sys
import jax, jax.numpy as jnp
from mode_jax import checkpoint as ckpt_lib
from mode_jax import distributed
state = {"params": {f"w{i:02d}": jnp.full((3, 4), float(i)) for i in range(40)},
         "step": jnp.asarray(0)}
ck = ckpt_lib.Checkpointer(sys.argv[1])
try:
  for step in range(1, 6):
    ck.save(step, state, {"step": step}, force=True)
  ck.close()
except ckpt_lib.CheckpointError as e:
  ck.close()                    # after the error: no wait, no second raise
  distributed.abort(f"error: {e}")   # what launch.py does
"""


def test_a_failed_background_save_raises_one_line():
  """Orbax saves in a background thread; when that save fails (here: an emulator that
  refuses every write of step 2, 403) the next save raises CheckpointError with one line
  naming the step, the directory and the cause, and the process exits. (In a process of
  its own, as launch.py runs, with no TensorStore or Orbax state left by the other tests.
  The released emulator's own failure, test_tensorstore_reads_generations_from_the_emulator,
  fails saves only when TensorStore re-reads a manifest: not on a loaded machine.)"""
  pytest.importorskip("gcp_storage_emulator",
                      reason="pip install -r requirements-test.txt (gcp-storage-emulator)")
  d = f"gs://{BUCKET}/failing"
  with stores.gcs_emulator(BUCKET, deny="failing/2") as env:
    # A hang bound, not a speed limit: the job takes seconds; before abort skipped them,
    # Orbax's threads held the exit for 5 minutes after a failure on a loaded machine.
    r = subprocess.run([sys.executable, "-c", FAILING_SAVES, d], cwd=ROOT, capture_output=True,
                       text=True, timeout=180, env=clean_env(**env))
  assert r.returncode == 1, r.stderr[-3000:]
  # Orbax's and TensorStore's threads print tracebacks of the failure around it.
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, r.stderr[-3000:]
  assert errors[0].startswith("error: checkpoint save of step 2 ") and \
      f" to {d} failed: " in errors[0]
  assert "Forbidden" in errors[0] and "tensorstore_spec" not in errors[0], errors[0]


def _two_hosts(env, directory):
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, CKPT_WORKER, directory],
      env=clean_env(**env, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  return [(p.communicate(timeout=900)[0], p.returncode) for p in procs]


def test_two_processes_save_and_restore_on_gcs(gcs):
  """2 processes x 40 arrays (sharded over both) x 3 asynchronous saves to gs://,
  then both restore the last two steps on another mesh and check every shard."""
  outs = _two_hosts(gcs, f"gs://{BUCKET}/two-hosts")
  for out, code in outs:
    assert code == 0 and out.rstrip().endswith("restored"), out[-3000:]
    assert MALFORMED not in out
  assert wd.exists(f"gs://{BUCKET}/two-hosts/3/commit_success.txt")


def test_a_failed_save_on_a_pod_stops_both_hosts():
  """The hang this replaces: the primary's save failed in the background while the
  other host polled for its files for 10 minutes. Now the host whose save failed
  ends the job with one `error:` line and the other stops with it. The emulator refuses
  every write of step 2 (403), so the save fails on every run: the released emulator's
  failure (test_a_failed_background_save_raises_one_line) depends on timing."""
  pytest.importorskip("gcp_storage_emulator",
                      reason="pip install -r requirements-test.txt (gcp-storage-emulator)")
  with stores.gcs_emulator(BUCKET, deny="failing-pod/2") as env:
    outs = _two_hosts(env, f"gs://{BUCKET}/failing-pod")
  assert all(code != 0 for _, code in outs), [(code, o[-2500:]) for o, code in outs]
  errors = [line for out, _ in outs for line in out.splitlines()
            if line.startswith("error: checkpoint save of step 2 ")]
  assert errors and all("Forbidden" in e for e in errors), \
      [o[-2000:] for o, _ in outs]
