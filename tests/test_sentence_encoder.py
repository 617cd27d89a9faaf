"""Our Flax BERT sentence encoder against PyTorch transformers.BertModel (same weights)."""

import shutil

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mode_jax.text import bert, sentence_encoder as se

torch = pytest.importorskip("torch", reason="pip install torch")
transformers = pytest.importorskip("transformers", reason="pip install transformers")

try:
  MINILM = se.minilm_dir()
except FileNotFoundError:
  pytest.skip(se.MINILM_INSTALL, allow_module_level=True)

TEXTS = [
    "a photo of a cat",
    "A red FIRE truck, with a ladder!",
    "vintage cartoon icon of a small house next to a tree, clip art, svg vector",
    "café naïve 東京 😀",
    "",
    "word " * 300,        # longer than max_length: truncated on both sides
    "hello world",
    "numbers 3.14 and 1,000,000",
    "the quick brown fox jumps over the lazy dog " * 3,
]


def reference(model, tok, texts, pooling, max_length):
  b = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
  with torch.no_grad():
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                token_type_ids=b["token_type_ids"])
  h = out.last_hidden_state
  m = b["attention_mask"][..., None].float()
  emb = {"mean": (h * m).sum(1) / m.sum(1).clamp(min=1e-9), "cls": h[:, 0],
         "pooler": out.pooler_output}[pooling]
  return torch.nn.functional.normalize(emb, dim=-1).numpy()


@pytest.fixture(scope="module")
def minilm_peer():
  return (transformers.BertModel.from_pretrained(MINILM).eval(),
          transformers.AutoTokenizer.from_pretrained(MINILM))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
  """A small random BERT inside a classification head: weights carry a 'bert.' prefix."""
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=96,
                                max_position_embeddings=40, layer_norm_eps=1e-7)
  model = transformers.BertForSequenceClassification(cfg).eval()
  d = tmp_path_factory.mktemp("tiny_bert")
  model.save_pretrained(d, safe_serialization=True)
  shutil.copy(f"{MINILM}/tokenizer.json", d / "tokenizer.json")
  return str(d), model.bert


def test_minilm_matches_bert_model(minilm_peer):
  """The default encoder; the other poolings are checked on the tiny model below."""
  enc = se.SentenceEncoder("minilm", devices=jax.local_devices()[:1])
  assert enc.dim == 384 and enc.tokenizer.max_length == 256 and enc.pooling == "mean"
  texts = [t for t in TEXTS if len(t) < 1000]
  got = enc.encode(texts, batch_size=4)
  want = reference(*minilm_peer, texts, "mean", 256)
  assert got.dtype == np.float32 and got.shape == (len(texts), 384)
  np.testing.assert_allclose(got, want, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_tiny_random_bert_matches(tiny_folder, pooling):
  folder, peer = tiny_folder
  enc = se.SentenceEncoder(folder, pooling=pooling, devices=jax.local_devices()[:1])
  assert enc.tokenizer.max_length == 40   # min(tokenizer 128, max_position_embeddings)
  tok = transformers.AutoTokenizer.from_pretrained(MINILM)
  np.testing.assert_allclose(enc.encode(TEXTS), reference(peer, tok, TEXTS, pooling, 40),
                             atol=1e-4)


def test_pooler_needs_trained_weights(tmp_path):
  cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32)
  transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(
      tmp_path, safe_serialization=True)
  shutil.copy(f"{MINILM}/tokenizer.json", tmp_path / "tokenizer.json")
  model, has_pooler = bert.load_pretrained(str(tmp_path))
  assert not has_pooler and model.cfg.hidden_size == 16
  with pytest.raises(ValueError, match="pooler"):
    se.SentenceEncoder(str(tmp_path), pooling="pooler")
  with pytest.raises(FileNotFoundError):
    se.SentenceEncoder(str(tmp_path / "nowhere"))


def test_data_parallel_equals_one_device(tiny_folder):
  folder, _ = tiny_folder
  assert jax.local_device_count() == 8   # conftest's fake CPU devices
  texts = [f"caption number {i} of a {'big ' * (i % 7)}red truck" for i in range(45)]
  one = se.SentenceEncoder(folder, devices=jax.local_devices()[:1]).encode(texts, batch_size=32)
  enc = se.SentenceEncoder(folder)
  np.testing.assert_allclose(enc.encode(texts, batch_size=32), one, atol=1e-5)
  # Input order does not matter (texts are regrouped by length internally).
  perm = np.random.default_rng(0).permutation(len(texts))
  np.testing.assert_allclose(enc.encode([texts[i] for i in perm], batch_size=32), one[perm],
                             atol=1e-5)
  out = enc.embed_batch(enc.tokenizer(texts[:16], padding="bucket"))
  assert out.sharding.spec == P("data") and len(out.sharding.device_set) == 8


def test_plan_covers_every_text_once(tiny_folder):
  enc = se.SentenceEncoder(tiny_folder[0])
  lengths = np.random.default_rng(1).integers(2, 41, size=1000)
  plan = enc.plan(lengths, batch_size=128)
  seen = np.concatenate([idx for idx, _, _ in plan])
  np.testing.assert_array_equal(np.sort(seen), np.arange(1000))
  for idx, length, rows in plan:
    assert length in enc.tokenizer.buckets and lengths[idx].max() <= length
    assert len(idx) <= rows <= 128 and rows % 8 == 0
    assert rows < 2 * len(idx) or rows == 8       # never more than half padding rows
  assert len({(length, rows) for _, length, rows in plan}) <= 20   # few compiled shapes


def test_bfloat16_close_to_float32(tiny_folder):
  folder, _ = tiny_folder
  one = jax.local_devices()[:1]
  f32 = se.SentenceEncoder(folder, devices=one).encode(TEXTS)
  bf16 = se.SentenceEncoder(folder, dtype="bfloat16", devices=one).encode(TEXTS)
  assert bf16.dtype == np.float32
  assert (np.sum(f32 * bf16, axis=1) > 0.99).all()


def test_buckets():
  assert se.encoder_buckets(128) == (16, 24, 32, 48, 64, 96, 128)
  assert se.encoder_buckets(40) == (16, 24, 32, 40)
