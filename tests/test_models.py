"""CLIP towers: shapes, config errors, and peer checks against transformers.CLIPModel."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax.models import clip as clip_lib
from mode_jax.models import convert
from mode_jax.models import transformer


def tiny_config(**kw):
  c = clip_lib.default_config()
  c.variant, c.image_size, c.vocab_size, c.context_length = "mu/8", 32, 100, 16
  c.vision.update(width=64, depth=2, heads=4)
  c.text.update(width=48, depth=2, heads=4)
  c.embed_dim = 32
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def test_shapes_normalised_and_scale():
  m = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(0))
  img, txt, scale, bias = m(jnp.ones((3, 32, 32, 3)), jnp.array([[1, 5, 99, 0]] * 3))
  assert img.shape == (3, 32) and txt.shape == (3, 32) and bias is None
  np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)


def test_logit_scale_clamped_at_100():
  m = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(0))
  m.logit_scale.set_value(jnp.asarray(10.0))
  _, _, scale, _ = m(jnp.ones((1, 32, 32, 3)), jnp.array([[1, 99]]))
  np.testing.assert_allclose(scale, 100.0, rtol=1e-5)


def test_text_pooling_ignores_tokens_after_eot():
  """Causal mask + EOT pooling: padding after the EOT token cannot change the output."""
  m = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(1))
  a = m.encode_text(jnp.array([[1, 7, 8, 99, 0, 0]]))
  b = m.encode_text(jnp.array([[1, 7, 8, 99, 42, 13]]))
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_compute_float32_params():
  m = clip_lib.CLIP(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
  leaves = jax.tree.leaves(nnx.state(m, nnx.Param))
  assert all(x.dtype == jnp.float32 for x in leaves)
  ref = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(0))
  x, t = jax.random.normal(jax.random.key(0), (2, 32, 32, 3)), jnp.array([[1, 5, 99]] * 2)
  np.testing.assert_allclose(m.encode_image(x), ref.encode_image(x), atol=5e-2)
  np.testing.assert_allclose(m.encode_text(t), ref.encode_text(t), atol=5e-2)


def _loss(x, t):
  def loss(m):
    img, txt, _, _ = m(x, t)
    return jnp.sum(img * txt)
  return loss


def _batch():
  return jax.random.normal(jax.random.key(0), (2, 32, 32, 3)), jnp.array([[1, 5, 99], [1, 99, 0]])


def _grads(cfg):
  m = clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))
  return jax.tree.leaves(nnx.grad(_loss(*_batch()))(m))


@pytest.mark.parametrize("remat", [r for r in transformer.REMAT_POLICIES if r != "none"])
def test_remat_gives_same_gradients(remat):
  for a, b in zip(_grads(tiny_config()), _grads(tiny_config(remat=remat))):
    np.testing.assert_allclose(a, b, atol=1e-6)


# --- attention kernels ----------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_xla_attention_equals_einsum(causal):
  q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 7, 4, 8))
  run = lambda impl: lambda q, k, v: transformer.attend(q, k, v, causal=causal, impl=impl)
  np.testing.assert_allclose(run("xla")(q, k, v), run("einsum")(q, k, v), atol=1e-5)
  loss = lambda impl: lambda *a: jnp.sum(jnp.sin(run(impl)(*a)))
  for a, b in zip(jax.grad(loss("xla"), (0, 1, 2))(q, k, v),
                  jax.grad(loss("einsum"), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_xla_attention_model_equals_einsum():
  """Both towers (the text one causal) through "xla": same outputs and gradients."""
  x, t = _batch()
  ref = clip_lib.CLIP(tiny_config(attention="einsum"), rngs=nnx.Rngs(0))
  got = clip_lib.CLIP(tiny_config(attention="xla"), rngs=nnx.Rngs(0))
  assert got.text.transformer.blocks[0].attn.impl == "xla"
  for a, b in zip(ref(x, t)[:2], got(x, t)[:2]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for a, b in zip(_grads(tiny_config(attention="einsum")), _grads(tiny_config(attention="xla"))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_pallas_tpu_padding_is_masked(monkeypatch):
  """Padding to the TPU kernel's blocks changes nothing: checked on CPU with the
  kernel's pure-JAX reference (same arguments) standing in for the kernel."""
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash
  monkeypatch.setattr(tpu_flash, "flash_attention", tpu_flash.mha_reference_no_custom_vjp)
  q, k, v = jax.random.normal(jax.random.key(2), (3, 2, 9, 2, 8))
  for causal in (False, True):
    np.testing.assert_allclose(transformer.attend(q, k, v, causal=causal, impl="pallas_tpu"),
                               transformer.attend(q, k, v, causal=causal), atol=1e-5)


@pytest.mark.parametrize("backend,dtype,head_dim,tokens,want", [
    ("cpu", "bfloat16", 64, 50, "einsum"),
    ("cpu", "float32", 64, 128, "einsum"),
    ("gpu", "bfloat16", 64, 50, "cudnn"),
    ("gpu", "float16", 128, 77, "cudnn"),
    ("gpu", "float32", 64, 50, "xla"),       # cuDNN flash takes bf16/fp16 only
    ("gpu", "bfloat16", 12, 50, "xla"),      # head width not a multiple of 8
    ("gpu", "bfloat16", 256, 50, "xla"),     # wider than pre-Hopper cuDNN takes
    ("tpu", "bfloat16", 64, 256, "pallas_tpu"),
    ("tpu", "bfloat16", 64, 197, "xla"),     # 197 tokens do not tile 128-blocks
])
def test_auto_attention_resolution(backend, dtype, head_dim, tokens, want):
  resolve = lambda name: transformer.resolve_attention(
      name, backend=backend, dtype=jnp.dtype(dtype), head_dim=head_dim, tokens=tokens)
  assert resolve("auto") == want and resolve("xla") == "xla"


# --- scan over blocks -----------------------------------------------------------------

def test_scanned_blocks_equal_the_loop():
  """Loop weights stacked into a scanned model (with remat inside the scanned body):
  same outputs and gradients."""
  x, t = _batch()
  loop = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(0))
  scanned = clip_lib.CLIP(tiny_config(scan_layers=True, remat="save_attention"), rngs=nnx.Rngs(1))
  convert.load_into(scanned, nnx.to_pure_dict(nnx.state(loop, nnx.Param)))
  kernel = nnx.state(scanned, nnx.Param)["visual"]["transformer"]["blocks"]["c_fc"]["kernel"]
  assert kernel.shape == (2, 64, 256)
  for a, b in zip(loop(x, t)[:2], scanned(x, t)[:2]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  want = convert.stack_blocks(nnx.to_pure_dict(nnx.grad(_loss(x, t))(loop)))
  got = nnx.to_pure_dict(nnx.grad(_loss(x, t))(scanned))
  assert jax.tree.structure(want) == jax.tree.structure(got)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("variant", "XXL/16", "variant"),
    ("variant", "B", "variant"),
    ("image_size", 30, "image_size"),
    ("dtype", "int8", "dtype"),
    ("act", "relu6", "act"),
    ("remat", "sometimes", "remat"),
    ("attention", "flash", "attention"),
    ("attention", "cudnn", "attention"),       # the tests run on CPU
    ("attention", "pallas_tpu", "attention"),
])
def test_bad_config_names_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    clip_lib.validate(tiny_config(**{field: value}))


# --- peer checks ----------------------------------------------------------------------

def _hf_model(tmp_path, hidden_act="quick_gelu", eos_token_id=2):
  torch = pytest.importorskip("torch", reason="pip install torch==2.13.0")
  transformers = pytest.importorskip("transformers", reason="pip install transformers")
  torch.manual_seed(0)
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=100, hidden_size=48, intermediate_size=192,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                       hidden_act=hidden_act, eos_token_id=eos_token_id),
      vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, image_size=32, patch_size=8,
                         hidden_act=hidden_act),
      projection_dim=32)
  model = transformers.CLIPModel(cfg).eval()
  # Random init leaves LayerNorms at identity; perturb every tensor so the check bites.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(tmp_path, safe_serialization=True)
  return torch, model


def _inputs(eot=99):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  tokens = np.zeros((3, 16), np.int64)
  for i, n in enumerate([5, 9, 15]):
    tokens[i, 0] = 98
    tokens[i, 1:n] = rng.integers(1, 90, n - 1)
    tokens[i, n] = eot
  return images, tokens


def _torch_outputs(torch, model, images, tokens, mask=None):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=mask,
                pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
  norm = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()
  return norm(out.image_embeds), norm(out.text_embeds), out.logits_per_image.numpy()


def _ours(cfg, params, images, tokens):
  m = clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))
  convert.load_into(m, params)
  img, txt, scale, _ = m(jnp.asarray(images), jnp.asarray(tokens))
  return np.asarray(img), np.asarray(txt), np.asarray(scale * img @ txt.T)


@pytest.mark.parametrize("act,scan", [("quick_gelu", False), ("gelu", False), ("quick_gelu", True)])
def test_hf_clip_peer(tmp_path, act, scan):
  torch, model = _hf_model(tmp_path, hidden_act=act)
  images, tokens = _inputs()
  ref = _torch_outputs(torch, model, images, tokens)
  cfg, params = convert.load_pretrained(str(tmp_path), scan_layers=scan)
  assert cfg.act == act and cfg.vision.heads == 4 and cfg.image_size == 32
  assert cfg.scan_layers == scan and cfg.vision.depth == 2
  if scan:
    assert params["text"]["transformer"]["blocks"]["c_fc"]["kernel"].shape == (2, 48, 192)
  for ours, theirs in zip(_ours(cfg, params, images, tokens), ref):
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_hf_clip_peer_eos_id(tmp_path):
  """Non-legacy HF configs pool at the first eos token, not at the largest id."""
  torch, model = _hf_model(tmp_path, eos_token_id=50)
  images, tokens = _inputs(eot=50)
  tokens[:, -1] = np.where(tokens[:, -1] == 0, 97, tokens[:, -1])  # a larger id after EOT
  mask = torch.ones(tokens.shape, dtype=torch.long)
  ref = _torch_outputs(torch, model, images, tokens, mask=mask)
  cfg, params = convert.load_pretrained(str(tmp_path))
  assert cfg.eos_id == 50
  for ours, theirs in zip(_ours(cfg, params, images, tokens), ref):
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_openai_state_dict_layout(tmp_path):
  """An OpenAI-layout file (fused in_proj, conv1, [in, out] projections) converts to
  the same model as the HF layout it was transcribed from."""
  torch, model = _hf_model(tmp_path)
  from safetensors.numpy import save_file
  hf = {k: v.numpy() for k, v in model.state_dict().items()}
  oai = {}
  for tower, src, dst in (("v", "vision_model.encoder.layers", "visual.transformer.resblocks"),
                          ("t", "text_model.encoder.layers", "transformer.resblocks")):
    for i in range(2):
      s, d = f"{src}.{i}", f"{dst}.{i}"
      oai[f"{d}.attn.in_proj_weight"] = np.concatenate(
          [hf[f"{s}.self_attn.{n}_proj.weight"] for n in "qkv"])
      oai[f"{d}.attn.in_proj_bias"] = np.concatenate(
          [hf[f"{s}.self_attn.{n}_proj.bias"] for n in "qkv"])
      for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                   ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        for p in ("weight", "bias"):
          oai[f"{d}.{a}.{p}"] = hf[f"{s}.{b}.{p}"]
  pairs = {"visual.ln_pre": "vision_model.pre_layrnorm",
           "visual.ln_post": "vision_model.post_layernorm",
           "ln_final": "text_model.final_layer_norm"}
  for a, b in pairs.items():
    for p in ("weight", "bias"):
      oai[f"{a}.{p}"] = hf[f"{b}.{p}"]
  oai["visual.conv1.weight"] = hf["vision_model.embeddings.patch_embedding.weight"]
  oai["visual.class_embedding"] = hf["vision_model.embeddings.class_embedding"]
  oai["visual.positional_embedding"] = hf["vision_model.embeddings.position_embedding.weight"]
  oai["visual.proj"] = hf["visual_projection.weight"].T.copy()
  oai["token_embedding.weight"] = hf["text_model.embeddings.token_embedding.weight"]
  oai["positional_embedding"] = hf["text_model.embeddings.position_embedding.weight"]
  oai["text_projection"] = hf["text_projection.weight"].T.copy()
  oai["logit_scale"] = hf["logit_scale"]
  path = str(tmp_path / "openai.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in oai.items()}, path)

  images, tokens = _inputs()
  ref = _torch_outputs(torch, model, images, tokens)
  cfg, params = convert.load_pretrained(path)
  cfg.vision.heads, cfg.text.heads = 4, 4  # state dicts do not store heads
  for ours, theirs in zip(_ours(cfg, params, images, tokens), ref):
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_uint8_images_are_normalised_on_device_like_the_host():
  """uint8 input (the loader's, normalised in the tower) equals host-normalised floats."""
  from mode_jax import constants
  model = clip_lib.CLIP(tiny_config(), rngs=nnx.Rngs(0))
  u8 = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  host = (u8 - np.float32(255) * np.asarray(constants.IMAGE_MEAN)) / (
      np.float32(255) * np.asarray(constants.IMAGE_STD))
  a = model.encode_image(jnp.asarray(u8))
  b = model.encode_image(jnp.asarray(host, jnp.float32))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_trainer_loads_pretrained_weights_into_a_scanned_model(tmp_path):
  """init.pretrained with scan_layers: the trainer once filled the stacked state with
  the converter's per-layer layout (a structure mismatch)."""
  from mode_jax.train import config as config_lib
  from mode_jax.train import initial_state, sharding
  from mode_jax.train import state as state_lib
  torch, model = _hf_model(tmp_path)
  images, tokens = _inputs()
  ref = _torch_outputs(torch, model, images, tokens)
  c = config_lib.train_config()
  c.model, _ = convert.load_pretrained(str(tmp_path), scan_layers=True)
  c.init.pretrained = str(tmp_path)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  graphdef, _, _, shardings, init_fn = state_lib.build(
      c.model, c.optim, schedule_steps=2, mesh=mesh, rules=[(".*", "replicate")])
  state = initial_state.load_pretrained(c, init_fn(), shardings)
  img, txt, _, _ = state_lib.model_from_state(graphdef, state)(jnp.asarray(images),
                                                              jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(img), ref[0], atol=1e-4)
  np.testing.assert_allclose(np.asarray(txt), ref[1], atol=1e-4)
