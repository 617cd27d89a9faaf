"""A jax.profiler trace of the steps config.profile names, into <run_dir>/profile."""

from __future__ import annotations

import os
import shutil
import tempfile

import jax

from mode_jax import workdir as wd


class Profiler:
  """Traces the updates after global step `first` up to step `last`.

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
    """Call before dispatching the update that leaves global step `step`."""
    if step == self.first:
      os.makedirs(self.local, exist_ok=True)
      jax.profiler.start_trace(self.local)
      self.active = True

  def after(self, step: int, output) -> None:
    """Call once the global step is `step`, with an output of that update."""
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
