"""The CLIP trainer: one readable `train()` over small helpers, big_vision style.

Used for the dense seed, for every data expert and for the Fashion-MNIST
demo; what differs between them is only config and input stream.

Config fields read here (see configs/ for full examples):
  model, optim, loss ("softmax" | "sigmoid"), batch_size (global), seed
  accum_steps     micro-batches per step, exact for the contrastive loss (state.py)
  schedule_steps  length of the whole planned run: defines the LR curve
  num_steps       this job trains until the global step reaches it
  mesh.data, mesh.fsdp, sharding_rules [(regex, "replicate"|"fsdp")], distributed
  log_every, ckpt_every, keep_ckpts, milestones, eval_every
  profile         (first, last): jax.profiler trace of those steps in <run_dir>/profile
  init.checkpoint, init.step   fork: resume another run's full state (params,
                               optimiser moments, step) -- how experts start
  init.continue_data           the fork also continues that run's data position
                               (the dense baseline: one continuous run)
  init.pretrained              converted public CLIP weights (params only)
  ckpt_dir                     where ckpt/ goes ("" = <run_dir>/ckpt)

Each metrics row has loss, throughput (examples/s, per device), MFU (mfu.py),
the fraction of time the device waited for input and per-device memory.

A run directory holds ckpt/ (Orbax), metrics.jsonl and tb/; it may be local
or gs:// (s3:// with ckpt_dir elsewhere, see checkpoint.py). Re-running the
same command resumes from the newest checkpoint, data position included, on
any number of hosts: the position is global (data/loader.py).
The entry point starts jax.distributed before calling train() (launch.py).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import tempfile
import threading
import time

import jax
import numpy as np
import tqdm

from mode_jax import workdir as wd
from mode_jax.models import clip as clip_lib
from mode_jax.train import checkpoint as ckpt_lib
from mode_jax.train import losses
from mode_jax.train import metrics as metrics_lib
from mode_jax.train import mfu as mfu_lib
from mode_jax.train import optimizer, sharding
from mode_jax.train import state as state_lib


class NonFiniteLoss(RuntimeError):
  pass


@dataclasses.dataclass
class TrainResult:
  step: int
  state: dict
  graphdef: object
  history: list


class Prefetcher:
  """Reads and shards the next batches in a thread while the device computes.

  The data position saved in checkpoints is the one after the last batch
  the trainer consumed, not after what the thread has read ahead, so a
  resumed run continues exactly where the trained stream stopped.
  """

  def __init__(self, data, mesh, depth: int = 2):
    self.data, self.mesh = data, mesh
    self.state = data.get_state()
    self.queue = queue.Queue(maxsize=depth)
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._produce, daemon=True)
    self.thread.start()

  def _produce(self):
    try:
      while not self.stop.is_set():
        batch = next(self.data)
        item = (sharding.global_batch(batch, self.mesh), self.data.get_state())
        while not self.stop.is_set():
          try:
            self.queue.put(item, timeout=0.1)
            break
          except queue.Full:
            pass
    except BaseException as e:  # surfaced to the trainer by the next get()
      self.queue.put(e)

  def __next__(self):
    return self.next_with_stall()[0]

  def next_with_stall(self, clock: "DeviceClock | None" = None):
    """(next batch, seconds the device sat idle waiting for it).

    Steps are dispatched asynchronously, so the trainer usually asks for the
    next batch while the device still computes earlier ones; that wait costs
    nothing. Only the part after the device finished its last dispatched step
    (`clock`) is a stall. Without a clock, all of the wait counts.
    """
    t0 = time.perf_counter()
    item = self.queue.get()
    t1 = time.perf_counter()
    if isinstance(item, BaseException):
      raise item
    batch, self.state = item
    if clock is None:
      return batch, t1 - t0
    done = clock.idle_since()
    return batch, 0.0 if done is None else max(0.0, t1 - max(t0, done))

  def get_state(self):
    return self.state

  def close(self):
    self.stop.set()
    self.thread.join(timeout=5)
    if hasattr(self.data, "close"):
      self.data.close()


class DeviceClock:
  """When did the device finish the last step dispatched to it?

  A thread blocks on each dispatched step's output (no polling, the GIL is
  released while it waits) and stamps the time it completes.
  """

  def __init__(self):
    self._pending: queue.Queue = queue.Queue()
    self._lock = threading.Lock()
    self._last = self._finished = 0
    self._finished_at = time.perf_counter()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()

  def dispatched(self, output) -> None:
    """Call right after dispatching a step, with one of its outputs."""
    with self._lock:
      self._last += 1
      self._pending.put((self._last, output))

  def idle_since(self) -> float | None:
    """perf_counter() time the last dispatched step finished; None while it runs."""
    with self._lock:
      return self._finished_at if self._finished == self._last else None

  def _watch(self):
    while True:
      item = self._pending.get()
      if item is None:
        return
      seq, output = item
      try:
        jax.block_until_ready(output)
      except Exception:  # the trainer sees the failure itself
        pass
      with self._lock:
        self._finished, self._finished_at = seq, time.perf_counter()

  def close(self):
    self._pending.put(None)
    self._thread.join(timeout=5)


# ==== validation: every check that can fail before compute, once =====================

def validate(config, run_dir: str, n_devices: int | None = None) -> None:
  """ValueError naming the config field (or the run directory) that cannot train.

  train() calls it first, before building anything; stages call nothing else.
  """
  check_config(config, n_devices)
  check_run_dir(config, run_dir)


def check_config(config, n_devices: int | None = None) -> None:
  """The config alone (no I/O): `pipeline` runs it before its first stage too."""
  n_devices = n_devices or jax.device_count()
  clip_lib.validate(config.model)
  optimizer.validate(config.optim)
  sharding.mesh_shape(config.mesh, n_devices)
  losses.check_name(config.loss)
  if config.loss == "sigmoid" and not config.model.logit_bias:
    raise ValueError("config.model.logit_bias must be True with config.loss='sigmoid'")
  if config.accum_steps < 1:
    raise ValueError(f"config.accum_steps={config.accum_steps} must be >= 1")
  per_step = n_devices * config.accum_steps
  if config.batch_size <= 0 or config.batch_size % per_step:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{n_devices} devices x config.accum_steps={config.accum_steps} "
                     "(every micro-batch is split over all devices)")
  if config.batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  if not 0 < config.num_steps <= config.schedule_steps:
    raise ValueError(f"config.num_steps={config.num_steps} must be in "
                     f"(0, config.schedule_steps={config.schedule_steps}]")
  for name in ("log_every", "ckpt_every", "keep_ckpts"):
    if config[name] < 1:
      raise ValueError(f"config.{name}={config[name]} must be >= 1")
  if config.get("eval_every", 0) < 0:
    raise ValueError(f"config.eval_every={config.eval_every} must be >= 0 (0 = never)")
  profile = tuple(config.get("profile", ()))
  if profile and not (len(profile) == 2 and 0 <= profile[0] < profile[1]):
    raise ValueError(f"config.profile={profile}: use (first, last) steps with first < last, "
                     "or () for no trace")
  for pattern, rule in config.sharding_rules:
    if rule not in ("replicate", "fsdp"):
      raise ValueError(f"config.sharding_rules: rule {rule!r} for {pattern!r} is not "
                       "'replicate' or 'fsdp'")


def check_run_dir(config, run_dir: str) -> None:
  """Checkpoints can go where configured and the run directory is writable."""
  ckpt_lib.check_directory(ckpt_dir(config, run_dir))
  try:
    wd.makedirs(run_dir)
    # One probe per process: hosts share the workdir and must not remove each other's.
    probe = wd.path(run_dir, f".write_probe.{jax.process_index()}.{os.getpid()}")
    wd.write_bytes(probe, b"ok")
    wd.remove(probe)
  except OSError as e:
    raise ValueError(f"workdir {run_dir!r} is not writable: {e.strerror or e}") from None


def ckpt_dir(config, run_dir: str) -> str:
  return config.get("ckpt_dir") or wd.path(run_dir, "ckpt")


# ==== mesh, model, optimiser and the compiled step ======================================

def _build(config):
  """(mesh, graphdef, abstract state, shardings, init_fn, jitted train step)."""
  mesh = sharding.make_mesh(config.mesh)
  graphdef, tx, abstract, shardings, init_fn = state_lib.build(
      config.model, config.optim, schedule_steps=config.schedule_steps, mesh=mesh,
      rules=[tuple(r) for r in config.sharding_rules], seed=config.seed)
  schedule = optimizer.lr_schedule(config.optim, config.schedule_steps)
  step = state_lib.make_train_step(graphdef, tx, schedule, shardings, mesh, config.loss,
                                   accum_steps=config.accum_steps)
  return mesh, graphdef, abstract, shardings, init_fn, step


def _compile(train_step, state, batch, desc: str):
  """Compiles the step once, ahead of the loop, so the first timed window excludes it.

  Returns (compiled step, its per-device memory from XLA's analysis).
  """
  t0 = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  memory = mfu_lib.compiled_memory(compiled)
  if jax.process_index() == 0:
    print(f"[{desc}] step compiled in {time.perf_counter() - t0:.1f}s; per device: "
          + ", ".join(f"{k[:-4]} {v:.3f} GiB" for k, v in memory.items()), flush=True)
  return compiled, memory


# ==== checkpoint: resume, else fork, else pretrained, else fresh ========================

def _restore_fork(config, abstract, shardings):
  """(state, meta) of another run (the seed) at config.init.step: how an expert starts.

  config.init.checkpoint is that run's checkpoint directory (its ckpt/).
  """
  ck = ckpt_lib.Checkpointer(config.init.checkpoint)
  step = config.init.step if config.init.get("step", -1) >= 0 else ck.latest_step()
  if step is None or step not in ck.all_steps():
    raise FileNotFoundError(f"config.init.checkpoint={config.init.checkpoint!r} has no step "
                            f"{step} (has {ck.all_steps()})")
  state, meta = ck.restore(ckpt_lib.abstract_with_shardings(abstract, shardings), step)
  ck.close()
  return state, meta


def _load_pretrained(config, state, shardings):
  from flax import nnx
  from mode_jax.models import convert
  _, params = convert.load_pretrained(config.init.pretrained,
                                      scan_layers=config.model.get("scan_layers", False))
  new = jax.tree.map(lambda x: x, state["params"])
  nnx.replace_by_pure_dict(new, params)
  return jax.device_put(dict(state, params=new), shardings)


def _initial_state(config, ck, data, abstract, shardings, init_fn, desc):
  """The state to train from; moves `data` to the saved position when there is one."""
  if ck.latest_step() is not None:
    state, meta = ck.restore(ckpt_lib.abstract_with_shardings(abstract, shardings))
    if meta.get("data") is not None:
      data.set_state(meta["data"])
    print(f"[{desc}] resumed from {ck.directory} step {int(state['step'])}")
    return state
  if config.init.get("checkpoint"):
    state, meta = _restore_fork(config, abstract, shardings)
    if config.init.get("continue_data"):
      data.set_state(meta["data"])
    print(f"[{desc}] forked from {config.init.checkpoint} at step {int(state['step'])}"
          + (f", data position {meta['data'].get('position')}"
             if config.init.get("continue_data") else ""))
    return state
  state = init_fn()
  if config.init.get("pretrained"):
    state = _load_pretrained(config, state, shardings)
  return state


# ==== metrics: one device_get per window, MFU, memory ===================================

class _Window:
  """The steps since the last log line, turned into one metrics row.

  Throughput excludes compilation (the step is compiled before the first
  window starts). MFU = model FLOPs per step (mfu.clip_train_flops) x steps/s
  over the devices' peak; memory is what the runtime reports for this host's
  first device (GPU/TPU) and XLA's static analysis of the step.
  """

  def __init__(self, config, step_memory: dict):
    self.batch_size = config.batch_size
    self.n_devices = jax.device_count()
    self.flops = mfu_lib.clip_train_flops(config.model, config.loss, config.batch_size)
    self.peak, _ = mfu_lib.peak_flops()
    self.static = {"step_mem_gib": step_memory["total_gib"]} if step_memory else {}
    self.metrics, self.wait_s, self.t0 = [], 0.0, time.perf_counter()

  def add(self, metrics, stall: float) -> None:
    self.metrics.append(metrics)
    self.wait_s += stall

  def row(self, step: int, ck) -> dict:
    """Fetches the window's metrics; NonFiniteLoss if any step was skipped as non-finite."""
    fetched = jax.device_get(self.metrics)
    dt = time.perf_counter() - self.t0
    bad = next((x for x in fetched if not bool(x["finite"])), None)
    if bad is not None:
      raise NonFiniteLoss(
          f"non-finite loss ({float(bad['loss'])}) or gradient at or before step {step}; "
          f"stopped, last good checkpoint kept in {ck.directory} (step {ck.latest_step()})")
    n = len(fetched)
    row = {k: float(np.mean([x[k] for x in fetched])) for k in fetched[-1] if k != "finite"}
    row.update(steps_per_s=n / dt, examples_per_s=n * self.batch_size / dt,
               examples_per_s_per_device=n * self.batch_size / dt / self.n_devices,
               data_wait_frac=self.wait_s / dt,
               mfu=mfu_lib.mfu(self.flops, n / dt, self.n_devices, self.peak),
               **self.static, **mfu_lib.memory_in_use())
    self.metrics, self.wait_s, self.t0 = [], 0.0, time.perf_counter()
    return row


# ==== profiler: a jax.profiler trace of config.profile's steps ==========================

class _Profiler:
  """Traces the updates after global step `first` up to step `last` into <run_dir>/profile.

  Each host writes its own trace (profile/process-i with several processes);
  an object-store run directory gets the files when the trace stops.
  """

  def __init__(self, profile, run_dir: str):
    self.first, self.last = tuple(profile) if profile else (None, None)
    target = wd.path(run_dir, "profile")
    if jax.process_count() > 1:
      target = wd.path(target, f"process-{jax.process_index()}")
    self.target, self.active = target, False
    self.local = tempfile.mkdtemp(prefix="mode_jax_trace_") if wd.is_remote(target) else target

  def before(self, step: int) -> None:
    if step == self.first:
      os.makedirs(self.local, exist_ok=True)
      jax.profiler.start_trace(self.local)
      self.active = True

  def after(self, step: int, output) -> None:
    if self.active and step >= self.last:
      self.stop(output)

  def stop(self, output=None) -> None:
    if not self.active:
      return
    if output is not None:
      jax.block_until_ready(output)
    jax.profiler.stop_trace()
    self.active = False
    if self.local != self.target:
      wd.upload_tree(self.local, self.target)
      shutil.rmtree(self.local, ignore_errors=True)
    if jax.process_index() == 0:
      print(f"[profile] trace of steps {self.first + 1}..{self.last} in {self.target}")


# ==== evaluators ========================================================================

def _evaluate(evaluators, graphdef, state, step: int) -> dict:
  model = state_lib.model_from_state(graphdef, state)
  out = {}
  for evaluator in evaluators:
    out.update(evaluator(model, step))
  return out


# ==== the loop ==========================================================================

def train(config, run_dir: str, *, input_fn, evaluators=(), progress: bool = True,
          desc: str = "train") -> TrainResult:
  """Trains until config.num_steps; returns the final state.

  input_fn(config, mesh) -> iterator of per-process numpy batches
    {"image": uint8[b, H, W, 3] (or normalised float32), "tokens": int32[b, L]}
    with get_state() / set_state(dict) so the data position is checkpointed.
  evaluators: callables (model, step) -> dict of metrics, run every eval_every.
  """
  validate(config, run_dir)
  mesh, graphdef, abstract, shardings, init_fn, train_step = _build(config)
  data = input_fn(config, mesh)
  ck = ckpt_lib.Checkpointer(ckpt_dir(config, run_dir), keep=config.keep_ckpts,
                             milestones=tuple(config.get("milestones", ())))
  state = _initial_state(config, ck, data, abstract, shardings, init_fn, desc)
  step = start = int(state["step"])
  if step >= config.num_steps:
    ck.close()
    if hasattr(data, "close"):
      data.close()
    return TrainResult(step=step, state=state, graphdef=graphdef, history=[])

  data = Prefetcher(data, mesh)
  batch, stall = data.next_with_stall()
  compiled, step_memory = _compile(train_step, state, batch, desc)
  writer = metrics_lib.MetricWriter(run_dir, start_step=start)   # drops rows past `start`
  window = _Window(config, step_memory)
  profiler = _Profiler(config.get("profile", ()), run_dir)
  clock = DeviceClock()
  history = []
  bar = tqdm.tqdm(total=config.num_steps, initial=start, desc=desc, unit="step",
                  disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
  try:
    while step < config.num_steps:
      if batch is None:   # already global and sharded; a stall = the device idle for input
        batch, stall = data.next_with_stall(clock)
      profiler.before(step)
      with jax.profiler.StepTraceAnnotation(desc, step_num=step):
        state, m = compiled(state, batch)
      batch = None
      clock.dispatched(m["loss"])
      window.add(m, stall)
      step += 1
      last = step == config.num_steps
      profiler.after(step, m["loss"])
      # A checkpoint step also flushes the metrics, so nothing is saved unchecked.
      if step % config.log_every == 0 or step % config.ckpt_every == 0 or last:
        row = window.row(step, ck)
        history.append({"step": step, **row})
        writer.write(step, row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", ex_s=f"{row['examples_per_s']:.0f}",
                        mfu=f"{row['mfu']:.1%}", wait=f"{row['data_wait_frac']:.0%}")
      bar.update(1)
      if evaluators and config.get("eval_every") and (step % config.eval_every == 0 or last):
        ev = _evaluate(evaluators, graphdef, state, step)
        writer.write(step, ev)
        history.append({"step": step, **ev})
        bar.write(f"[{desc}] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.items()))
      if step % config.ckpt_every == 0 or last:
        ck.save(step, state, {"data": data.get_state(), "step": step}, force=last)
        writer.flush()
  finally:
    profiler.stop()
    clock.close()
    bar.close()
    ck.close()
    writer.close()
    data.close()
  return TrainResult(step=step, state=state, graphdef=graphdef, history=history)
