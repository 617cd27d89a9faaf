"""Hosts of a pod: starting jax.distributed, barriers, and each host's share of the work.

`launch.py` calls `initialize(config)` before anything touches a JAX backend,
for every stage: once a backend exists, jax.distributed.initialize() can no
longer be called. Whether to start it (`config.distributed.mode`, or the
MODE_JAX_DISTRIBUTED environment variable, which wins):

  "off"   never (one process, whatever the environment says)
  "on"    always; arguments from the config, else JAX's own cluster
          detection (Cloud TPU VM metadata, GKE, SLURM, Open MPI)
  "auto"  (default) when the environment describes several processes:
          JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID),
          a SLURM step with more than one task, Open MPI with more than one
          rank, a GKE TPU slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES
          listing several hosts) or a multislice job (MEGASCALE_*). A Cloud TPU
          VM slice started over ssh shows none of these: scripts/tpu_vm.sh
          sets MODE_JAX_DISTRIBUTED=on.
Never unconditionally: that crashes single-host GPU runs (big_vision's weak
spot). Single-host runs are unchanged.

Work splitting: `share(items)` is this process's round-robin share of a list
(files whose order does not matter), `block(n)` its contiguous block of
0..n-1 (rows whose order does, so the global array keeps the one-process
order). Shared files are written by process 0 between barriers
(`on_primary`).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Callable, Sequence, TypeVar

import ml_collections

T = TypeVar("T")
MODES = ("auto", "on", "off")
ENV_MODE = "MODE_JAX_DISTRIBUTED"


def default_config() -> ml_collections.ConfigDict:
  """config.distributed: empty fields mean "from the environment"."""
  c = ml_collections.ConfigDict()
  c.mode = "auto"
  c.coordinator_address = ""   # host:port of process 0
  c.num_processes = 0
  c.process_id = -1
  c.initialization_timeout = 300   # seconds to wait for every process to join
  c.heartbeat_timeout = 100        # seconds without a heartbeat before a process counts as dead
  return c


def _int_env(name: str, default: int = 1) -> int:
  try:
    return int(os.environ.get(name, default))
  except ValueError:
    return default


def _several(var: str) -> bool:
  return "," in os.environ.get(var, "").strip(",")


def environment_is_multiprocess() -> bool:
  """Does the environment describe a job of several processes (see module doc)?"""
  return bool(
      os.environ.get("JAX_COORDINATOR_ADDRESS")
      # Only inside an srun step: a plain `python` in an sbatch/salloc allocation
      # of several tasks (SLURM_NTASKS > 1) is one process and has no peers.
      or (os.environ.get("SLURM_JOB_ID") and _int_env("SLURM_STEP_NUM_TASKS") > 1)
      or _int_env("OMPI_COMM_WORLD_SIZE") > 1
      or _several("TPU_WORKER_HOSTNAMES") or _several("TPU_PROCESS_ADDRESSES")
      or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def _mode(cfg) -> str:
  mode = os.environ.get(ENV_MODE) or (cfg.get("mode", "auto") if cfg is not None else "auto")
  mode = {"true": "on", "1": "on", "false": "off", "0": "off"}.get(str(mode).lower(), str(mode))
  if mode not in MODES:
    raise ValueError(f"config.distributed.mode={mode!r} (or ${ENV_MODE}): use one of {MODES}")
  return mode


def _arguments(cfg) -> dict:
  """jax.distributed.initialize arguments from the config, else JAX_* variables."""
  get = (lambda k, d: cfg.get(k, d)) if cfg is not None else (lambda k, d: d)
  kw = {}
  address = get("coordinator_address", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if address:
    kw["coordinator_address"] = address
    n = get("num_processes", 0) or _int_env("JAX_NUM_PROCESSES", 0)
    pid = get("process_id", -1)
    pid = pid if pid >= 0 else _int_env("JAX_PROCESS_ID", -1)
    if n <= 0 or pid < 0:
      raise ValueError(f"coordinator {address!r} given but not the number of processes and "
                       "this process's id: set JAX_NUM_PROCESSES and JAX_PROCESS_ID (or "
                       "config.distributed.num_processes / process_id)")
    kw.update(num_processes=int(n), process_id=int(pid))
  timeout = get("initialization_timeout", 0)
  if timeout:
    kw["initialization_timeout"] = int(timeout)
  heartbeat = get("heartbeat_timeout", 0)
  if heartbeat:
    import inspect
    import jax
    if "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters:
      kw["heartbeat_timeout_seconds"] = int(heartbeat)
  return kw


def initialize(config=None) -> bool:
  """Starts jax.distributed when asked or when the environment is multi-process.

  `config` is the whole experiment config (its `distributed` field is read)
  or None. Returns True when the distributed runtime is up. Idempotent.
  """
  import jax
  cfg = config.get("distributed") if config is not None else None
  if isinstance(cfg, str):           # older configs: distributed = "auto" | "on" | "off"
    cfg = ml_collections.ConfigDict({"mode": cfg})
  mode = _mode(cfg)
  if jax.distributed.is_initialized():
    return True
  if mode == "off" or (mode == "auto" and not environment_is_multiprocess()):
    return False
  jax.distributed.initialize(**_arguments(cfg))
  return True


# ---- after initialize -----------------------------------------------------------------

def process_index() -> int:
  import jax
  return jax.process_index()


def process_count() -> int:
  import jax
  return jax.process_count()


def is_primary() -> bool:
  return process_index() == 0


_barriers = [0]
BARRIER_TIMEOUT_S = int(os.environ.get("MODE_JAX_BARRIER_TIMEOUT", 4 * 3600))


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op on one process).

  A barrier of the distributed runtime's coordination service, as Orbax's
  (not a device collective: the first cross-process collective sets up gloo
  and gave up after 30 s here when one host arrived that much later, and
  process 0 may be rendering the demo corpus for minutes). The
  timeout is MODE_JAX_BARRIER_TIMEOUT seconds (default 4 h). Every process
  passes the same barriers in the same order; a counter makes each key unique.
  """
  if process_count() == 1:
    return
  from jax._src import distributed as jax_distributed   # the client Orbax's barriers use
  _barriers[0] += 1
  client = jax_distributed.global_state.client
  if client is None:   # multi-process without jax.distributed (never on our launchers)
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f"mode_jax/{_barriers[0]}/{name}", BARRIER_TIMEOUT_S * 1000)


def abort(message: str, code: int = 1) -> None:
  """Ends this process at once after a failure, so its peers stop too.

  A normal exit runs jax.distributed's shutdown, which waits (minutes) at a
  barrier for every other process, while they wait at our barriers for this
  one: a pod that hangs after one host fails. os._exit skips it; the
  coordination service then misses this process's heartbeats and fails the
  others' barriers. On one process this is sys.exit, unless threads of
  background work are still running: a checkpoint save that failed leaves
  Orbax's threads waiting minutes for signals that never come, and the
  interpreter would wait for them at exit (os._exit then too).
  """
  busy = [t for t in threading.enumerate()
          if t is not threading.main_thread() and t.is_alive() and not t.daemon]
  if process_count() == 1 and not busy:
    raise SystemExit(message)
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def on_primary(name: str, fn: Callable[[], T]) -> T | None:
  """Runs fn on process 0 only, then a barrier: the idiom for one shared file.

  When fn raises on process 0, every process raises (with its message) after
  the barrier instead of waiting there for a process that left. That holds
  for interrupts too (KeyboardInterrupt, SystemExit): process 0 tells the
  others it stopped, passes the barrier they wait at, and re-raises the
  original exception.
  """
  if process_count() == 1:
    return fn()
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  key = f"mode_jax/status/{_barriers[0] + 1}/{name}"
  out, error = None, None
  if is_primary():
    try:
      out = fn()
    except BaseException as e:   # noqa: BLE001  (re-raised below, after telling the others)
      error = e
    try:
      if client is not None:
        client.key_value_set(key, "ok" if error is None else _status(error))
      barrier(name)
    except BaseException:
      if error is None:
        raise
      raise error   # the original stays what process 0 raises (this failure as its context)
  else:
    barrier(name)
  if error is not None:
    raise error
  if client is not None and not is_primary():
    status = client.blocking_key_value_get(key, 60_000)
    if status != "ok":
      raise RuntimeError(f"process 0 failed in {name!r}: {status}")
  return out


def _status(error: BaseException) -> str:
  """What the other processes are told: the exception's type and message."""
  text = str(error)
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def share(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
  """This process's round-robin share of `items` (order within the share kept)."""
  index = process_index() if index is None else index
  count = process_count() if count is None else count
  return list(items[index::count])


def block(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
  """[lo, hi): this process's contiguous block of range(n), as even as possible."""
  index = process_index() if index is None else index
  count = process_count() if count is None else count
  lo, hi = n * index // count, n * (index + 1) // count
  return lo, hi


def host_path(folder: str, suffix: str = ".json", process: int | None = None) -> str:
  """<folder>/hosts/process-<i>-of-<n><suffix>: a file only host i writes (default: this one)."""
  from mode_jax import workdir as wd
  i = process_index() if process is None else process
  return wd.path(folder, "hosts", f"process-{i}-of-{process_count()}{suffix}")


def host_report(folder: str, **info) -> None:
  """Writes <folder>/hosts/process-<i>-of-<n>.json: what this host read and counted."""
  from mode_jax import workdir as wd
  wd.write_json(host_path(folder), dict(info, process=process_index(), processes=process_count()))


def allgather(x):
  """Stacks a numpy array (same shape on every host) over processes: [P, ...]."""
  import numpy as np
  x = np.asarray(x)
  if process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x))


def broadcast(x):
  """Process 0's value of a numpy array / pytree, on every process."""
  if process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return multihost_utils.broadcast_one_to_all(x)
