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
any number of hosts: the position is global (data/io/loader.py). The steps a
killed run logged after its newest checkpoint are recomputed, and their old
metrics rows dropped (metrics.py). The entry point starts jax.distributed before calling train() (launch.py).

Beside the loop, one job per module: checks.py (validation), initial_state.py
(resume / fork / pretrained / fresh), prefetch.py (input thread),
device_clock.py (when steps finish), window.py (metrics rows, NaN policy),
progress.py (the bar), profiler.py, metrics.py (JSONL + TensorBoard).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax

from mode_jax import checkpoint as ckpt_lib
from mode_jax.train import metrics as metrics_lib
from mode_jax.train import mfu as mfu_lib
from mode_jax.train import optimizer, sharding
from mode_jax.train import progress as progress_lib
from mode_jax.train import state as state_lib
from mode_jax.train.checks import check_config, check_run_dir, ckpt_dir, validate
from mode_jax.train.device_clock import DeviceClock
from mode_jax.train.initial_state import initial_state
from mode_jax.train.prefetch import Prefetcher
from mode_jax.train.profiler import Profiler
from mode_jax.train.window import MetricsWindow, NonFiniteLoss

# The public API; the checks, the input thread, the clock and the NaN error live beside it.
__all__ = ["train", "TrainResult", "validate", "check_config", "check_run_dir", "ckpt_dir",
           "NonFiniteLoss", "Prefetcher", "DeviceClock"]


@dataclasses.dataclass
class TrainResult:
  step: int
  state: dict
  graphdef: object
  history: list


@dataclasses.dataclass(frozen=True)
class Cadence:
  """Which hooks run once the global step is `step`; the last step runs them all."""
  num_steps: int
  log_every: int
  ckpt_every: int
  eval_every: int   # 0 = never

  @classmethod
  def of(cls, config) -> "Cadence":
    return cls(config.num_steps, config.log_every, config.ckpt_every,
               config.get("eval_every", 0))

  def last(self, step: int) -> bool:
    return step == self.num_steps

  def checkpoint(self, step: int) -> bool:
    return step % self.ckpt_every == 0 or self.last(step)

  def log(self, step: int) -> bool:
    """A checkpoint step also logs: its metrics pass the NaN check, nothing is saved unchecked."""
    return step % self.log_every == 0 or self.checkpoint(step)

  def evaluate(self, step: int) -> bool:
    return bool(self.eval_every) and (step % self.eval_every == 0 or self.last(step))


# ==== mesh, model, optimiser and the compiled step ======================================

def _build(config):
  """(mesh, graphdef, abstract state, shardings, init_fn, jitted train step).

  Built once per process for the fields that define them: the seed, the experts and
  dense of one `pipeline` share one mesh, one step function and its compiled program.
  """
  key = json.dumps([config.model.to_dict(), config.optim.to_dict(), config.schedule_steps,
                    config.mesh.to_dict(), [list(r) for r in config.sharding_rules],
                    config.seed, config.loss, config.accum_steps], sort_keys=True, default=str)
  return _build_cached(key, config)


_BUILT: dict = {}


def _build_cached(key: str, config):
  if key not in _BUILT:
    mesh = sharding.make_mesh(config.mesh)
    graphdef, tx, abstract, shardings, init_fn = state_lib.build(
        config.model, config.optim, schedule_steps=config.schedule_steps, mesh=mesh,
        rules=[tuple(r) for r in config.sharding_rules], seed=config.seed)
    schedule = optimizer.lr_schedule(config.optim, config.schedule_steps)
    step = state_lib.make_train_step(graphdef, tx, schedule, shardings, mesh, config.loss,
                                     accum_steps=config.accum_steps)
    _BUILT[key] = (mesh, graphdef, abstract, shardings, init_fn, step)
  return _BUILT[key]


_COMPILED: dict = {}


def _compile(train_step, state, batch, desc: str):
  """Compiles the step once, ahead of the loop, so the first timed window excludes it
  (once per process and input layout: a later run of the same build reuses it).

  Returns (compiled step, its per-device memory from XLA's analysis).
  """
  t0 = time.perf_counter()
  key = (id(train_step), str(jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding),
                                          (state, batch))))
  if key not in _COMPILED:
    _COMPILED[key] = train_step.lower(state, batch).compile()
  compiled = _COMPILED[key]
  memory = mfu_lib.compiled_memory(compiled)
  if jax.process_index() == 0:
    print(f"[{desc}] step compiled in {time.perf_counter() - t0:.1f}s; per device: "
          + ", ".join(f"{k[:-4]} {v:.3f} GiB" for k, v in memory.items()), flush=True)
  return compiled, memory


# ==== the loop's hooks ==================================================================

def _log(step: int, window, ck, writer, bar) -> dict:
  """One metrics row for the window ending at `step` (NonFiniteLoss stops the run here)."""
  row = window.row(step, ck)
  writer.write(step, row)
  bar.show(row)
  return {"step": step, **row}


def _evaluate(evaluators, graphdef, state, step: int, writer, bar, desc: str) -> dict:
  """Runs every evaluator (model, step) -> {name: value} on the current parameters."""
  model = state_lib.model_from_state(graphdef, state)
  out = {}
  for evaluator in evaluators:
    out.update(evaluator(model, step))
  writer.write(step, out)
  bar.write(f"[{desc}] step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in out.items()))
  return {"step": step, **out}


def _checkpoint(step: int, state, data, ck, writer, *, last: bool) -> None:
  """Saves state + data position (async) and makes the metrics so far visible."""
  ck.save(step, state, {"data": data.get_state(), "step": step}, force=last)
  writer.flush()


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
  state = initial_state(config, ck, data, abstract, shardings, init_fn, desc)
  step = start = int(state["step"])
  if step >= config.num_steps:
    ck.close()
    if hasattr(data, "close"):
      data.close()
    return TrainResult(step=step, state=state, graphdef=graphdef, history=[])

  data = Prefetcher(data, mesh)
  batch, stall = data.next_with_stall()
  compiled, step_memory = _compile(train_step, state, batch, desc)
  when = Cadence.of(config)
  writer = metrics_lib.MetricWriter(run_dir, start_step=start)   # drops rows past `start`
  window = MetricsWindow(config, step_memory)
  profiler = Profiler(config.get("profile", ()), run_dir)
  bar = progress_lib.StepBar(config.num_steps, start, desc,
                             enabled=progress and jax.process_index() == 0)
  clock = DeviceClock(on_finished=bar.completed)   # the bar counts finished steps
  history = []
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
      profiler.after(step, m["loss"])
      if when.log(step):
        history.append(_log(step, window, ck, writer, bar))
      if evaluators and when.evaluate(step):
        jax.block_until_ready(m["loss"])   # the queued steps finish inside the window
        t0 = time.perf_counter()
        history.append(_evaluate(evaluators, graphdef, state, step, writer, bar, desc))
        window.exclude(time.perf_counter() - t0)   # throughput counts training steps only
      if when.checkpoint(step):
        _checkpoint(step, state, data, ck, writer, last=when.last(step))
  finally:
    profiler.stop()
    clock.close()
    bar.close()
    ck.close()
    writer.close()
    data.close()
  return TrainResult(step=step, state=state, graphdef=graphdef, history=history)
