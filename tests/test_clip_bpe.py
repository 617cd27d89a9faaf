"""CLIP BPE tokenizer against two peers: transformers.CLIPTokenizer built from the
same merges file, and open_clip's own SimpleTokenizer (loaded from its file)."""

import glob
import importlib.util
import json
import os
import re

import numpy as np
import pytest

from mode_jax import constants
from mode_jax.text import clip_bpe

try:
  BPE_PATH = clip_bpe.default_bpe_path()
except FileNotFoundError:
  pytest.skip("needs the CLIP merges: pip install --no-deps open-clip-torch",
              allow_module_level=True)

CAPTIONS = [
    "a photo of a cat.",
    "A Photo Of A  CAT!!!",
    "Hello, World! 1234 café ✓",
    "it's the dog's toy, isn't it? we'll see; they've gone, I'm here, you'd know",
    "3.14159 is pi; 1,000,000 people @ 9:30pm #blessed",
    "naïve résumé façade coöperate Zürich São Paulo",
    "日本語のテキスト と 漢字 mixed with English",
    "emoji 😀🎉👍🏽 and symbols ©®™ §¶ ±×÷",
    "Ελληνικά και русский текст, عربى",
    "tabs\tand\nnewlines   and    spaces",
    "under_score-hyphen/slash\\backslash (parens) [brackets] {braces}",
    "http://example.com/path?query=1&x=y",
    "",
    "   ",
    "a " * 120,
    " ".join(["supercalifragilisticexpialidocious antidisestablishmentarianism"] * 20),
    "clip art of a red fire truck with a ladder, vector illustration, svg",
]


@pytest.fixture(scope="module")
def ours():
  return clip_bpe.ClipTokenizer(BPE_PATH)


@pytest.fixture(scope="module")
def hf_peer(tmp_path_factory):
  transformers = pytest.importorskip("transformers", reason="pip install transformers")
  merges = clip_bpe.read_merges(BPE_PATH)
  vocab = clip_bpe.build_vocab(merges)
  vocab[-2:] = ["<|startoftext|>", "<|endoftext|>"]   # HF spells the specials this way
  d = tmp_path_factory.mktemp("hf_clip_tok")
  with open(d / "vocab.json", "w") as f:
    json.dump({t: i for i, t in enumerate(vocab)}, f)
  with open(d / "merges.txt", "w") as f:
    f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  return transformers.CLIPTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def open_clip_ref():
  """open_clip's tokenizer module, loaded from its file so the package __init__ never runs."""
  pytest.importorskip("torch", reason="pip install torch")
  pytest.importorskip("ftfy", reason="pip install ftfy")
  path = os.path.join(os.path.dirname(BPE_PATH), "tokenizer.py")
  spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_ref", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.SimpleTokenizer(BPE_PATH)


def clipart_titles(limit=300):
  files = sorted(glob.glob("/usr/share/openclipart/svg/**/*.svg", recursive=True))
  titles = []
  for p in files[::max(1, len(files) // limit)]:
    with open(p, encoding="utf-8", errors="replace") as f:
      m = re.search(r"<dc:title>(.*?)</dc:title>", f.read(), re.S)
    if m and m.group(1).strip():
      titles.append(m.group(1))
  return titles


def padded(ids, length, eot):
  """Expected row from unpadded [SOT ... EOT] ids, per open_clip's truncation rule."""
  ids = list(ids)
  if len(ids) > length:
    ids = ids[:length]
    ids[-1] = eot
  return ids + [0] * (length - len(ids))


def test_vocabulary_layout(ours):
  assert ours.vocab_size == constants.VOCAB_SIZE == 49408
  assert (ours.sot_token_id, ours.eot_token_id) == (49406, 49407)
  assert ours.decoder[ord("a") - ord("!")] == "a"
  assert ours.decoder[256 + ord("a") - ord("!")] == "a</w>"


def test_known_ids(ours):
  # OpenAI CLIP ids: a=320, photo=1125, of=539, cat=2368, .=269.
  row = ours("a photo of a cat.")[0]
  np.testing.assert_array_equal(row[:8], [49406, 320, 1125, 539, 320, 2368, 269, 49407])
  assert row.dtype == np.int32 and row.shape == (77,) and not row[8:].any()


def test_matches_hf_clip_tokenizer(ours, hf_peer):
  for text in CAPTIONS:
    # HF normalises with NFC + whitespace + lower only; give it our cleaned text.
    want = hf_peer(clip_bpe.clean(text))["input_ids"]
    assert [ours.sot_token_id] + ours.encode(text) + [ours.eot_token_id] == want, text
    np.testing.assert_array_equal(ours([text])[0], padded(want, 77, 49407))


def test_matches_open_clip_simple_tokenizer(ours, open_clip_ref):
  texts = CAPTIONS + ["&amp;lt;b&amp;gt; bold &quot;quoted&quot;", "â€œmojibakeâ€\x9d fixed",
                      "“curly quotes” and ﬁ ligature and ＦＵＬＬ width"]
  for length in (77, 16, 5):
    np.testing.assert_array_equal(ours(texts, context_length=length),
                                  open_clip_ref(texts, context_length=length).numpy())


def test_truncation_keeps_eot(ours):
  out = ours(["word " * 200, "short"], context_length=10)
  assert out.shape == (2, 10)
  assert out[0, 0] == 49406 and out[0, -1] == 49407 and (out[0] > 0).all()
  assert len(ours.encode("short")) == 1
  assert list(out[1]) == [49406, ours.encode("short")[0], 49407] + [0] * 7


def test_decode_roundtrip(ours):
  ids = ours.encode("Hello, world café")
  assert ours.decode(ids).strip() == "hello , world café"


@pytest.mark.skipif(not os.path.isdir("/usr/share/openclipart/svg"),
                    reason="apt-get install -y --no-install-recommends openclipart-svg")
def test_clipart_titles_match_peers(ours, hf_peer, open_clip_ref):
  titles = clipart_titles()
  assert len(titles) > 200
  for t in titles:
    want = hf_peer(clip_bpe.clean(t))["input_ids"]
    assert [49406] + ours.encode(t) + [49407] == want, t
  np.testing.assert_array_equal(ours(titles), open_clip_ref(titles).numpy())
