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
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from mode_jax import workdir as wd

ORBAX_SCHEMES = ("gs://",)


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

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)

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
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
