"""A CLIP model's text tower as the caption / class-name embedder (paper Table 7).

The paper's default embedder is a sentence encoder (SimCSE; ours MiniLM), and
Table 7 compares it with the text tower of a CLIP model. `ClipTextEncoder`
loads public CLIP weights through our converter (a Hugging Face CLIPModel
folder or an OpenAI/OpenCLIP state-dict file, see models/convert.py),
tokenises with the CLIP BPE, and returns the tower's L2-normalised projected
embeddings. Selected with `embed.encoder = "clip:<path>"`; the same encoder
embeds the evaluation tasks' class names, as routing requires.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from mode_jax.models import clip as clip_lib
from mode_jax.models import loader as model_loader
from mode_jax.text.clip_bpe import ClipTokenizer

PREFIX = "clip:"


def weights_path(encoder: str) -> str:
  """'clip:<path>' -> <path> (user-expanded)."""
  return os.path.expanduser(encoder[len(PREFIX):])


class ClipTextEncoder:
  """encode(texts) -> float32 [N, embed_dim], rows L2-normalised."""

  def __init__(self, path: str, *, dtype: str = "float32", max_length: int | None = None,
               devices: Sequence[jax.Device] | None = None):
    if not os.path.exists(path):
      raise FileNotFoundError(f"CLIP weights {path} not found (a HF CLIPModel folder or an "
                              "OpenAI/OpenCLIP state-dict file)")
    model, cfg = model_loader.load_model(path, dtype=dtype)
    self.name, self.dim = f"{PREFIX}{path}", int(cfg.embed_dim)
    self.context_length = min(max_length or cfg.context_length, cfg.context_length)
    self.tokenizer = ClipTokenizer()
    devices = list(devices or jax.local_devices())
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                              axis_types=(jax.sharding.AxisType.Auto,))
    replicated, self._rows = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
    graphdef, state = nnx.split(model.text)
    self._state = jax.device_put(state, replicated)

    def forward(state, tokens):
      return clip_lib.l2_normalize(nnx.merge(graphdef, state)(tokens))

    self._fn = jax.jit(forward, in_shardings=(replicated, self._rows), out_shardings=self._rows)

  def encode(self, texts: Sequence[str], batch_size: int = 256,
             progress: bool | str = False) -> np.ndarray:
    """float32 [N, dim] in input order; batches padded to one shape (one compilation)."""
    texts = list(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    rows = -(-batch_size // self.mesh.size) * self.mesh.size
    bar = tqdm(total=len(texts), desc=progress if isinstance(progress, str) else "embed",
               unit="text", disable=not progress, leave=False)
    for i in range(0, len(texts), rows):
      chunk = texts[i:i + rows]
      tokens = self.tokenizer(chunk, context_length=self.context_length)
      tokens = np.pad(tokens, ((0, rows - len(chunk)), (0, 0)))
      tokens = jax.device_put(tokens, self._rows)   # host numpy with a sharding: refused on pods
      out[i:i + len(chunk)] = np.asarray(self._fn(self._state, tokens))[:len(chunk)]
      bar.update(len(chunk))
    bar.close()
    return out

  def __call__(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    return self.encode(texts, batch_size)
