"""Workdirs on object stores served on localhost: S3 (moto's server) and GCS (an emulator).

Every stage but the checkpoints lives on the bucket. Orbax cannot write s3://
(TensorStore's OCDBT kvstore spec is built from a local path: see
train/checkpoint.py), so the seed stage stops before any compute with one line
naming --config.checkpoint_root, and runs once that points at a local folder.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from mode_jax import workdir as wd
from tests.helpers import demo_data, stores
from tests.helpers.procs import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "mode"


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
  for stage in ("prepare", "embed", "cluster", "assign"):
    r = launch(stage, *cfg, "--workdir", w, env=s3)
    assert r.returncode == 0, (stage, r.stderr[-3000:])
  assert wd.exists(wd.path(w, "cluster", "fine_centers.npy"))
  assert wd.glob(wd.path(w, "assign", "train-*.npz"))

  r = launch("seed", *cfg, "--workdir", w, env=s3)
  lines = r.stderr.strip().splitlines()
  assert r.returncode != 0 and lines[-1].startswith("error: checkpoints cannot go to s3://")
  assert "--config.checkpoint_root" in lines[-1]
  assert not wd.exists(wd.path(w, "seed", "plan.json"))   # stopped before any work

  ckpt = tmp_path / "ckpt"
  r = launch("seed", *cfg, "--workdir", w, f"--config.checkpoint_root={ckpt}", env=s3)
  assert r.returncode == 0, r.stderr[-3000:]
  assert any(n.isdigit() for n in os.listdir(ckpt / "seed" / "ckpt"))
  assert wd.exists(wd.path(w, "seed", "plan.json"))       # everything else on the bucket
  assert wd.exists(wd.path(w, "seed", "metrics.jsonl"))


def test_orbax_checkpoints_save_and_restore_on_gcs(gcs):
  """One process: Orbax (TensorStore's GCS driver) writes and reads gs:// checkpoints."""
  import jax
  import jax.numpy as jnp
  from mode_jax.train import checkpoint as ckpt_lib
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
