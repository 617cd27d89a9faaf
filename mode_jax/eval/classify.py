"""Zero-shot classification of a folder of images with a MoDE bundle alone (no workdir).

  python launch.py classify --bundle W/bundle --images DIR --classes "cat,dog,red car"
      [--templates openai|FILE] [--top 3] [--out results.json|results.csv]

--classes: comma-separated names ("kitty|cat" = one class with synonyms), or a
file with one class per line. --templates: 'openai' (the bundle's copy of
OpenAI's 80) or a file, one template per line ({c} or {} marks the slot) or a
JSON list. Images: *.jpg|jpeg|png|webp in DIR (not recursive); unreadable
ones are skipped and counted.

Every step is the evaluate and report stages' own code, so a bundle
classifies exactly as the report scored it:
  image     wds.decode_image + preprocess.resize_center_crop at the model's
            resolution, uint8 (the model normalises)
  classes   features.class_features per expert with the templates
  routing   evaluate.metadata_embedding with the bundle's sentence encoder,
            routing.routing_weights with the bundle's formula and top_k
  ensemble  ensemble.combine of the experts' raw cosine logits
Scores are therefore routed sums of cosines (no logit scale, no softmax).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mode_jax.eval import bundle as bundle_lib
from mode_jax.data.io import preprocess
from mode_jax.data.io import webdataset as wds
from mode_jax.ensemble import ensemble, routing
from mode_jax.eval import evaluate, features
from mode_jax.models import embedders

log = logging.getLogger(__name__)

IMAGE_EXTS = tuple("." + e for e in wds.IMAGE_EXTS)   # what the shard reader decodes
SYNONYM_SEP = "|"


def parse_classes(classes) -> list[list[str]]:
  """'a,b|c' or a file (one class per line) or a list -> [['a'], ['b', 'c']]."""
  if isinstance(classes, str):
    if os.path.isfile(classes):
      with open(classes) as f:
        items = [line.strip() for line in f]
    else:
      items = classes.split(",")
  else:
    items = list(classes)
  out = []
  for c in items:
    names = [n.strip() for n in c.split(SYNONYM_SEP)] if isinstance(c, str) else list(c)
    names = [n for n in names if n]
    if names:
      out.append(names)
  if not out:
    raise ValueError(f"no class names in {classes!r}")
  return out


def parse_templates(templates, bundle) -> list[str]:
  """None | 'openai' -> the bundle's templates; a file (lines or JSON list); or a list."""
  if templates is None or templates == "openai":
    return bundle.templates("openai")
  if isinstance(templates, str):
    if not os.path.isfile(templates):
      raise FileNotFoundError(f"--templates {templates!r}: not 'openai' and not a file")
    with open(templates) as f:
      text = f.read()
    items = json.loads(text) if templates.endswith(".json") else text.splitlines()
  else:
    items = list(templates)
  items = [t for t in items if t.strip()]
  bad = [t for t in items if "{c}" not in t and "{}" not in t]
  if not items or bad:
    raise ValueError(f"templates need a slot {{c}} or {{}}: {bad[:3] or 'none given'}")
  return items


def image_files(images) -> list[str]:
  """The image files of a folder, sorted by name (or a list of paths, as given)."""
  if isinstance(images, str):
    if not os.path.isdir(images):
      raise FileNotFoundError(f"--images {images}: not a folder")
    return sorted(os.path.join(images, f) for f in os.listdir(images)
                  if f.lower().endswith(IMAGE_EXTS))
  return list(images)


def read_images(paths: Sequence[str], res: int) -> tuple[np.ndarray, list[str], list[str]]:
  """(uint8 [N, res, res, 3], read paths, skipped paths) with the evaluate stage's decode."""
  arrays, ok, skipped = [], [], []
  for p in paths:
    try:
      with open(p, "rb") as f:
        image = wds.decode_image(f.read(), draft_size=res)
      arrays.append(preprocess.resize_center_crop(image, res))
      ok.append(p)
    except Exception as e:   # noqa: BLE001  any decoder error: skip the file, count it
      log.warning("skipping %s: %s", p, e)
      skipped.append(p)
  images = np.stack(arrays) if arrays else np.zeros((0, res, res, 3), np.uint8)
  return images, ok, skipped


def classify(bundle_path: str, images, classes, *, templates=None, batch_size: int = 64,
             dtype: str | None = None) -> dict:
  """Routed MoDE logits of a bundle for images and class names.

  Returns {'classes' [[names]], 'templates', 'experts', 'routing_weights' [n],
  'logits' [N_img, N_cls], 'expert_logits' [n, N_img, N_cls], 'images' (paths
  read), 'skipped' (unreadable paths)}. dtype overrides the recorded compute dtype.
  """
  b = bundle_lib.load(bundle_path)
  classnames = parse_classes(classes)
  temps = parse_templates(templates, b)
  pixels, read, skipped = read_images(image_files(images), b.resolution)
  if not read:
    raise ValueError(f"no readable images ({len(skipped)} skipped)")

  spec = {"kind": "zeroshot", "classnames": classnames, "templates": temps}
  encoder = b.sentence_encoder
  meta = evaluate.metadata_embedding(lambda t: encoder.encode(list(t), progress=False),
                                     "classify", spec)
  r = b.routing
  weights = routing.routing_weights(jnp.asarray(meta), jnp.asarray(b.fine_centers),
                                    jnp.asarray(b.fine_to_expert), len(b.experts),
                                    r["mode"], int(r["top_k"]))
  per_expert = []
  for name in b.experts:
    model = b.load_model(name, dtype)
    embed_images, embed_texts = embedders.make_embedders(
        model, b.tokenizer, context_length=b.context_length, batch_size=batch_size)
    cls = features.class_features(embed_texts, classnames, temps)
    per_expert.append(features.cosine_logits(embed_images(pixels), cls))
  stack = jnp.asarray(np.stack(per_expert), jnp.float32)
  return {"classes": classnames, "templates": temps, "experts": b.experts,
          "routing": {"mode": r["mode"], "top_k": int(r["top_k"])},
          "routing_weights": np.asarray(weights), "logits": np.asarray(
              ensemble.combine(stack, weights)),
          "expert_logits": np.asarray(stack), "images": read, "skipped": skipped}


def top_classes(result: dict, k: int) -> list[list[tuple[str, float]]]:
  """Per image, the k best (class name, score), best first (a class by its first name)."""
  logits, names = result["logits"], [c[0] for c in result["classes"]]
  order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
  return [[(names[j], float(logits[i, j])) for j in row] for i, row in enumerate(order)]


def write_results(result: dict, top: list, out: str) -> None:
  """.csv: image, rank, class, score; anything else: JSON with the routing weights too."""
  if out.endswith(".csv"):
    with open(out, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image", "rank", "class", "score"])
      for path, row in zip(result["images"], top):
        for rank, (name, score) in enumerate(row, 1):
          w.writerow([path, rank, name, f"{score:.6f}"])
    return
  obj = {"routing": result["routing"],
         "routing_weights": dict(zip(result["experts"],
                                     map(float, result["routing_weights"]))),
         "classes": result["classes"], "templates": len(result["templates"]),
         "images": [{"image": p, "top": [{"class": n, "score": s} for n, s in row]}
                    for p, row in zip(result["images"], top)],
         "skipped": result["skipped"]}
  with open(out, "w") as f:
    json.dump(obj, f, indent=2)
