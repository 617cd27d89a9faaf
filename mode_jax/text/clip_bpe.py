"""OpenAI CLIP's byte-level BPE tokenizer, in plain Python + numpy (no torch).

The CLIP text tower (docs/method.md, paper recipe) reads 77 token ids from a
49,408-entry vocabulary: 256 byte symbols, the same 256 with an end-of-word
'</w>' mark, 48,894 merges and <start_of_text>, <end_of_text>. The merges
come from `bpe_simple_vocab_16e6.txt.gz`, which ships inside the open_clip
package; we locate that file without importing open_clip (which pulls torch).

Behaviour follows open_clip's `SimpleTokenizer` (clean='lower'): ftfy fix
(when ftfy is installed), html unescape twice, whitespace collapse, lower
case; the reference regex pre-tokenisation; SOT + tokens + EOT, zero padding,
and on truncation the last kept position is overwritten with EOT.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from typing import Sequence

import numpy as np
import regex

from mode_jax import constants

try:  # Optional: repairs mojibake and unicode oddities like the reference does.
  import ftfy
except ImportError:  # pragma: no cover - exercised only without ftfy
  ftfy = None

SOT, EOT = "<start_of_text>", "<end_of_text>"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = constants.VOCAB_SIZE - 2 * 256 - 2   # 48,894
# The reference pre-tokenisation (SOT|EOT are prepended in ClipTokenizer): contractions,
# letter runs, single digits, runs of other non-space symbols.
_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


def default_bpe_path() -> str:
  """The merges file inside the installed open_clip package (found, not imported)."""
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"{BPE_FILE} not found: `pip install --no-deps open-clip-torch` or pass bpe_path")
  for folder in spec.submodule_search_locations:
    p = os.path.join(folder, BPE_FILE)
    if os.path.exists(p):
      return p
  raise FileNotFoundError(f"{BPE_FILE} is missing from the open_clip package")


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
  """Maps each byte to a printable character, so BPE never sees whitespace or control bytes."""
  order = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
           + list(range(ord("®"), ord("ÿ") + 1)))
  chars, moved = [chr(b) for b in order], 0
  for b in range(256):   # the rest (space, control bytes, ...) move past 255, in byte order
    if b not in order:
      order.append(b)
      chars.append(chr(256 + moved))
      moved += 1
  return dict(zip(order, chars))


def read_merges(bpe_path: str | None = None) -> list[tuple[str, str]]:
  """The first 48,894 merges of the file (line 0 is a version header)."""
  with gzip.open(bpe_path or default_bpe_path()) as f:
    lines = f.read().decode("utf-8").split("\n")
  return [tuple(line.split()) for line in lines[1:1 + _NUM_MERGES]]


def build_vocab(merges: Sequence[tuple[str, str]]) -> list[str]:
  """Token strings in id order: bytes, bytes + '</w>', merges, SOT, EOT."""
  symbols = list(bytes_to_unicode().values())
  return symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]


def clean(text: str) -> str:
  """The reference 'lower' cleaning: ftfy, double html unescape, collapse whitespace, lower."""
  if ftfy is not None:
    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return " ".join(text.split()).lower()


# Texts whose ids ClipTokenizer keeps (~100 MB at most for 77-token captions).
TEXT_CACHE_SIZE = 1 << 17


class ClipTokenizer:
  """Text -> int32 [B, context_length] ids for the CLIP text tower."""

  def __init__(self, bpe_path: str | None = None, context_length: int = constants.CONTEXT_LENGTH):
    merges = read_merges(bpe_path)
    vocab = build_vocab(merges)
    if len(vocab) != constants.VOCAB_SIZE:
      raise ValueError(f"{bpe_path}: vocabulary of {len(vocab)}, expected {constants.VOCAB_SIZE}")
    self.encoder = {tok: i for i, tok in enumerate(vocab)}
    self.decoder = vocab
    self.bpe_ranks = {m: i for i, m in enumerate(merges)}
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
    self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
    self.context_length = context_length
    self.vocab_size = len(vocab)
    self._pat = regex.compile(f"{regex.escape(SOT)}|{regex.escape(EOT)}|{_PATTERN}",
                              regex.IGNORECASE)
    self._cache: dict[str, tuple[int, ...]] = {SOT: (self.sot_token_id,),
                                               EOT: (self.eot_token_id,)}
    self._text_cache: dict[str, tuple[int, ...]] = {}

  def bpe(self, word: str) -> tuple[int, ...]:
    """Ids of one pre-token (already byte-mapped), merging the lowest-rank pair first; cached."""
    ids = self._cache.get(word)
    if ids is not None:
      return ids
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    ranks = self.bpe_ranks
    while len(parts) > 1:
      best, best_rank = None, None
      for pair in zip(parts, parts[1:]):
        r = ranks.get(pair)
        if r is not None and (best_rank is None or r < best_rank):
          best, best_rank = pair, r
      if best is None:
        break
      first, second = best
      merged, i = [], 0
      while i < len(parts):
        if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = tuple(self.encoder[p] for p in parts)
    self._cache[word] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """Token ids of one text, without SOT/EOT.

    Whole texts are cached too (bounded, cleared when full): training reads
    every caption once per epoch, and templated captions repeat within one;
    the cleaning and pre-token regex cost the input pipeline ~50 ms per
    256-caption batch otherwise.
    """
    ids = self._text_cache.get(text)
    if ids is None:
      out = []
      for tok in self._pat.findall(clean(text)):
        out.extend(self.bpe("".join(self.byte_encoder[b] for b in tok.encode("utf-8"))))
      ids = tuple(out)
      if len(self._text_cache) >= TEXT_CACHE_SIZE:
        self._text_cache.clear()
      self._text_cache[text] = ids
    return list(ids)

  def decode(self, ids: Sequence[int]) -> str:
    """Ids back to text; word ends become spaces (SOT/EOT are spelled out)."""
    text = "".join(self.decoder[int(i)] for i in ids)
    raw = bytearray(self.byte_decoder[c] for c in text)
    return raw.decode("utf-8", errors="replace").replace("</w>", " ")

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    """int32 [B, L]: SOT, tokens, EOT, zeros; over-long texts end in EOT at position L-1."""
    if isinstance(texts, str):
      texts = [texts]
    length = context_length or self.context_length
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
      if len(ids) > length:
        ids = ids[:length]
        ids[-1] = self.eot_token_id
      out[row, :len(ids)] = ids
    return out
