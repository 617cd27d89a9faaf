"""The one-caption pick of the embed stage.

MoDE clusters pairs by caption meaning, one caption per pair (docs/method.md step
1): when a sample has several, the reference picks one at random; we make
that pick a pure function of (seed, key), so it does not depend on shard
order, host count or resume points. Shards are read with
mode_jax/data/io/webdataset.py, the same reader (and caption rules) as training.
"""

from __future__ import annotations

import hashlib


def pick_caption(texts: list[str], key: str, seed: int) -> str:
  """One caption of several, chosen by a hash of (seed, key): stable across runs and hosts."""
  if len(texts) == 1:
    return texts[0]
  h = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8"), digest_size=8).digest()
  return texts[int.from_bytes(h, "little") % len(texts)]
