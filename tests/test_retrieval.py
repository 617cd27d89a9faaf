"""Retrieval recall@K: a constructed case with known answers and a numpy argsort reference."""

import numpy as np
import pytest

from mode_jax.eval import retrieval

# 3 images x 6 captions, two captions per image.
TXT_TO_IMG = np.array([0, 0, 1, 1, 2, 2])
LOGITS = np.array([
    [0.90, 0.10, 0.80, 0.20, 0.30, 0.00],   # best own caption 0.90 -> rank 0
    [0.95, 0.50, 0.40, 0.70, 0.10, 0.20],   # best own caption 0.70, beaten by 0.95 -> rank 1
    [0.10, 0.20, 0.30, 0.40, 0.50, 0.05],   # best own caption 0.50 -> rank 0
], np.float32)


def test_constructed_case():
  r = retrieval.recall(LOGITS, TXT_TO_IMG, ks=(1, 2, 5))
  assert r["i2t_R@1"] == pytest.approx(2 / 3)
  assert r["i2t_R@2"] == pytest.approx(1.0)
  # columns: own image ranks 1, 2, 1, 0, 0, 1
  assert r["t2i_R@1"] == pytest.approx(2 / 6)
  assert r["t2i_R@2"] == pytest.approx(5 / 6)
  assert r["t2i_R@5"] == pytest.approx(1.0)


def test_separate_t2i_logits():
  t2i = LOGITS.copy()
  t2i[:, [0, 1, 2, 5]] = np.eye(3)[TXT_TO_IMG[[0, 1, 2, 5]]].T  # make every column correct
  r = retrieval.recall(LOGITS, TXT_TO_IMG, ks=(1,), t2i_logits=t2i)
  assert r["i2t_R@1"] == pytest.approx(2 / 3) and r["t2i_R@1"] == pytest.approx(1.0)


def argsort_reference(logits, txt_to_img, k):
  """The usual top-k membership test (as in CLIP-benchmark style evaluators)."""
  top_txt = np.argsort(-logits, axis=1)[:, :k]
  i2t = np.mean([np.any(txt_to_img[top_txt[i]] == i) for i in range(len(logits))])
  top_img = np.argsort(-logits, axis=0)[:k, :]
  t2i = np.mean([txt_to_img[j] in top_img[:, j] for j in range(logits.shape[1])])
  return i2t, t2i


@pytest.mark.parametrize("k", [1, 5, 10])
def test_matches_argsort_reference(k):
  rng = np.random.default_rng(k)
  n_img, per = 40, 5
  txt_to_img = np.repeat(np.arange(n_img), per)
  img = rng.normal(size=(n_img, 8))
  txt = img[txt_to_img] + 1.5 * rng.normal(size=(n_img * per, 8))
  logits = (img @ txt.T).astype(np.float32)
  r = retrieval.recall(logits, txt_to_img, ks=(k,))
  i2t, t2i = argsort_reference(logits, txt_to_img, k)
  assert r[f"i2t_R@{k}"] == pytest.approx(i2t)
  assert r[f"t2i_R@{k}"] == pytest.approx(t2i)
  if k == 1:
    assert 0 < i2t < 1 and 0 < t2i < 1   # a non-trivial case


def test_image_without_caption_is_left_out():
  logits = np.array([[0.9, 0.1], [0.2, 0.8], [0.99, 0.99]], np.float32)
  r = retrieval.image_to_text_recall(logits, np.array([0, 1]), ks=(1,))
  assert r["i2t_R@1"] == pytest.approx(1.0)


def test_retrieval_logits_from_embedders():
  caps = [["a", "bb"], ["ccc"], ["dddd", "e", "ff"]]
  texts, txt_to_img = retrieval.caption_index(caps)
  assert texts == ["a", "bb", "ccc", "dddd", "e", "ff"]
  np.testing.assert_array_equal(txt_to_img, [0, 0, 1, 2, 2, 2])

  def embed_texts(ts):   # caption of image i points along axis i (length-coded)
    out = np.zeros((len(ts), 4), np.float32)
    for j, t in enumerate(ts):
      out[j, {"a": 0, "bb": 0, "ccc": 1, "dddd": 2, "e": 2, "ff": 2}[t]] = 2.0
      out[j, 3] = 0.5
    return out

  def embed_images(x):
    v = np.asarray(x).reshape(len(x), -1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

  images = np.eye(3, 4, dtype=np.float32).reshape(3, 1, 4, 1)
  logits, labels, t2i, txt_index = retrieval.retrieval_logits(
      embed_images, embed_texts, [(images[:2], [0, 1]), (images[2:], [2])], caps)
  assert logits.shape == (3, 6)
  np.testing.assert_array_equal(t2i, txt_to_img)
  np.testing.assert_array_equal(txt_index, np.arange(6))   # every image read: all captions
  r = retrieval.recall(logits, t2i)
  assert r["i2t_R@1"] == 1.0 and r["t2i_R@1"] == 1.0
  np.testing.assert_allclose(logits[0, 0], 2.0 / np.sqrt(4.25), rtol=1e-6)  # cosine
