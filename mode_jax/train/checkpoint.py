"""Checkpoints with Orbax's CheckpointManager.

One checkpoint = the train state (params, optimiser state, step, RNG) as an
Orbax PyTree plus a small JSON `meta` item (data-iterator position, config
name, anything JSON-able). Saves are asynchronous. Clean-up keeps the last
`keep` checkpoints plus named milestone steps (the seed step experts fork
from must survive). Restores go onto whatever mesh the caller's abstract
state carries, so a state saved on 8 devices restores on 1 and vice versa.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager for our (state, meta) layout."""

  def __init__(self, directory: str, *, keep: int = 2, milestones=(), async_save: bool = True):
    directory = os.path.abspath(directory)
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
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
