"""Meshes, sharding rules and hosts: everything distributed goes through JAX itself.

* The mesh has axes ("data", "fsdp"), built with `jax.make_mesh` from the
  config (`config.mesh.data`, `config.mesh.fsdp`; -1 fills the devices left).
* Parameter and optimiser-state shardings come from a short table of
  (regex, rule) pairs matched against "/"-joined tree paths (first match wins):
  "replicate", or "fsdp" (shard the largest dimension divisible by the fsdp
  axis size over "fsdp"; replicate when none is). FSDP is a one-line change.
* Batches are sharded on their leading axis over both axes together.
* Hosts: mode_jax/distributed.py starts jax.distributed (launch.py, first).
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(cfg, n_devices: int) -> tuple[int, int]:
  """Resolves (data, fsdp) sizes; raises ValueError naming config.mesh when impossible."""
  data, fsdp = int(cfg.get("data", -1)), int(cfg.get("fsdp", 1))
  if data == -1 and fsdp == -1:
    raise ValueError("config.mesh: at most one of data and fsdp may be -1")
  if data == -1:
    data = n_devices // fsdp if fsdp > 0 and n_devices % fsdp == 0 else 0
  elif fsdp == -1:
    fsdp = n_devices // data if data > 0 and n_devices % data == 0 else 0
  if data <= 0 or fsdp <= 0 or data * fsdp != n_devices:
    raise ValueError(f"config.mesh: data={cfg.get('data')} x fsdp={cfg.get('fsdp')} does not "
                     f"match the {n_devices} devices")
  return data, fsdp


def make_mesh(cfg, devices=None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _spec(shape, rule, fsdp_size) -> P:
  if rule == "replicate" or not shape or fsdp_size == 1:
    return P()
  if rule != "fsdp":
    raise ValueError(f"config.sharding_rules: unknown rule {rule!r} (use replicate or fsdp)")
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0 and shape[axis] >= fsdp_size:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree, mesh, rules):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) from the rule table."""
  compiled = [(re.compile(pattern), rule) for pattern, rule in rules]
  fsdp_size = mesh.shape["fsdp"]

  def one(path, leaf):
    name = path_str(path)
    rule = next((r for pat, r in compiled if pat.search(name)), "replicate")
    return NamedSharding(mesh, _spec(tuple(getattr(leaf, "shape", ())), rule, fsdp_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch, mesh):
  """Per-process numpy batch -> global jax.Arrays sharded on the leading axis.

  Each process passes only its own rows; on one host this is a plain
  device_put. The global batch size is the local one times process_count.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
