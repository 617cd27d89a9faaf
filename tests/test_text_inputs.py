"""A locked text tower's inputs: the embed stage's caption features, matched to samples by key."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import loader, wds_writer
from mode_jax.models import clip
from mode_jax.train import text_inputs

N, PER_SHARD, F = 24, 10, 8


def _img(i):
  return np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def _emb(i):
  """Sample i's caption embedding: one-hot-ish rows, distinct per sample."""
  return np.random.default_rng(1000 + i).normal(size=F).astype(np.float16)


@pytest.fixture
def workdir(tmp_path):
  w = str(tmp_path)
  samples = [{"__key__": f"k{i:03d}", "png": _img(i), "json": {"texts": [f"caption {i}"]}}
             for i in range(N)]
  paths = wds_writer.write_shards(os.path.join(w, "shards/train-%05d.tar"), iter(samples),
                                  PER_SHARD)
  for s, p in enumerate(paths):
    rows = range(s * PER_SHARD, min(N, (s + 1) * PER_SHARD))
    os.makedirs(f"{w}/embed", exist_ok=True)
    np.savez(f"{w}/embed/{wd.shard_stem(p)}.npz", keys=np.array([f"k{i:03d}" for i in rows]),
             emb=np.stack([_emb(i) for i in rows]))
  return w


def _config(features=F):
  from configs import demo
  c = demo.get_config("runlocal")
  c.model.text.features = features
  c.input.shards = "shards/train-*.tar"
  return c


def test_batches_carry_each_samples_own_caption_embedding(workdir):
  cfg = loader.default_config()
  cfg.resolution, cfg.batch_size, cfg.shards = 16, 6, "shards/train-*.tar"
  index = loader.load_index(cfg, workdir)
  table = text_inputs.training_tokenize(_config(), workdir, index)
  assert table.dim == F and len(table.row) == N
  it = loader.train_iterator(cfg, workdir, table, index=index)
  want = {i: _emb(i).astype(np.float32) for i in range(N)}
  seen = set()
  for _ in range(4):   # one epoch: every sample once
    b = next(it)
    assert b["tokens"].dtype == np.float32 and b["tokens"].shape == (6, F)
    for row in b["tokens"]:
      (i,) = [i for i, e in want.items() if np.array_equal(e, row)]
      seen.add(i)
  it.close()
  assert seen == set(range(N))


def test_a_sample_without_an_embedding_and_a_missing_file_name_the_embed_stage(workdir):
  table = text_inputs.CaptionFeatures(["a", "b"], np.eye(2, dtype=np.float16))
  np.testing.assert_array_equal(table(["x", "y"], keys=["b", "a"]), [[0, 1], [1, 0]])
  with pytest.raises(KeyError, match="launch.py embed"):
    table(["x"], keys=["c"])
  os.remove(f"{workdir}/embed/train-00001.npz")
  cfg = loader.default_config()
  cfg.shards = "shards/train-*.tar"
  with pytest.raises(wd.MissingInput, match="embed"):
    text_inputs.training_tokenize(_config(), workdir, loader.load_index(cfg, workdir))


def test_keys_repeated_across_shards_are_refused(workdir):
  np.savez(f"{workdir}/embed/train-00002.npz", keys=np.array(["k000"]), emb=_emb(0)[None])
  cfg = loader.default_config()
  cfg.shards = "shards/train-*.tar"
  with pytest.raises(ValueError, match="repeat sample keys"):
    text_inputs.training_tokenize(_config(), workdir, loader.load_index(cfg, workdir))


def test_the_model_and_the_embeddings_must_agree_on_the_width(workdir):
  cfg = loader.default_config()
  cfg.shards = "shards/train-*.tar"
  with pytest.raises(ValueError, match="text.features=16 but embed/ gives 8"):
    text_inputs.training_tokenize(_config(16), workdir, loader.load_index(cfg, workdir))


def test_feature_tower_is_a_linear_head_and_refuses_tokens():
  c = _config().model
  model = clip.CLIP(c, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(3, F)).astype(np.float32)
  w = np.asarray(model.text.text_projection.get_value())
  out = np.asarray(model.encode_text(jnp.asarray(x)))
  ref = x @ w
  np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5)
  with pytest.raises(ValueError, match="sentence embeddings"):
    model.encode_text(jnp.zeros((3, 24), jnp.int32))
  with pytest.raises(ValueError, match="text.features=-1"):
    clip.validate(_config(-1).model)


def test_training_runs_are_keyed_by_the_embed_stage(workdir):
  """A seed with a locked text tower depends on embed/: new embeddings, a new fingerprint."""
  from mode_jax.train import runs

  def fingerprint():
    return runs.decide(_config(), workdir, "seed", "seed", {}).fingerprint

  with pytest.raises(wd.MissingInput, match="embed"):
    fingerprint()
  manifest = lambda fp: {"stage": "embed", "state": "done", "fingerprint": fp}
  wd.write_json(provenance.manifest_path(workdir, "embed"), manifest("a" * 16))
  first = fingerprint()
  assert fingerprint() == first
  wd.write_json(provenance.manifest_path(workdir, "embed"), manifest("b" * 16))
  assert fingerprint() != first
  tokens = _config(0)
  before = runs.decide(tokens, workdir, "seed", "seed", {}).fingerprint
  os.remove(provenance.manifest_path(workdir, "embed"))
  assert runs.decide(tokens, workdir, "seed", "seed", {}).fingerprint == before   # no embed/
  # the caption encoder is one of a locked tower's fields (its prompts are encoded with it),
  # and a token tower's fields are those of a manifest made before text.features existed
  locked, other = _config(), _config()
  other.embed.pooling = "cls"
  assert runs.training_fields(locked)["embed"] != runs.training_fields(other)["embed"]
  assert "embed" not in runs.training_fields(tokens)
  assert "features" not in runs.training_fields(tokens)["model"]["text"]


def test_evaluation_encodes_prompts_with_the_embed_stages_encoder():
  from mode_jax.text import encoders
  c = _config(384)
  tok = text_inputs.eval_tokenizer(c, c.model)
  texts = ["a picture of a cat.", "a small drawing of a house."]
  got = tok(texts, context_length=24)
  want = encoders.make_encoder(encoders.resolve_config(c.embed)).encode(texts)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got.shape == (2, 384)
  again = text_inputs.eval_tokenizer(c, c.model)   # one encoder per process, texts memoised
  assert again is tok and set(again.memo) == set(texts)
  np.testing.assert_array_equal(again(texts[::-1] + texts), np.concatenate([got[::-1], got]))
  with pytest.raises(ValueError, match="text.features=8 but the sentence encoder"):
    text_inputs.eval_tokenizer(_config(8), _config(8).model)
  assert text_inputs.eval_tokenizer(_config(0), _config(0).model)(
      ["a cat"], context_length=24).dtype == np.int32
