"""Captions/s of our JAX sentence encoder vs PyTorch transformers.BertModel.

Same MiniLM weights, same captions, same batch, same 2 threads, after warm-up.
Each side does the full job: tokenise, forward, mean-pool, L2-normalise.
Captions are clip-art titles + keywords (as the demo's pairs) when the Debian
openclipart-svg package is present, else synthetic captions of similar length.

  python benchmarks/encoder_throughput.py [--batch 256] [--repeats 5] [--threads 2]
"""

import argparse
import glob
import os
import random
import re
import sys
import time

_threads = 2
for i, a in enumerate(sys.argv):
  if a.startswith("--threads"):
    _threads = int(a.split("=", 1)[1] if "=" in a else sys.argv[i + 1])
# Both sides get the same cores: pin the process before XLA or torch start their pools.
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:_threads])
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def captions(n, seed=0):
  files = sorted(glob.glob("/usr/share/openclipart/svg/**/*.svg", recursive=True))
  rng = random.Random(seed)
  out = []
  for p in rng.sample(files, min(len(files), 4 * n)):
    with open(p, encoding="utf-8", errors="replace") as f:
      text = f.read()
    title = re.search(r"<dc:title>(.*?)</dc:title>", text, re.S)
    keywords = re.findall(r"<rdf:li>(.*?)</rdf:li>", text)
    if title and title.group(1).strip():
      out.append(f"{title.group(1).strip()}, clip art of {' '.join(keywords[:8])}".strip())
    if len(out) == n:
      return out
  words = "red blue vintage cartoon icon of a small house tree car dog cat with the and".split()
  while len(out) < n:
    out.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))))
  return out


def best_times(fns, repeats):
  """Min wall time of each fn; runs are interleaved so load changes hit all sides alike."""
  for fn in fns:
    fn()   # warm-up (compiles, caches)
  best = [float("inf")] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      t = time.perf_counter()
      fn()
      best[i] = min(best[i], time.perf_counter() - t)
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()

  import torch
  from transformers import AutoTokenizer, BertModel
  from mode_jax.text import sentence_encoder

  torch.set_num_threads(args.threads)
  texts = captions(args.batch)
  folder = sentence_encoder.minilm_dir()

  ours = sentence_encoder.SentenceEncoder("minilm", pooling="mean")
  tok = AutoTokenizer.from_pretrained(folder)
  model = BertModel.from_pretrained(folder).eval()

  def peer():
    b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
      h = model(**b).last_hidden_state
      m = b["attention_mask"][..., None].to(h.dtype)
      e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
      return torch.nn.functional.normalize(e, dim=-1).numpy()

  def ours_default():
    return ours.encode(texts, batch_size=args.batch)

  def ours_peer_batching():   # kernel for kernel: one batch padded to its longest text
    return np.asarray(ours.embed_batch(ours.tokenizer(texts, padding="longest")))

  t_ours, t_peer, t_same = best_times([ours_default, peer, ours_peer_batching], args.repeats)
  err = np.abs(ours_default() - peer()).max()
  lengths = [len(e.ids) for e in ours.tokenizer.encode_ragged(texts)]
  print(f"{len(texts)} captions, tokens/caption mean {np.mean(lengths):.1f} max {max(lengths)}, "
        f"{args.threads} threads, max |diff| {err:.1e}")
  print(f"ours (JAX)          {len(texts) / t_ours:9.1f} captions/s")
  print(f"peer (torch BERT)   {len(texts) / t_peer:9.1f} captions/s")
  print(f"ratio ours/peer     {t_peer / t_ours:9.2f}x   (ours sorts by length, pads to buckets)")
  print(f"ours, peer's batching (one batch, pad to longest) {len(texts) / t_same:9.1f} captions/s,"
        f" ratio {t_peer / t_same:.2f}x")


if __name__ == "__main__":
  main()
