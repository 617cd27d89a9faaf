"""Every check of a training config and run directory that can fail before compute, once.

train() calls `validate` first, before building anything; `pipeline` runs
`check_config` before its first stage too.
"""

from __future__ import annotations

import os

import jax

from mode_jax import workdir as wd
from mode_jax.models import clip as clip_lib
from mode_jax import checkpoint as ckpt_lib
from mode_jax.train import losses, optimizer, sharding


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
