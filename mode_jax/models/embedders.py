"""Plain embedding callables from a CLIP model, the interface evaluators consume.

Evaluators take `embed_images(np [B, H, W, 3]) -> [B, E]` and
`embed_texts(list[str]) -> [N, E]` (both L2-normalised) rather than a model,
so they work for any expert, the dense seed or a converted checkpoint.

With a `mesh` (the model's parameters on it, replicated or sharded as in
training), every forward pass is split over all its devices, on every host:
  embed_images(rows)  this host's rows in, their features out (every host
                      passes the same number of rows: loader.eval_batches'
                      per-host blocks);
  embed_texts(texts)  the same list on every host; each host embeds its block
                      of each batch and all hosts get every row back.
Without a mesh, everything runs on this process's default device.
"""

from __future__ import annotations

import functools

import numpy as np
from flax import nnx

from mode_jax import distributed


@nnx.jit
def _encode_image(model, images):
  return model.encode_image(images)


@nnx.jit
def _encode_text(model, tokens):
  return model.encode_text(tokens)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """Pads with copies of the last row (or zeros when empty) to `rows` rows."""
  n = len(x)
  if n >= rows:
    return x
  fill = np.repeat(x[-1:], rows - n, 0) if n else np.zeros((rows - n,) + x.shape[1:], x.dtype)
  return np.concatenate([x, fill])


@functools.lru_cache(maxsize=None)
def _reshard(sharding):
  import jax
  return jax.jit(lambda a: a, out_shardings=sharding)


def _on_mesh(fn, model, local_rows: np.ndarray, mesh) -> np.ndarray:
  """fn(model, global array of every host's rows) -> this host's rows of the output."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  n = len(local_rows)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  rows = -(-max(n, 1) // local_devices) * local_devices
  x = jax.make_array_from_process_local_data(
      NamedSharding(mesh, P(mesh.axis_names)), _pad_rows(local_rows, rows))
  out = fn(model, x)
  rows_sharding = NamedSharding(mesh, P(mesh.axis_names))
  if not out.sharding.is_equivalent_to(rows_sharding, out.ndim):
    out = _reshard(rows_sharding)(out)   # e.g. parameters sharded over fsdp: rows as input
  shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])[:n]


def make_embedders(model, tokenizer, *, context_length: int, batch_size: int = 256, mesh=None):
  """Returns (embed_images, embed_texts) for `model`; batches are padded to one shape."""

  def run(fn, x, per_call):
    outs = []
    for i in range(0, len(x), per_call):
      chunk = x[i:i + per_call]
      n = len(chunk)
      chunk = _pad_rows(chunk, per_call)   # a fixed shape: one compilation
      out = _on_mesh(fn, model, chunk, mesh) if mesh is not None else np.asarray(fn(model, chunk))
      outs.append(out[:n])
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

  def embed_images(images):
    images = np.asarray(images)   # uint8 stays uint8: the tower normalises it on the device
    images = images if images.dtype == np.uint8 else images.astype(np.float32)
    return run(_encode_image, images, batch_size if mesh is None else max(len(images), 1))

  def embed_texts(texts):
    tokens = tokenizer(list(texts), context_length=context_length)
    if mesh is None:
      return run(_encode_text, tokens, batch_size)
    n, hosts = len(tokens), distributed.process_count()
    per_host = -(-max(batch_size, hosts) // hosts)
    batches = -(-n // (per_host * hosts))
    padded = _pad_rows(tokens, batches * per_host * hosts).reshape(batches, hosts, per_host, -1)
    mine = padded[:, distributed.process_index()].reshape(batches * per_host, -1)
    local = run(_encode_text, mine, per_host)                      # [batches * per_host, E]
    every = distributed.allgather(local.reshape(batches, per_host, -1))  # [P, batches, b, E]
    return np.transpose(every, (1, 0, 2, 3)).reshape(-1, every.shape[-1])[:n]

  return embed_images, embed_texts
