"""Environment for child processes of tests (launch.py runs, jax.distributed workers)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What would make a child join another job, take other devices or another config.
PREFIXES = ("JAX_", "XLA_", "SLURM_", "MODE_JAX_", "OMPI_", "TPU_", "MEGASCALE_")


def clean_env(**kw) -> dict:
  """This process's environment without cluster/JAX settings, the repo on PYTHONPATH, plus kw."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
  env.update(PYTHONPATH=ROOT, **kw)
  return env
