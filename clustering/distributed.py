"""Points as one global array sharded over a 1-D device mesh; centers stay replicated.

Every process passes only the rows it holds (`jax.make_array_from_process_local_data`),
so one code path serves one CPU, eight fake devices and a multi-host pod. Each
process pads its rows to the same length (a multiple of devices x chunk) and a
0/1 weight marks the padding, so padded rows never count. A mesh of this
process's devices only (`local_mesh`) makes the same code a per-host job
(the assign stage; the coarse clustering on one device).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "data" over `devices` (default: every device of every process).

  The axis is Auto (compiler-propagated) sharding: the per-device math is an
  explicit `jax.shard_map`, and the small glue ops around it (gathers, the
  price solver's sort) are left to the partitioner.
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def local_mesh(n: int | None = None) -> Mesh:
  """A "data" mesh over this process's first n devices (all when None)."""
  devices = jax.local_devices()
  return data_mesh(devices[:n] if n else devices)


def spans_processes(mesh: Mesh) -> bool:
  return len({d.process_index for d in mesh.devices.flat}) > 1


@dataclasses.dataclass(frozen=True)
class ShardedPoints:
  """Rows sharded over mesh axis "data"; row order = process order, then local order."""
  x: jax.Array                   # [rows_per_process * processes, D], any float dtype
  w: jax.Array                   # [same rows] float32, 1 = real row, 0 = padding
  mesh: Mesh
  chunk: int                     # rows per distance chunk on each device
  local_counts: tuple[int, ...]  # real rows held by each process
  rows_per_process: int          # padded rows per process

  @property
  def n(self) -> int:
    return int(sum(self.local_counts))

  @property
  def dim(self) -> int:
    return int(self.x.shape[1])

  def global_rows(self, valid_index: np.ndarray) -> np.ndarray:
    """Maps indices among real rows (0..n-1, process order) to rows of the padded array."""
    valid_index = np.asarray(valid_index, np.int64)
    starts = np.cumsum((0,) + self.local_counts[:-1])
    proc = np.searchsorted(starts, valid_index, side="right") - 1
    return proc * self.rows_per_process + (valid_index - starts[proc])

  def local(self, arr: jax.Array) -> np.ndarray:
    """This process's real rows of a row-sharded output (labels, distances), in input order."""
    shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, parts = set(), []
    for s in shards:   # a replicated mesh axis would repeat blocks: keep each once
      start = s.index[0].start or 0
      if start not in seen:
        seen.add(start)
        parts.append(np.asarray(s.data))
    mine = jax.process_index() if spans_processes(self.mesh) else 0
    return np.concatenate(parts)[:self.local_counts[mine]]


def shard_points(x_local: np.ndarray, mesh: Mesh | None = None,
                 chunk_size: int = 4096) -> ShardedPoints:
  """Builds the global sharded point array from this process's rows (padding + weights)."""
  mesh = data_mesh() if mesh is None else mesh
  x_local = np.asarray(x_local)
  if x_local.ndim != 2:
    raise ValueError(f"points must be [n, D], got shape {x_local.shape}")
  n_local = len(x_local)
  if spans_processes(mesh):
    from jax.experimental import multihost_utils
    counts = tuple(int(c) for c in np.ravel(
        multihost_utils.process_allgather(np.array([n_local], np.int64))))
  else:
    counts = (n_local,)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  per_device = max(1, math.ceil(max(counts) / local_devices))
  if per_device < chunk_size:   # small: a power of two, so chunks of similar size share a shape
    per_device = min(int(chunk_size), 1 << (per_device - 1).bit_length())
  chunk = max(1, min(int(chunk_size), per_device))
  per_device = math.ceil(per_device / chunk) * chunk
  rows = per_device * local_devices
  w = np.zeros((rows,), np.float32)
  w[:n_local] = 1.0
  if rows != n_local:
    x_local = np.concatenate(
        [x_local, np.zeros((rows - n_local, x_local.shape[1]), x_local.dtype)])
  sharding = NamedSharding(mesh, P(AXIS))
  x = jax.make_array_from_process_local_data(sharding, x_local)
  w = jax.make_array_from_process_local_data(sharding, w)
  return ShardedPoints(x, w, mesh, chunk, counts, rows)
