"""Zero-shot evaluation: templates from installed packages, class features, known accuracies."""

import importlib.util

import jax
import numpy as np
import pytest
from sklearn.metrics import (balanced_accuracy_score, recall_score, roc_auc_score,
                             top_k_accuracy_score)

from mode_jax.eval import features, templates, zeroshot


def needs(package, install):
  return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                            reason=f"needs {package}: {install}")


@needs("open_clip", templates.OPEN_CLIP_INSTALL)
def test_openai_templates_and_imagenet_names():
  t = templates.openai_imagenet_templates()
  assert len(t) == 80 and len(set(t)) == 80
  assert t[0] == "a bad photo of a {c}." and all("{c}" in x for x in t)
  names = templates.imagenet_classnames()
  assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet paper"
  assert templates.task_templates("imagenet1k") == t


@needs("clip_benchmark", templates.CLIP_BENCHMARK_INSTALL)
def test_benchmark_files():
  assert templates.benchmark_classnames("mnist") == [str(i) for i in range(10)]
  assert templates.task_templates("mnist") == ['a photo of the number: "{c}".']
  assert len(templates.benchmark_classnames("pets")) == 37
  assert templates.benchmark_templates("no-such-task") is None


def test_missing_package_names_install():
  with pytest.raises(FileNotFoundError, match="pip install"):
    templates.package_file("surely_not_installed_pkg", "x.json", "pip install x")


def test_prompts_and_synonyms():
  assert templates.fill("a {} b", "cat") == "a cat b"
  assert templates.fill("a {c} b", "{x}") == "a {x} b"
  with pytest.raises(ValueError):
    templates.fill("no slot", "cat")
  p = templates.class_prompts([["cat", "kitty"], "dog"], ["a {c}.", "the {}"])
  assert p == [["a cat.", "the cat", "a kitty.", "the kitty"], ["a dog.", "the dog"]]


def toy_embed_texts(texts):
  """A deterministic, NOT normalised text embedding (so per-prompt normalising matters)."""
  out = []
  for t in texts:
    rng = np.random.default_rng(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)))
    out.append(rng.normal(size=16) * (1 + len(t) % 5))
  return np.stack(out).astype(np.float32)


def test_class_features_match_numpy():
  classes, temps = [["cat", "kitty"], "dog", ["bird"]], ["a {c}.", "a photo of the {c}", "{c}!"]
  got = zeroshot.class_features(toy_embed_texts, classes, temps)
  want = []
  for names in templates.as_synonyms(classes):
    e = toy_embed_texts([t.replace("{c}", n) for n in names for t in temps]).astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    m = e.mean(0)
    want.append(m / np.linalg.norm(m))
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


# Images carry their own feature: an image is [1, 4, 3] = a 12-d vector.
def toy_embed_images(images):
  x = np.asarray(images).reshape(len(images), -1)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def known_case():
  """10 images, 10 classes (one-hot features); the true class sits at a chosen rank."""
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6])
  ranks = np.array([0, 0, 0, 0, 0, 0, 0, 2, 4, 7])
  class_feats = np.eye(10, 12, dtype=np.float32)
  feats = np.zeros((10, 12), np.float32)
  for i, (y, r) in enumerate(zip(labels, ranks)):
    others = [c for c in range(10) if c != y]
    order = others[:r] + [y] + others[r:]       # classes in descending score
    feats[i, order] = np.linspace(1.0, 0.1, 10)
  return feats.reshape(10, 1, 4, 3), labels, class_feats


def batches(images, labels, size):
  for i in range(0, len(images), size):
    yield images[i:i + size], labels[i:i + size]


def test_known_accuracies():
  images, labels, class_feats = known_case()
  logits, y = zeroshot.zeroshot_logits(toy_embed_images, class_feats, batches(images, labels, 4))
  assert logits.shape == (10, 10) and logits.dtype == np.float32
  np.testing.assert_array_equal(y, labels)
  m = zeroshot.metrics(logits, y)
  assert m["top1"] == pytest.approx(0.7)
  assert m["top5"] == pytest.approx(0.9)
  assert m["mean_per_class"] == pytest.approx(4 / 7)   # classes 0-3 right, 4-6 wrong
  # raw cosines: no scale, no softmax
  np.testing.assert_allclose(logits, toy_embed_images(images) @ class_feats.T, rtol=1e-6)


def test_metrics_match_sklearn():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(200, 13)).astype(np.float32)
  labels = rng.integers(0, 13, 200)
  m = zeroshot.metrics(logits, labels)
  cls = np.arange(13)
  assert m["top1"] == pytest.approx(top_k_accuracy_score(labels, logits, k=1, labels=cls))
  assert m["top5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=cls))
  assert m["mean_per_class"] == pytest.approx(balanced_accuracy_score(labels,
                                                                      logits.argmax(1)))
  assert zeroshot.accuracy(logits, labels, 5) == pytest.approx(m["top5"])
  assert zeroshot.mean_per_class_accuracy(logits, labels) == pytest.approx(m["mean_per_class"])


def test_task_score_matches_sklearn():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(300, 11)).astype(np.float32)
  labels = rng.integers(0, 11, 300)
  cls = np.arange(11)
  top = lambda k: top_k_accuracy_score(labels, logits, k=k, labels=cls)
  assert zeroshot.task_score("top1", logits, labels) == pytest.approx(top(1))
  assert zeroshot.task_score("top1_top5", logits, labels) == pytest.approx((top(1) + top(5)) / 2)
  pred = logits.argmax(1)
  recall = recall_score(labels, pred, average="macro", labels=np.unique(labels))
  assert zeroshot.task_score("mean_per_class", logits, labels) == pytest.approx(recall)
  assert recall == pytest.approx(balanced_accuracy_score(labels, pred))


def test_roc_auc_with_ties_matches_sklearn():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 2, 400)
  logits = np.round(rng.normal(size=(400, 2)) + 0.5 * y[:, None] * [0, 1], 1)   # many ties
  score = logits[:, 1] - logits[:, 0]
  assert len(np.unique(score)) < 150
  want = roc_auc_score(y, score)
  assert zeroshot.task_score("roc_auc", logits, y) == pytest.approx(want, abs=1e-12)
  # the score ranks like the softmax probability of class 1 (CLIP_benchmark's). Computed
  # as exp/sum, equal differences can round to different probabilities (by CPU: numpy's
  # exp kernels differ), which breaks a few ties: each moves the AUC by 1/(2 n+ n-) ~ 1e-5.
  prob = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
  assert roc_auc_score(y, prob) == pytest.approx(want, abs=2e-4)
  np.testing.assert_allclose(zeroshot.average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def unlabelled_case(rng, n=240, n_cls=13, n_unl=30):
  """Logits and labels where `n_unl` rows are unlabelled (-1) and rank the LAST class first,
  so scoring them as the last class (what indexing with -1 does) inflates every metric."""
  labels = rng.integers(0, n_cls, n)
  logits = rng.normal(size=(n, n_cls)) + 0.8 * np.eye(n_cls)[labels]
  unl = rng.choice(n, n_unl, replace=False)
  labels[unl] = zeroshot.UNLABELLED
  logits[unl, -1] += 5.0
  return logits.astype(np.float32), labels, labels >= 0


def test_unlabelled_rows_are_left_out_of_every_metric():
  rng = np.random.default_rng(4)
  logits, labels, known = unlabelled_case(rng)
  x, y = logits[known], labels[known]
  cls = np.arange(13)
  top = lambda k: top_k_accuracy_score(y, x, k=k, labels=cls)
  pmc = balanced_accuracy_score(y, x.argmax(1))
  m = zeroshot.metrics(logits, labels)
  assert (m["top1"], m["top5"], m["mean_per_class"]) == pytest.approx((top(1), top(5), pmc))
  assert zeroshot.accuracy(logits, labels, 5) == pytest.approx(top(5))
  assert zeroshot.mean_per_class_accuracy(logits, labels) == pytest.approx(pmc)
  assert zeroshot.task_score("top1", logits, labels) == pytest.approx(top(1))
  assert zeroshot.task_score("top1_top5", logits, labels) == pytest.approx((top(1) + top(5)) / 2)
  assert zeroshot.task_score("mean_per_class", logits, labels) == pytest.approx(pmc)
  assert zeroshot.n_unlabelled(labels) == 30
  # binary: an unlabelled row is no negative
  y2 = rng.integers(0, 2, 200)
  l2 = rng.normal(size=(200, 2)) + 0.5 * y2[:, None] * [0, 1]
  y2[:25] = -1
  l2[:25] = [-3.0, 3.0]   # would outrank every positive as a "negative"
  want = roc_auc_score(y2[25:], l2[25:, 1] - l2[25:, 0])
  assert zeroshot.task_score("roc_auc", l2, y2) == pytest.approx(want, abs=1e-12)


def test_labels_outside_the_classes_are_errors():
  np.testing.assert_array_equal(zeroshot.labelled([2, -1, 0], 3), [True, False, True])
  with pytest.raises(ValueError, match=r"\[0, 3\) or -1.*\[-2\]"):
    zeroshot.metrics(np.zeros((2, 3)), [0, -2])
  with pytest.raises(ValueError, match=r"\[3\]"):
    zeroshot.task_score("top1", np.zeros((2, 3)), [0, 3])
  with pytest.raises(ValueError, match="no labelled rows"):
    zeroshot.accuracy(np.zeros((2, 3)), [-1, -1])


def test_bad_metric_or_task_shape():
  with pytest.raises(ValueError, match="top1_top5"):
    zeroshot.task_score("top3", np.zeros((2, 2)), [0, 1])
  with pytest.raises(ValueError, match="binary"):
    zeroshot.task_score("roc_auc", np.zeros((2, 3)), [0, 1])
  with pytest.raises(ValueError, match="both classes"):
    zeroshot.task_score("roc_auc", np.zeros((2, 2)), [1, 1])


def test_evaluate_glue():
  from mode_jax.eval import evaluate
  images, labels, _ = known_case()
  names = [f"c{i}" for i in range(10)]

  def embed_texts(texts):   # "x cK" -> one-hot K in 12-d: the known case's class features
    out = np.zeros((len(texts), 12), np.float32)
    for j, t in enumerate(texts):
      out[j, int(t.split("c")[-1].rstrip("."))] = 1.0
    return out

  spec = {"kind": "zeroshot", "classnames": names, "templates": ["a {}.", "the {c}"]}
  out = evaluate.evaluate_zeroshot(toy_embed_images, embed_texts, "toy", spec,
                                   batches(images, labels, 4))
  assert zeroshot.metrics(out["logits"], out["labels"])["top1"] == pytest.approx(0.7)
  meta = evaluate.metadata_embedding(embed_texts, "toy", spec)
  np.testing.assert_allclose(meta, np.eye(10, 12), atol=1e-6)
  caps = [["c1", "c2"], ["c3"]]
  meta = evaluate.metadata_embedding(embed_texts, "r", {"kind": "retrieval"}, caps)
  np.testing.assert_allclose(meta, np.eye(12)[[1, 2, 3]], atol=1e-6)
