"""A random-weight BERT written in Hugging Face layout, for tests and benchmarks.

The embed stage loads sentence encoders from a folder (config.json,
model.safetensors, tokenizer.json), as downloaded from a hub. Tests and
benchmarks/scale_sim.py need one without a download: this writes a small
BERT with random weights and a word-level tokenizer over a given vocabulary.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np


def write_random_bert(folder: str, words: Sequence[str], *, seed: int = 0, hidden: int = 32,
                      layers: int = 2, heads: int = 4, max_positions: int = 32) -> str:
  """Writes the model to `folder` (created); returns the folder."""
  import tokenizers
  from safetensors.numpy import save_file
  from tokenizers import models, normalizers, pre_tokenizers, processors
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list(words)
  d, inter = hidden, 2 * hidden
  cfg = dict(vocab_size=len(vocab), hidden_size=d, num_hidden_layers=layers,
             num_attention_heads=heads, intermediate_size=inter,
             max_position_embeddings=max_positions, type_vocab_size=2, hidden_act="gelu",
             layer_norm_eps=1e-12)
  rng = np.random.default_rng(seed)
  w = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)
  t = {"embeddings.word_embeddings.weight": w(len(vocab), d),
       "embeddings.position_embeddings.weight": w(max_positions, d),
       "embeddings.token_type_embeddings.weight": w(2, d),
       "embeddings.LayerNorm.weight": 1 + w(d), "embeddings.LayerNorm.bias": w(d),
       "pooler.dense.weight": w(d, d), "pooler.dense.bias": w(d)}
  for i in range(layers):
    p = f"encoder.layer.{i}."
    for n in ("attention.self.query", "attention.self.key", "attention.self.value",
              "attention.output.dense"):
      t[p + n + ".weight"], t[p + n + ".bias"] = w(d, d), w(d)
    t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = w(inter, d), w(inter)
    t[p + "output.dense.weight"], t[p + "output.dense.bias"] = w(d, inter), w(d)
    for n in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + n + ".weight"], t[p + n + ".bias"] = 1 + w(d), w(d)
  os.makedirs(folder, exist_ok=True)
  save_file(t, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(cfg, f)
  tok = tokenizers.Tokenizer(models.WordLevel({v: i for i, v in enumerate(vocab)},
                                              unk_token="[UNK]"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.save(os.path.join(folder, "tokenizer.json"))
  return str(folder)
