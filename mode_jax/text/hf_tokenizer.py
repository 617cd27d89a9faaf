"""Any Hugging Face `tokenizer.json` (BERT WordPiece, RoBERTa BPE, ...) as numpy batches.

Tokenisation runs in the Rust `tokenizers` package (batched, multi-threaded);
we own padding and truncation so a jitted encoder sees only a few fixed
shapes: every batch is padded to the smallest *bucket* that fits its longest
text, instead of to its own longest text (one compile per length otherwise).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tokenizers


def default_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
  """Powers of two from `smallest` up to max_length, then max_length itself."""
  out, n = [], smallest
  while n < max_length:
    out.append(n)
    n *= 2
  return tuple(out) + (max_length,)


class HFTokenizer:
  """Batch-encodes texts to int32 input_ids / attention_mask / token_type_ids."""

  def __init__(self, path: str, max_length: int | None = None,
               buckets: Sequence[int] | None = None):
    """path: a tokenizer.json or a folder holding one. max_length counts special
    tokens; default: the file's own truncation length, else 512."""
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    self.tok = tokenizers.Tokenizer.from_file(path)
    trunc, pad = self.tok.truncation, self.tok.padding
    self.max_length = int(max_length or (trunc or {}).get("max_length") or 512)
    self.pad_id = int(pad["pad_id"]) if pad else int(self.tok.token_to_id("[PAD]") or 0)
    self.tok.no_padding()
    self.tok.enable_truncation(self.max_length)
    self.buckets = tuple(sorted(buckets or default_buckets(self.max_length)))
    if self.buckets[-1] < self.max_length:
      self.buckets += (self.max_length,)

  def bucket(self, length: int) -> int:
    """The smallest bucket that holds `length` tokens."""
    for b in self.buckets:
      if b >= length:
        return b
    return self.buckets[-1]

  def encode_ragged(self, texts: Sequence[str]) -> list[tokenizers.Encoding]:
    """Unpadded encodings (with special tokens, truncated to max_length)."""
    return self.tok.encode_batch(list(texts))

  def pad(self, encodings: Sequence[tokenizers.Encoding], length: int) -> dict[str, np.ndarray]:
    """Pads (or cuts) ragged encodings to [B, length] arrays."""
    ids = np.full((len(encodings), length), self.pad_id, np.int32)
    mask = np.zeros((len(encodings), length), np.int32)
    types = np.zeros((len(encodings), length), np.int32)
    for row, enc in enumerate(encodings):
      n = min(len(enc.ids), length)
      ids[row, :n] = enc.ids[:n]
      mask[row, :n] = 1
      types[row, :n] = enc.type_ids[:n]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

  def __call__(self, texts: str | Sequence[str], length: int | None = None,
               padding: str = "bucket") -> dict[str, np.ndarray]:
    """padding: 'bucket' (smallest bucket >= longest), 'longest', or 'fixed'
    (`length`, default max_length)."""
    if isinstance(texts, str):
      texts = [texts]
    encs = self.encode_ragged(texts)
    longest = max((len(e.ids) for e in encs), default=1)
    if padding == "fixed":
      target = length or self.max_length
    elif padding == "longest":
      target = longest
    elif padding == "bucket":
      target = self.bucket(longest)
    else:
      raise ValueError(f"padding must be 'bucket', 'longest' or 'fixed', not {padding!r}")
    return self.pad(encs, target)
