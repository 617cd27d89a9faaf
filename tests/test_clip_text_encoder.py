"""CLIP text tower as the embedder (Table 7): equals transformers.CLIPModel's text features."""

import numpy as np
import pytest

from mode_jax.text import clip_bpe, clip_text_encoder, encoders

try:
  clip_bpe.default_bpe_path()
except FileNotFoundError:
  pytest.skip("needs the CLIP merges: pip install --no-deps open-clip-torch",
              allow_module_level=True)

TEXTS = ["a photo of a cat", "an icon of a red truck", "t-shirt", "", "a very long caption " * 9]


def _hf_clip(folder):
  torch = pytest.importorskip("torch", reason="pip install torch==2.13.0")
  transformers = pytest.importorskip("transformers", reason="pip install transformers")
  torch.manual_seed(0)
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=49408, hidden_size=48, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=16, patch_size=8),
      projection_dim=24)
  model = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(folder, safe_serialization=True)
  return torch, model


def test_equals_transformers_text_features(tmp_path):
  torch, model = _hf_clip(tmp_path)
  enc = clip_text_encoder.ClipTextEncoder(str(tmp_path))
  assert enc.dim == 24 and enc.context_length == 16
  ours = enc.encode(TEXTS, batch_size=4)   # two batches, the second padded
  tokens = enc.tokenizer(TEXTS, context_length=16)
  with torch.no_grad():
    ref = model.get_text_features(input_ids=torch.tensor(tokens, dtype=torch.long))
  ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
  ref = (ref / ref.norm(dim=-1, keepdim=True)).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embed_config_selects_it_and_fingerprints_the_weights(tmp_path):
  _hf_clip(tmp_path / "clip")
  cfg = encoders.default_config()
  cfg.encoder = f"clip:{tmp_path / 'clip'}"
  enc = encoders.make_encoder(cfg)
  assert isinstance(enc, clip_text_encoder.ClipTextEncoder)
  assert encoders.fingerprint(cfg) != encoders.fingerprint(encoders.default_config())
  cfg.encoder = f"clip:{tmp_path / 'missing'}"
  with pytest.raises(FileNotFoundError, match="missing"):
    encoders.make_encoder(cfg)
