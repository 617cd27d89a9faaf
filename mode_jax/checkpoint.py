"""Checkpoints with Orbax's CheckpointManager.

One checkpoint = the train state (params, optimiser state, step, RNG) as an
Orbax PyTree plus a small JSON `meta` item (the data position, which is the
same on every host, see data/io/loader.py; the step). Saves are asynchronous.
Clean-up keeps the last `keep` checkpoints plus named milestone steps (the
seed step experts fork from must survive). Restores go onto whatever mesh the
caller's abstract state carries, so a state saved on 8 devices restores on 1,
on another number of hosts, and vice versa. `restore_params` reads the
parameters alone (evaluation needs no Adam moments).

Where: a local or shared folder, or gs:// (Orbax writes arrays through
TensorStore, whose GCS driver it uses for gs://). Orbax 0.12.8 builds
TensorStore specs for local paths and gs:// only: an s3:// checkpoint fails
in ts_utils._build_ocdbt_kvstore_tspec ("Checkpoint path should be
absolute"), so `check_directory` stops such a run before any compute.

A save that fails in Orbax's background thread raises CheckpointError (one
line) at the next save or at close, as soon as the failure shows, instead of
waiting at Orbax's barriers for hosts that wait for it: see _FailedSaves.
"""

from __future__ import annotations

import logging
import time

import jax
import orbax.checkpoint as ocp

from mode_jax import workdir as wd

ORBAX_SCHEMES = ("gs://",)
POLL_S = 0.05   # how often a wait for a save in flight looks for its failure


class CheckpointError(ValueError):
  """A checkpoint save failed (the launcher prints it as `error: ...`)."""


class _FailedSaves(logging.Handler):
  """The exceptions Orbax's background save thread logs for saves under one directory.

  Why not CheckpointManager.check_for_errors() alone: in Orbax 0.12.8 the
  manager's finalize thread takes a failed save's exception first
  (AsyncCheckpointer.wait_until_finished clears it, so check_for_errors then
  raises nothing) and, on a pod, waits at a barrier
  (MultihostSynchronizedValue.set) for the other hosts, which may be polling
  for files the failed save never wrote (ArrayMetadataStore, 600 s). Until
  then the exception is in no object the main thread can read without
  blocking; Orbax's error log (_AsyncManager._thread_func, with the exception
  and the step's directory) has it at once.
  """

  def __init__(self, directory: str):
    super().__init__(logging.ERROR)
    self.directory = directory
    self.errors: list[BaseException] = []

  def emit(self, record: logging.LogRecord) -> None:
    if (record.exc_info and record.exc_info[1] is not None and "orbax" in record.pathname
        and self.directory in record.getMessage()):
      self.errors.append(record.exc_info[1])


def _one_line(e: BaseException) -> str:
  """An exception's first line, without the TensorStore spec Orbax's errors carry."""
  text = str(e).split(" [tensorstore_spec=", 1)[0].strip()
  return (text.splitlines() or [type(e).__name__])[0]


def check_directory(directory: str) -> None:
  """ValueError (one line) when Orbax cannot write checkpoints under `directory`."""
  if wd.is_remote(directory) and not str(directory).startswith(ORBAX_SCHEMES):
    scheme = str(directory).split("://", 1)[0]
    raise ValueError(
        f"checkpoints cannot go to {scheme}:// ({directory}): Orbax writes arrays through "
        f"TensorStore to local paths and gs:// only; set --config.checkpoint_root to a shared "
        f"folder or a gs:// prefix (the other stages stay on {scheme}://)")


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager for our (state, meta) layout."""

  def __init__(self, directory: str, *, keep: int = 2, milestones=(), async_save: bool = True):
    directory = wd.resolve(directory)
    check_directory(directory)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(keep),
        ocp.checkpoint_managers.CustomSteps(list(milestones)),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True)
    self.directory = directory
    self.manager = ocp.CheckpointManager(directory, options=options,
                                         item_names=("state", "meta"))
    self._failures = _FailedSaves(directory)
    self._logger = logging.getLogger("absl")   # Orbax logs through absl
    self._saved_step = None   # the last step saved
    self._raised = False    # a failure was raised: close() no longer waits

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
    """Starts an (asynchronous) save of step; first raises if the previous save failed."""
    self._wait()
    if self._failures not in self._logger.handlers:
      self._logger.addHandler(self._failures)
    try:
      saved = self.manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:   # noqa: BLE001  Orbax re-raises an earlier save's failure here
      raise self._error(e) from e
    if saved:
      self._saved_step = step
    return saved

  def check_for_errors(self) -> None:
    """Raises CheckpointError, without waiting, when an asynchronous save has failed."""
    try:
      self.manager.check_for_errors()
    except Exception as e:   # noqa: BLE001  whatever the save hit
      self._failures.errors.append(e)
    if self._failures.errors and not self._raised:
      raise self._error(self._failures.errors[0])

  def _error(self, e: BaseException) -> CheckpointError:
    self._raised = True
    if isinstance(e, CheckpointError):
      return e
    step = "" if self._saved_step is None else f" of step {self._saved_step}"
    return CheckpointError(f"checkpoint save{step} to {self.directory} failed: {_one_line(e)}")

  def _wait(self) -> None:
    """Waits for the save in flight, raising as soon as it has failed.

    Orbax's own wait (in save and close) blocks on a pod whose primary failed
    until the other hosts give up (10 minutes); this one polls for the failure.
    """
    if self._raised:
      return
    while self.manager.is_saving_in_progress():
      self.check_for_errors()
      time.sleep(POLL_S)
    self.check_for_errors()
    try:
      self.manager.wait_until_finished()
    except Exception as e:   # noqa: BLE001
      raise self._error(e) from e

  def restore(self, abstract_state, step=None):
    """Returns (state, meta) at `step` (default latest) laid out as `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` set:
    the restored arrays take those shardings, whatever mesh they were saved on.
    """
    step = self._step(step)
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def restore_params(self, abstract_state, step=None):
    """Only state["params"] at `step`, laid out as abstract_state["params"].

    A partial restore: the other items (optimiser moments, step) are neither
    read nor allocated (for L/14 the Adam moments are twice the parameters).
    """
    step = self._step(step)
    item = {"params": abstract_state["params"]}
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return out.state["params"]

  def meta(self, step=None) -> dict:
    """The JSON meta item of a checkpoint (data position, step)."""
    step = self._step(step)
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def _step(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step

  def close(self):
    """Waits for the save in flight (raising if it failed), then closes the manager.

    After a failure was raised it only lets go: waiting could hang (see _wait).
    """
    try:
      self._wait()
      if not self._raised:
        self.manager.close()
    finally:
      self._logger.removeHandler(self._failures)


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
