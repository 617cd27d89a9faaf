"""What each expert's data is about: its top caption words and sample training images.

Inputs: assign/<stem>.npz (keys, expert of each training sample: the assign
stage, mode_jax/stages/assign.py; files of another clustering than cluster/meta.json's
fingerprint are stale and left out) and the training shards of the same stems
(config.input.shards as recorded in the workdir's config.json, else
shards/train-*.tar). Each shard is read once: every sample's captions, and
image bytes only for the picked samples (the others are skipped with a seek),
so only those are decoded. When every shard has img2dataset's parquet beside
it, captions come from there (shard_captions) and the tar is read only for
the picked images. On a web-scale corpus `max_shards` evenly spaced
shards are read (word statistics need far fewer than 400M captions).

Top words. Captions are lower-cased and split into letter runs; stop words
and one-letter tokens are dropped; a word counts once per sample (in any of
its captions). Expert c has N_c of the N samples read; a word is in k_c of
c's samples and k of all:
    score = (k_c / N_c) * ln((k_c / N_c) / (k / N))
the word's term of KL(P(w | c) || P(w)): high when the word is frequent in
the cluster and over-represented there. Words no more frequent in c than
overall (lift <= 1) are left out; ties go alphabetically.

Images: `images` per expert, a uniform pick without replacement among its
samples, seeded per expert (numpy default_rng([seed, expert])).

Writes report/clusters.md (expert, n samples, share, top words) and
report/clusters.png (a row of thumbnails per expert). Nothing is written, and
None returned, when assign/ or the training shards are absent.
"""

from __future__ import annotations

import collections
import math
import re

import numpy as np

from mode_jax import workdir as wd
from mode_jax.data.io import loader, shard_captions
from mode_jax.data.io import webdataset as wds

THUMB = 96   # px, the side of a thumbnail in clusters.png
# Function words of English captions (a short list: the lift rule already sinks words that
# are common everywhere; these would only clutter the ranking of small clusters).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be been before being below
between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves
out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves s t don
""".split())
_WORD = re.compile(r"[^\W\d_]+")


def caption_words(texts) -> set[str]:
  """The distinct counted words of a sample's captions (lower-cased, no stop words)."""
  return {w for t in texts for w in _WORD.findall(t.lower())
          if len(w) > 1 and w not in STOP_WORDS}


def top_words(per_expert: list[collections.Counter], k: int) -> list[list[tuple[str, float]]]:
  """Each expert's k best (word, score) by the docstring's rule; per_expert[c][w] = k_c(w),
  with the expert's sample count under the key None."""
  totals = collections.Counter()
  for cnt in per_expert:
    totals.update(cnt)
  n_all = totals.pop(None, 0)
  out = []
  for cnt in per_expert:
    n_c = cnt.get(None, 0)
    scored = []
    for w, k_c in cnt.items():
      if w is None:
        continue
      p, q = k_c / n_c, totals[w] / n_all
      if p > q:
        scored.append((-p * math.log(p / q), w))
    out.append([(w, -s) for s, w in sorted(scored)[:k]])
  return out


# ---------------------------------------------------------------- inputs ----
def training_shards(workdir: str):
  """config.input.shards of the workdir's config.json, else the prepare stage's shards."""
  p = wd.path(workdir, "config.json")
  cfg = wd.read_json(p) if wd.exists(p) else {}
  return (cfg.get("input") or {}).get("shards") or wd.TRAIN_SHARDS


def inputs(workdir: str, max_shards: int = 0) -> tuple[list[tuple[str, str]], int]:
  """((assign file, shard) pairs of the same stem, evenly thinned to max_shards), and how many
  there are in all; ([], 0) when assign/ or the shards are absent."""
  assigned = wd.glob(wd.path(workdir, "assign", "*.npz"))
  if not assigned:
    return [], 0
  try:
    tar_of = {wd.shard_stem(p): p for p in loader.shard_paths(training_shards(workdir),
                                                               workdir)}
  except (FileNotFoundError, wd.MissingInput):
    return [], 0
  pairs = [(a, tar_of[wd.basename(a)[:-4]]) for a in assigned if wd.basename(a)[:-4] in tar_of]
  total = len(pairs)
  if max_shards and total > max_shards:
    keep = np.unique(np.linspace(0, total - 1, max_shards).round().astype(int))
    pairs = [pairs[i] for i in keep]
  return pairs, total


def current_fingerprint(workdir: str) -> str | None:
  """The clustering's fingerprint (cluster/meta.json): assign files of another are stale."""
  p = wd.path(workdir, "cluster", "meta.json")
  return str(wd.read_json(p).get("fingerprint")) if wd.exists(p) else None


def pick(experts: list[np.ndarray], n: int, per_expert: int, seed: int) -> list[list[tuple]]:
  """Each expert's seeded pick of (file index, row), in file order."""
  f = np.concatenate([np.full(len(e), i) for i, e in enumerate(experts)])
  r = np.concatenate([np.arange(len(e)) for e in experts])
  e = np.concatenate(experts)
  out = []
  for c in range(n):
    idx = np.flatnonzero(e == c)
    rng = np.random.default_rng([seed, c])
    chosen = np.sort(rng.choice(idx, min(per_expert, len(idx)), replace=False))
    out.append([(int(f[i]), int(r[i])) for i in chosen])
  return out


def thumbnail(image: np.ndarray, side: int = THUMB) -> np.ndarray:
  """The centered square crop of an RGB image, resized to side x side."""
  from PIL import Image
  h, w = image.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  im = Image.fromarray(image[top:top + s, left:left + s])
  return np.asarray(im.resize((side, side), Image.BILINEAR))


def read_shard(path: str, picked: set[str], source: shard_captions.ShardCaptions | None = None
               ) -> tuple[dict, dict]:
  """({key: captions} of every sample, {key: thumbnail} of the picked ones).

  From the tar, one pass: the image bytes of the other samples are skipped, not read.
  When `source` reads img2dataset's parquet, captions come from there and the tar is
  read only for the picked images (headers until the last picked one is found).
  """
  if source is not None and source.parquet:
    keys, cands = source.read(path, wds.Stats())
    return dict(zip(keys, cands)), (read_thumbnails(path, picked) if picked else {})
  stats, texts, thumbs = wds.Stats(), {}, {}

  def wanted(name):
    key, ext = wds.split_name(name)
    return ext not in wds.IMAGE_EXTS or key in picked

  try:
    with wds.open_shard(path) as f:
      for key, _, _, members in wds.iter_samples_raw(f, read_data=wanted):
        s = wds.make_sample(key, members, with_images=False, stats=stats)
        if s is None:
          continue
        texts[key] = s["texts"]
        if key in picked:
          _add_thumbnail(thumbs, key, members)
  except OSError:   # unreadable or truncated (TruncatedShard): keep what was read
    pass
  return texts, thumbs


def read_thumbnails(path: str, picked: set[str]) -> dict:
  """{key: thumbnail} of the picked samples; only their image bytes are read."""
  thumbs, seen = {}, set()

  def wanted(name):
    key, ext = wds.split_name(name)
    return ext in wds.IMAGE_EXTS and key in picked

  try:
    with wds.open_shard(path) as f:
      for key, _, _, members in wds.iter_samples_raw(f, read_data=wanted):
        if key in picked:
          _add_thumbnail(thumbs, key, members)
          seen.add(key)
          if len(seen) == len(picked):
            break
  except OSError:   # unreadable or truncated (TruncatedShard): keep what was read
    pass
  return thumbs


def _add_thumbnail(thumbs: dict, key: str, members: dict) -> None:
  ext = wds.image_ext(members)
  if ext is None:
    return
  try:
    thumbs[key] = thumbnail(wds.decode_image(members[ext], draft_size=2 * THUMB))
  except Exception:   # noqa: BLE001  PIL raises many types on corrupt bytes
    pass


# ---------------------------------------------------------------- output ----
def markdown(rows, k: int, note: str) -> str:
  lines = ["# What each expert's data is about", "",
           f"Top {k} caption words per expert: lower-cased, stop words removed, a word counted "
           f"once per sample, ranked by (k_c/N_c) ln((k_c/N_c)/(k/N)) (its term of "
           f"KL(P(w|expert) || P(w))), lift > 1 only. {note}", "",
           "| expert | n samples | share | top words |", "|---|---|---|---|"]
  for r in rows:
    words = ", ".join(w for w, _ in r["words"]) or "-"
    lines.append(f"| {r['expert']} | {r['n_samples']} | {r['share']:.3f} | {words} |")
  return "\n".join(lines) + "\n"


def plot(path: str, rows, grids: list[list[np.ndarray]], per_expert: int) -> None:
  """One row of thumbnails per expert, labelled with its size and top words."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n, gap = len(rows), 4
  cell = THUMB + gap
  mosaic = np.full((n * cell, per_expert * cell, 3), 255, np.uint8)
  for c, thumbs in enumerate(grids):
    for j, t in enumerate(thumbs):
      mosaic[c * cell:c * cell + THUMB, j * cell:j * cell + THUMB] = t
  fig, ax = plt.subplots(figsize=(2.5 + per_expert * 1.0, 0.6 + n * 1.0))
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([c * cell + THUMB / 2 for c in range(n)],
                [f"expert {r['expert']} ({r['n_samples']})\n"
                 + " ".join(w for w, _ in r["words"][:3]) for r in rows], fontsize=8)
  ax.set_title("Sample training images per expert")
  fig.tight_layout()
  wd.save_figure(path, fig, dpi=100)
  plt.close(fig)


def links(summary: dict) -> str:
  """The results.md lines that point at the summary."""
  png = " and sample images: [clusters.png](clusters.png)" if summary.get("png") else ""
  return f"What each expert's data is about: [clusters.md](clusters.md){png}.\n"


def run(workdir: str, out_dir: str, n: int, words: int = 10, images: int = 8,
        max_shards: int = 0, seed: int = 0) -> dict | None:
  """Writes report/clusters.{md,png}; returns {'rows' (expert, n_samples, share, words:
  [(word, score)], images: keys shown), 'md', 'png', 'shards'} or None when assign/ or the
  training shards are absent."""
  pairs, total = inputs(workdir, max_shards)
  assign_all = [wd.load_npz(a) for a, _ in pairs]
  fp = current_fingerprint(workdir)
  fresh = [i for i, z in enumerate(assign_all)
           if fp is None or str(z.get("cluster_fingerprint", "")) == fp]   # older: stale
  pairs, assign = [pairs[i] for i in fresh], [assign_all[i] for i in fresh]
  if not pairs:
    return None
  experts = [z["expert"].astype(np.int32) for z in assign]
  picks = pick(experts, n, images, seed)
  wanted = [set() for _ in pairs]
  for chosen in picks:
    for f, r in chosen:
      wanted[f].add(str(assign[f]["keys"][r]))
  counts = [collections.Counter() for _ in range(n)]
  thumbs = {}
  source = shard_captions.ShardCaptions([shard for _, shard in pairs])
  for i, (z, (_, shard)) in enumerate(zip(assign, pairs)):
    texts, got = read_shard(shard, wanted[i], source)
    thumbs.update({(i, k): t for k, t in got.items()})
    for key, e in zip(z["keys"], experts[i]):
      if str(key) in texts:
        counts[e][None] += 1
        counts[e].update(caption_words(texts[str(key)]))
  sizes = np.bincount(np.concatenate(experts), minlength=n)
  tops = top_words(counts, words)
  shown = [[(f, str(assign[f]["keys"][r])) for f, r in chosen
            if (f, str(assign[f]["keys"][r])) in thumbs] for chosen in picks]
  rows = [{"expert": c, "n_samples": int(sizes[c]), "share": float(sizes[c] / max(sizes.sum(), 1)),
           "words": tops[c], "images": [k for _, k in shown[c]]} for c in range(n)]
  stale = len(fresh) < len(assign_all)
  note = (f"Read {len(pairs)} of {total} assigned training shards" if len(pairs) < total
          else f"Read all {len(pairs)} assigned training shards")
  note += f" ({len(assign_all) - len(fresh)} of another clustering left out)." if stale else "."
  wd.write_text(wd.path(out_dir, "clusters.md"), markdown(rows, words, note))
  png = None
  if images > 0:
    png = wd.path(out_dir, "clusters.png")
    plot(png, rows, [[thumbs[s] for s in row] for row in shown], images)
  return {"rows": rows, "md": wd.path(out_dir, "clusters.md"), "png": png,
          "shards": len(pairs)}
