"""CLIP_benchmark webdataset folders and the suites: read as they are, known answers."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from mode_jax.data.io import clip_benchmark as cb
from mode_jax.data.io import loader, wds_writer
from mode_jax.eval import evaluate as ev
from mode_jax.eval import files
from mode_jax.eval import model_refs
from mode_jax.stages import evaluate as evaluate_stage
from mode_jax.eval import retrieval
from mode_jax.eval import tasks as tasks_lib
from mode_jax.eval import zeroshot

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
NAMES = list(COLOURS)


def _webp(rgb, size=(12, 10)):
  buf = io.BytesIO()
  Image.new("RGB", size, rgb).save(buf, format="WEBP", lossless=True)
  return buf.getvalue()


def _folder(root, name, samples, *, per_shard=2, classnames=None, templates=None, kind=None,
            split="test"):
  d = os.path.join(root, name)
  n = wds_writer.write_shards(os.path.join(d, split, "%d.tar"), iter(samples), per_shard)
  n = len(os.listdir(os.path.join(d, split)))
  with open(os.path.join(d, split, "nshards.txt"), "w") as f:
    f.write(f"{n}\n")
  for fname, lines in ((cb.CLASSNAMES, classnames), (cb.TEMPLATES, templates),
                       (cb.TYPE, [kind] if kind else None)):
    if lines:
      with open(os.path.join(d, fname), "w") as f:
        f.write("\n".join(lines) + "\n")
  return d


# A zero-shot set without captions: label = colour index; sample z4 is mislabelled (a red
# image labelled blue), so a colour-perfect model scores 5/6 top-1.
LABELS = [0, 1, 2, 0, 2, 1]
TRUE = [0, 1, 2, 0, 0, 1]


def _zeroshot_samples():
  for i, (lab, true) in enumerate(zip(LABELS, TRUE)):
    img = {"webp": _webp(COLOURS[NAMES[true]])} if i % 2 else \
        {"png": np.full((10, 12, 3), COLOURS[NAMES[true]], np.uint8)}
    yield {"__key__": f"z{i}", **img, "cls": str(lab)}


def _retrieval_samples():
  caps = {"red": "a red square\nsomething red", "green": "green!", "blue": "blue\nblue sky\nb"}
  for i, c in enumerate(NAMES):
    yield {"__key__": f"r{i}", "webp": _webp(COLOURS[c]), "txt": caps[c]}


def colour_embedders():
  """A 'model' that sees colour: images -> mean RGB, texts -> the colour word they name."""
  def embed_images(images):
    x = np.asarray(images, np.float32).mean(axis=(1, 2))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)   # padding rows: 0

  def embed_texts(texts):
    out = np.zeros((len(texts), 3), np.float32)
    for i, t in enumerate(texts):
      hit = [k for k, c in enumerate(NAMES) if c in t] or [0]
      out[i, hit[0]] = 1.0
    return out
  return embed_images, embed_texts


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  r = str(tmp_path_factory.mktemp("cb"))
  _folder(r, "colours", _zeroshot_samples(), classnames=NAMES, templates=["a {c} image."])
  _folder(r, "colour_captions", _retrieval_samples(), kind="retrieval")
  return r


def _in_cfg():
  c = loader.default_config()
  c.resolution, c.batch_size, c.num_workers = 8, 4, 0
  return c


def test_zeroshot_folder_without_captions_scores_known_answer(root):
  tf = cb.open_task(os.path.join(root, "colours"))
  assert tf.kind == "zeroshot" and tf.classnames == NAMES and tf.templates == ["a {c} image."]
  task = tasks_lib.suite_task(root, {"name": "colours", "folders": ("colours",)})
  assert task.pattern.endswith("test/{0..2}.tar")
  ei, et = colour_embedders()
  out = ev.evaluate_zeroshot(ei, et, "colours", task.spec(),
                             model_refs.batches(_in_cfg(), None, task.pattern, 4))
  assert out["labels"].tolist() == LABELS
  np.testing.assert_array_equal(out["logits"].argmax(1), TRUE)
  assert zeroshot.task_score("top1", out["logits"], out["labels"]) == pytest.approx(5 / 6)


def test_retrieval_folder_reads_every_caption_line(root):
  task = tasks_lib.suite_task(root, {"name": "cc", "folders": ("colour_captions",),
                                     "kind": "retrieval"})
  assert task.kind == "retrieval"
  caps = tasks_lib.captions_per_image(task, None)
  assert caps == [["a red square", "something red"], ["green!"], ["blue", "blue sky", "b"]]
  ei, et = colour_embedders()
  out = ev.evaluate_retrieval(ei, et, caps, model_refs.batches(_in_cfg(), None,
                                                                     task.pattern, 4))
  assert out["txt_to_img"].tolist() == [0, 0, 1, 2, 2, 2]
  m = retrieval.recall(out["logits"], out["txt_to_img"], ks=(1,))
  # every image finds one of its captions; caption "b" names no colour -> embedded as red
  assert m["i2t_R@1"] == 1.0 and m["t2i_R@1"] == pytest.approx(5 / 6)


def caption_words(texts):
  """A sentence encoder that tells captions apart: unit bag of letters a-z."""
  out = np.zeros((len(texts), 26), np.float32)
  for i, t in enumerate(texts):
    for ch in t:
      if "a" <= ch <= "z":
        out[i, ord(ch) - 97] += 1
  return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_retrieval_keeps_each_caption_with_its_image_past_bad_samples(tmp_path):
  """Regression: captions were paired with images by count, so an unreadable image (or,
  in our own layout, a caption-less sample) shifted every later caption onto the wrong
  image, or aborted the task."""
  def samples(own_layout):
    rows = [("red", "a red square"), (None, "green lies here"), ("blue", "blue sky"),
            ("green", "")]
    for i, (colour, cap) in enumerate(rows):
      img = {"webp": _webp(COLOURS[colour])} if colour else {"webp": b"not an image"}
      text = ({"json": {"texts": [cap]}} if cap else {"json": {"label": 0}}) if own_layout \
          else {"txt": cap}
      yield {"__key__": f"r{i}", **img, **text}
  ei, et = colour_embedders()
  for own in (False, True):
    d = _folder(str(tmp_path), f"bad{own}", samples(own), kind="retrieval")
    task = tasks_lib.Task("bad", "retrieval", "mean_R@1", tasks_lib.cb.TaskFolder(
        d, "retrieval", None, None).shard_pattern(), captions="json" if own else "txt_lines")
    caps = tasks_lib.captions_per_image(task, None)
    assert caps == [["a red square"], ["green lies here"], ["blue sky"], []]
    out = ev.evaluate_retrieval(ei, et, caps, model_refs.batches(_in_cfg(), None,
                                                                       task.pattern, 4))
    assert out["logits"].shape == (3, 2)          # the unreadable image left with its caption
    assert out["txt_to_img"].tolist() == [0, 1]   # red -> row 0 (red), blue -> row 1 (blue)
    m = retrieval.recall(out["logits"], out["txt_to_img"], ks=(1,))
    assert m["t2i_R@1"] == 1.0 and m["i2t_R@1"] == 1.0
    # the metadata rows (one per caption, read or not) line up with the caption columns
    meta = ev.metadata_embedding(caption_words, "bad", {"kind": "retrieval"}, caps)
    w = str(tmp_path / f"w{own}")
    files.write_task_logits(w, "dense", "bad", out["logits"], out["labels"],
                            out["txt_to_img"], txt_index=out["txt_index"])
    rows = files.caption_rows(files.read_task_logits(w, "dense", "bad"), len(meta))
    np.testing.assert_allclose(meta[rows], caption_words(["a red square", "blue sky"]))


def test_suite_skips_absent_tasks_and_reads_package_lists(root, tmp_path):
  r = str(tmp_path)
  # an MNIST folder without classnames.txt or templates: the clip-benchmark package has both
  digits = ({"__key__": f"d{i}", "png": np.full((8, 8, 3), 10 * i, np.uint8), "cls": str(i)}
            for i in range(4))
  _folder(r, "wds_mnist", digits)
  cfg = tasks_lib.default_config()
  cfg.suite, cfg.root = "mode26", r
  tasks, skipped = tasks_lib.resolve(cfg, None)
  assert list(tasks) == ["mnist"] and len(skipped) == 25
  assert "no task folder" in skipped["imagenet1k"]
  mnist = tasks["mnist"]
  assert mnist.metric == "top1" and len(mnist.classnames) == 10
  assert mnist.templates == ["a photo of the number: \"{c}\"."]   # clip-benchmark's own
  assert mnist.spec()["n_classes"] == 10
  # the suite's special metrics
  from configs import eval_mode26
  metric = {t["name"]: t["metric"] for t in eval_mode26.TASKS}
  assert metric["pets"] == metric["fgvc_aircraft"] == "mean_per_class"
  assert metric["kinetics700"] == "top1_top5" and metric["hateful_memes"] == "roc_auc"
  # OpenAI's prompts.md fills what the package lacks
  ucf = tasks_lib.package_classnames({"openai": "UCF101"})
  assert len(ucf) == 101 and len(tasks_lib.package_templates({"openai": "UCF101"})) == 48


def test_datacomp_suite_has_38_tasks_and_says_why_it_skips(tmp_path):
  r = str(tmp_path)
  _folder(r, "wds_retrieval-flickr30k", _retrieval_samples(), kind="retrieval")
  _folder(r, "wds_voc2007", _zeroshot_samples(), kind="multilabel")   # one bad folder
  cfg = tasks_lib.default_config()
  cfg.suite, cfg.root = "datacomp38", r
  tasks, skipped = tasks_lib.resolve(cfg, None)
  assert list(tasks) == ["flickr30k"] and tasks["flickr30k"].kind == "retrieval"
  assert len(tasks) + len(skipped) == 38
  assert "not implemented" in skipped["winogavil"]
  assert "multilabel" in skipped["voc2007"]          # skipped with its reason, not fatal
  cfg.tasks = "flickr30k,nonsense"
  with pytest.raises(ValueError, match="nonsense"):
    tasks_lib.resolve(cfg, None)


def test_suite_needs_a_root():
  cfg = tasks_lib.default_config()
  cfg.suite = "mode26"
  with pytest.raises(ValueError, match="evaluate.root"):
    tasks_lib.resolve(cfg, None)


def test_evaluate_stage_runs_a_public_clip_from_a_local_folder_on_a_suite(tmp_path):
  """`launch.py evaluate --config configs/eval_mode26.py:root=R,models=tiny=F`, in process:
  a HF CLIPModel folder on the suite's one present task gives the logits its own forward
  pass gives, the absent tasks are listed as skipped, and a rerun is skipped."""
  from flax import nnx
  from configs import eval_mode26
  from mode_jax.eval import bundle
  from mode_jax import workdir as wd
  from mode_jax.eval import files
  from mode_jax.models import clip as clip_lib, convert, embedders
  from mode_jax.text.clip_bpe import ClipTokenizer
  root, w, folder = (str(tmp_path / p) for p in ("cb", "work", "tiny"))
  images = [np.random.default_rng(i).integers(0, 256, (20, 24, 3), np.uint8) for i in range(5)]
  _folder(root, "wds_mnist", ({"__key__": f"d{i}", "png": im, "cls": str(i)}
                              for i, im in enumerate(images)), per_shard=3)
  mc = clip_lib.default_config()
  mc.variant, mc.image_size, mc.context_length = "mu/8", 16, 16
  mc.vision.update(width=32, depth=1, heads=2)
  mc.text.update(width=32, depth=1, heads=2)
  mc.embed_dim = 16
  model = clip_lib.CLIP(mc, rngs=nnx.Rngs(3))
  bundle.write_hf_model(folder, mc, bundle.model_params(model))

  config = eval_mode26.get_config(f"root={root},models=tiny={folder}")
  config.eval_batch_size = 8
  evaluate_stage.run(config, w)
  got = files.read_task_logits(w, "tiny", "mnist")
  assert got["logits"].shape == (5, 10) and got["labels"].tolist() == list(range(5))
  assert float(got["logit_scale"]) == pytest.approx(float(np.exp(model.logit_scale.get_value())))
  assert len(files.read_skipped(w)) == 25 and not wd.exists(wd.path(w, "eval", "meta_emb"))
  assert "| mnist | top1 |" in open(os.path.join(w, "eval", "scores.md")).read()
  # the same numbers by hand: converted weights, center crop, the task's prompts
  cfg, params = convert.load_pretrained(folder)
  ref = clip_lib.CLIP(cfg, rngs=nnx.Rngs(0))
  convert.load_into(ref, params)
  ei, et = embedders.make_embedders(ref, ClipTokenizer(), context_length=16)
  from mode_jax.data.io import preprocess
  from mode_jax.eval import features
  task = tasks_lib.resolve(config.evaluate, w)[0]["mnist"]
  cls = features.class_features(et, task.classnames, task.templates)
  x = np.stack([preprocess.resize_center_crop(im, 16) for im in images])
  np.testing.assert_allclose(got["logits"], features.cosine_logits(ei(x), cls), atol=1e-5)
  npz = os.path.join(w, files.logits_rel("tiny", "mnist"))
  before = os.path.getmtime(npz)
  evaluate_stage.run(config, w)
  assert os.path.getmtime(npz) == before
  # a changed task (here its templates) is evaluated again: done.json keys on its fingerprint
  with open(os.path.join(root, "wds_mnist", cb.TEMPLATES), "w") as f:
    f.write("a digit: {c}.\n")
  evaluate_stage.run(config, w)
  assert os.path.getmtime(npz) > before
  assert files.read_task_spec(w, "mnist")["templates"] == ["a digit: {c}."]
  # a relative root is relative to where the command runs, not to the workdir
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path)
    rel = eval_mode26.get_config("root=cb")
    assert list(tasks_lib.resolve(rel.evaluate, w)[0]) == ["mnist"]
    assert tasks_lib.resolve(rel.evaluate, w)[0]["mnist"].pattern.startswith(root)
  finally:
    os.chdir(cwd)
  for bad in ("seed=" + folder, "dense=" + folder, "x=gs://b/m.pt", "y=" + folder + "|swish"):
    config.evaluate.models = bad
    with pytest.raises(ValueError):
      model_refs.eval_models(config, w)
