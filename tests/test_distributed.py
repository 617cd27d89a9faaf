"""A 2-process jax.distributed job on localhost CPU matches the 1-process run."""

import os
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from mode_jax import distributed
from tests.helpers.procs import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "helpers", "distributed_worker.py")


def test_two_processes_match_one(tmp_path):
  single = subprocess.run(
      [sys.executable, WORKER, str(tmp_path / "one"), str(tmp_path / "one.npz")],
      env=clean_env(LOCAL_DEVICES="4"), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, WORKER, str(tmp_path / "two"), str(tmp_path / "two.npz")],
      env=clean_env(LOCAL_DEVICES="2", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]

  a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
  assert len(a["losses"]) == 3
  np.testing.assert_allclose(a["losses"], b["losses"], atol=1e-5)
  keys = [k for k in a.files if k.startswith("arr_")]
  assert keys and keys == [k for k in b.files if k.startswith("arr_")]
  for k in keys:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5)


FAILING_PRIMARY = """
import jax
jax.config.update("jax_num_cpu_devices", 1)
from mode_jax import distributed
distributed.initialize(None)
def write():
  raise ValueError("disk full")
try:
  distributed.on_primary("shared file", write)
except Exception as e:
  print("raised:", type(e).__name__, e, flush=True)
distributed.barrier("after")   # both processes still agree on barrier keys
print("done", flush=True)
"""


def test_a_failure_on_the_primary_stops_every_process():
  """on_primary: process 0's error reaches the others instead of a hang at the barrier."""
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, "-c", FAILING_PRIMARY],
      env=clean_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), MODE_JAX_BARRIER_TIMEOUT="120"),
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert "raised: ValueError disk full" in outs[0] and "done" in outs[0], outs[0]
  assert "raised: RuntimeError process 0 failed in 'shared file': ValueError: disk full" \
      in outs[1] and "done" in outs[1], outs[1]


class FakeCoordination:
  """The coordination service's key-value store and barriers, shared by the simulated
  processes of one job (the methods on_primary and barrier call)."""

  def __init__(self):
    self.kv, self.barriers = {}, []

  def key_value_set(self, key, value):
    self.kv[key] = value

  def blocking_key_value_get(self, key, timeout_ms):
    if key not in self.kv:   # the real client waits timeout_ms, then raises
      raise TimeoutError(f"{key} was never set")
    return self.kv[key]

  def wait_at_barrier(self, key, timeout_ms):
    self.barriers.append(key)


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(3)],
                         ids=["KeyboardInterrupt", "SystemExit"])
def test_an_interrupt_on_the_primary_reaches_the_others(monkeypatch, stop):
  """on_primary: Ctrl-C (or sys.exit) in process 0's fn tells the other processes, which stop
  with a message, instead of leaving them at the barrier; process 0 re-raises the original."""
  from jax._src import distributed as jax_distributed
  service = FakeCoordination()
  monkeypatch.setattr(jax_distributed.global_state, "client", service)
  monkeypatch.setattr(distributed, "process_count", lambda: 2)
  monkeypatch.setattr(distributed, "_barriers", [0])

  def interrupted():
    raise stop

  monkeypatch.setattr(distributed, "process_index", lambda: 0)
  with pytest.raises(type(stop)) as e:
    distributed.on_primary("shared file", interrupted)
  assert e.value is stop
  assert service.barriers == ["mode_jax/1/shared file"]   # where process 1 waits: passed

  monkeypatch.setattr(distributed, "process_index", lambda: 1)   # process 1 of the same job
  monkeypatch.setattr(distributed, "_barriers", [0])
  with pytest.raises(RuntimeError, match=f"process 0 failed in 'shared file': "
                                         f"{type(stop).__name__}"):
    distributed.on_primary("shared file", lambda: pytest.fail("fn runs on process 0 only"))
  assert service.barriers == ["mode_jax/1/shared file"] * 2


FAILING_HOST = """
import time
import jax
import ml_collections
jax.config.update("jax_num_cpu_devices", 1)
from mode_jax import distributed
cfg = ml_collections.ConfigDict({"distributed": distributed.default_config()})
cfg.distributed.heartbeat_timeout = 10
distributed.initialize(cfg)
if jax.process_index() == 1:
  distributed.abort("error: host 1 fails")   # what launch.py does on any error
distributed.barrier("never passed")
print("passed the barrier", flush=True)
"""


def test_one_host_failing_stops_the_other():
  """After distributed.abort on one host the others stop (missed heartbeats), not hang."""
  port = portpicker.pick_unused_port()
  t0 = time.time()
  procs = [subprocess.Popen(
      [sys.executable, "-c", FAILING_HOST],
      env=clean_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)),
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert procs[1].returncode == 1 and "error: host 1 fails" in outs[1][1]
  assert procs[0].returncode != 0 and "passed the barrier" not in outs[0][0]
  assert "stopped sending heartbeats" in outs[0][1] or "task died" in outs[0][1], outs[0][1][-2000:]
  assert time.time() - t0 < 240
