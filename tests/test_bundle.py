"""MoDE bundles: HF CLIPModel folders that transformers loads, and classify from a bundle alone."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mode_jax.eval import bundle
from mode_jax.eval import classify
from mode_jax.models import loader as model_loader
from mode_jax.stages import classify as classify_stage
from mode_jax import constants
from mode_jax.models import clip as clip_lib
from mode_jax.models import convert
from mode_jax.models import embedders
from tests import test_models

CONTEXT = 16


def tiny_config(**kw):
  """test_models' CPU-sized CLIP over the real CLIP BPE vocabulary, so our tokenizer's ids
  fit."""
  return test_models.tiny_config(**{"vocab_size": constants.VOCAB_SIZE,
                                    "context_length": CONTEXT, **kw})


def random_model(cfg, seed=0):
  """A CLIP with random numpy parameters of CLIP-like scale (no per-op init compiles), every
  one non-trivial: fresh LayerNorms and biases would be identities and zeros."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = [k.key for k in path if hasattr(k, "key")][-1]   # the Param's name, not `.value`
    noise = rng.normal(size=x.shape).astype(np.float32)
    if name == "scale":
      return 1 + 0.1 * noise
    if name in ("logit_scale", "logit_bias"):
      return np.asarray(2.0 if name == "logit_scale" else -5.0, np.float32)
    if name == "bias" or x.ndim < 2:
      return 0.05 * noise
    return noise / np.sqrt(x.shape[-2])   # kernels, embeddings: fan-in scaling

  return nnx.merge(graphdef, jax.tree.map_with_path(fill, abstract))


@functools.cache
def _tokenizer():
  from mode_jax.text.clip_bpe import ClipTokenizer
  return ClipTokenizer(context_length=CONTEXT)


TEXTS = ["a photo of a cat.", "a blurry photo of the red car", "x",
         "a much longer caption that runs well past sixteen tokens of context, surely"]


@pytest.mark.parametrize("kw", [{}, {"scan_layers": True, "logit_bias": True},
                                {"act": "gelu_tanh"}])
def test_exported_folder_loads_in_transformers_with_our_embeddings(tmp_path, kw):
  torch = pytest.importorskip("torch", reason="pip install torch==2.13.0")
  transformers = pytest.importorskip("transformers", reason="pip install transformers")
  cfg = tiny_config(**kw)
  model = random_model(cfg)
  folder = str(tmp_path / "expert_0")
  extras = bundle.write_hf_model(folder, cfg, bundle.model_params(model))
  hf_cfg = json.load(open(os.path.join(folder, "config.json")))
  assert hf_cfg["text_config"]["eos_token_id"] == constants.VOCAB_SIZE - 1
  assert hf_cfg["text_config"]["max_position_embeddings"] == CONTEXT
  assert (extras["logit_bias"] is not None) == bool(cfg.logit_bias)
  # convert.load_pretrained reads the activation back (regression: gelu_tanh came back as gelu)
  assert convert.load_pretrained(folder)[0].act == cfg.act

  hf = transformers.CLIPModel.from_pretrained(folder).eval()
  tokens = _tokenizer()(TEXTS)
  assert (tokens[:, -1] == constants.VOCAB_SIZE - 1).any()   # one text was truncated
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  pixels = (images / 255.0 - np.asarray(constants.IMAGE_MEAN)) / np.asarray(constants.IMAGE_STD)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens, dtype=torch.long),
             attention_mask=torch.tensor(tokens != 0, dtype=torch.long),
             pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32))
  norm = lambda x: (x / x.norm(dim=-1, keepdim=True)).numpy()
  embed_images, embed_texts = embedders.make_embedders(model, _tokenizer(),
                                                       context_length=CONTEXT, batch_size=4)
  ours_img, ours_txt = embed_images(images), embed_texts(TEXTS)
  np.testing.assert_allclose(norm(out.image_embeds), ours_img, atol=1e-4)
  np.testing.assert_allclose(norm(out.text_embeds), ours_txt, atol=1e-4)

  # The one model loader reads the folder back to the same model: as a HF folder, and as a
  # bundle's model folder, whose logit bias and config come from the bundle's mode.json.
  portable = bundle.portable_model_config(cfg)
  back, _ = model_loader.load_model(folder, model_cfg=portable)
  _, back_texts = embedders.make_embedders(back, _tokenizer(), context_length=CONTEXT,
                                          batch_size=4)
  np.testing.assert_allclose(back_texts(TEXTS), ours_txt, atol=1e-6)
  assert model_loader.source_kind(folder) == "hf"
  json.dump({"model": portable.to_dict(), "models": {"expert_0": {"folder": "expert_0",
             **extras}}}, open(tmp_path / bundle.MODE_JSON, "w"))
  assert model_loader.source_kind(folder) == "bundle"
  back, back_cfg = model_loader.load_model(folder)
  assert back_cfg.to_dict() == portable.to_dict()
  _, back_texts = embedders.make_embedders(back, _tokenizer(), context_length=CONTEXT,
                                          batch_size=4)
  np.testing.assert_allclose(back_texts(TEXTS), ours_txt, atol=1e-6)
  if cfg.logit_bias:
    assert float(back.logit_bias.get_value()) == pytest.approx(extras["logit_bias"])


def test_hf_state_dict_round_trips_exactly():
  params = bundle.model_params(random_model(tiny_config(scan_layers=True)))
  back = convert.params_from_hf(convert.hf_from_params(params))
  want = convert.unstack_blocks(params)
  want.pop("logit_bias", None)
  jax.tree.map(np.testing.assert_array_equal, back, want)


def test_export_clamps_the_logit_scale_as_our_model_applies_it(tmp_path):
  """HF multiplies by exp(logit_scale) unclamped; ours clamps at ln 100 (regression:
  the raw value was exported)."""
  cfg = tiny_config()
  params = dict(bundle.model_params(random_model(cfg)), logit_scale=np.float32(6.0))
  extras = bundle.write_hf_model(str(tmp_path / "m"), cfg, params)
  hf_cfg = json.load(open(tmp_path / "m" / "config.json"))
  assert extras["logit_scale"] == pytest.approx(constants.LOGIT_SCALE_MAX)
  assert hf_cfg["logit_scale_init_value"] == pytest.approx(constants.LOGIT_SCALE_MAX)
  sd = convert.read_state_dict(str(tmp_path / "m" / "model.safetensors"))
  assert float(sd["logit_scale"]) == pytest.approx(constants.LOGIT_SCALE_MAX)


def test_unrepresentable_pooling_is_refused_in_one_line():
  with pytest.raises(ValueError, match="eos_id=2.*cannot be represented"):
    convert.hf_config(tiny_config(eos_id=2))


# ---- classify from a synthetic bundle ---------------------------------------------------

def _minilm_or_skip():
  from mode_jax.text import sentence_encoder
  try:
    return sentence_encoder.minilm_dir() if os.path.isdir(sentence_encoder.minilm_dir()) \
        else pytest.skip(sentence_encoder.MINILM_INSTALL)
  except FileNotFoundError:
    pytest.skip(sentence_encoder.MINILM_INSTALL)


def _write_images(folder):
  os.makedirs(folder)
  rng = np.random.default_rng(1)
  for i, (ext, size) in enumerate([("png", (40, 50)), ("jpg", (64, 48)), ("webp", (32, 32)),
                                   ("png", (33, 90))]):
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
        os.path.join(folder, f"{i}.{ext}"))
  open(os.path.join(folder, "broken.jpg"), "wb").write(b"\xff\xd8\xff not a jpeg")
  open(os.path.join(folder, "notes.txt"), "w").write("not an image")


def test_classify_equals_the_repo_pipeline_functions(tmp_path):
  from mode_jax.data.io import preprocess
  from mode_jax.data.io import webdataset as wds
  from mode_jax.ensemble import ensemble, routing
  from mode_jax.eval import features, templates
  from mode_jax.text import encoders, sentence_encoder
  _minilm_or_skip()
  cfg = tiny_config()
  models = {name: random_model(cfg, seed) for seed, name in
            enumerate(["dense", "expert_0", "expert_1", "expert_2"])}
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(6, 384)).astype(np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  f2e = np.array([0, 1, 2, 2, 1, 0], np.int32)
  config = ml_collections.ConfigDict({"report": {"mode": "paper", "top_k": 2}})
  out = str(tmp_path / "bundle")
  bundle.write_bundle(
      out, [(n, 7, lambda m=m: bundle.model_params(m)) for n, m in models.items()],
      model_cfg=cfg, centers=centers, fine_to_expert=f2e, order=[2, 0, 1],
      embed_cfg=encoders.default_config(), routing=bundle.routing_info(config),
      provenance={"test": True})
  assert os.path.isfile(os.path.join(out, "sentence_encoder", "model.safetensors"))
  images = str(tmp_path / "images")
  _write_images(images)
  classes = "cat,red car|automobile,tree"
  temps = ["a photo of a {c}.", "a drawing of the {}"]
  tfile = tmp_path / "templates.txt"
  tfile.write_text("\n".join(temps) + "\n")
  got = classify_stage.run(out, images, classes, templates=str(tfile), top=2,
                      out=str(tmp_path / "r.json"))
  assert got["templates"] == temps
  assert [os.path.basename(p) for p in got["images"]] == ["0.png", "1.jpg", "2.webp", "3.png"]
  assert [os.path.basename(p) for p in got["skipped"]] == ["broken.jpg"]

  # Directly, with the repo's functions and the original (unexported) models.
  names = [["cat"], ["red car", "automobile"], ["tree"]]
  pixels = np.stack([preprocess.resize_center_crop(
      wds.decode_image(open(p, "rb").read(), draft_size=32), 32) for p in got["images"]])
  enc = sentence_encoder.SentenceEncoder()
  meta = features.class_features(lambda t: enc.encode(list(t)), names, temps)
  w = routing.routing_weights(jnp.asarray(meta), jnp.asarray(centers), jnp.asarray(f2e), 3,
                              "paper", 2)
  logits = []
  for c in range(3):
    ei, et = embedders.make_embedders(models[f"expert_{c}"], _tokenizer(),
                                      context_length=CONTEXT)
    logits.append(features.cosine_logits(ei(pixels), features.class_features(et, names, temps)))
  want = np.asarray(ensemble.combine(jnp.asarray(np.stack(logits)), w))
  np.testing.assert_allclose(got["routing_weights"], np.asarray(w), atol=1e-6)
  np.testing.assert_allclose(got["expert_logits"], np.stack(logits), atol=1e-5)
  np.testing.assert_allclose(got["logits"], want, atol=1e-5)

  # The command's files: JSON (with the routing weights) and CSV; OpenAI's 80 by default.
  saved = json.load(open(tmp_path / "r.json"))
  assert len(saved["images"]) == 4 and len(saved["images"][0]["top"]) == 2
  assert saved["images"][0]["top"][0]["score"] == pytest.approx(want[0].max(), abs=1e-5)
  assert saved["skipped"] and list(saved["routing_weights"]) == ["expert_0", "expert_1",
                                                                  "expert_2"]
  classify.write_results(got, classify.top_classes(got, 3), str(tmp_path / "r.csv"))
  assert len(open(tmp_path / "r.csv").read().splitlines()) == 1 + 4 * 3
  default = classify.parse_templates(None, bundle.load(out))
  assert default == templates.openai_imagenet_templates() and len(default) == 80


def test_classify_command_needs_no_config_or_workdir(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = lambda *a: subprocess.run([sys.executable, os.path.join(root, "launch.py"), "classify",
                                   *a], capture_output=True, text=True, cwd=root, timeout=120)
  r = run("--images", str(tmp_path), "--classes", "a,b")
  assert r.returncode != 0 and "classify needs --bundle" in r.stderr, r.stderr[-500:]
  r = run("--bundle", str(tmp_path), "--images", str(tmp_path), "--classes", "a,b")
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode != 0 and last.startswith("error:") and "launch.py export" in last, last
