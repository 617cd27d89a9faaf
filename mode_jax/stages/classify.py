"""Stage `classify`: zero-shot classification of a folder of images with a bundle alone.

  python launch.py classify --bundle W/bundle --images DIR --classes "cat,dog,red car"
      [--templates openai|FILE] [--top 3] [--out results.json|results.csv]

No config or workdir: the bundle (made by `export`) carries the models, the
routing arrays and the sentence encoder (mode_jax/eval/classify.py says how
each step is the evaluate and report stages' own code).
"""

from __future__ import annotations

import os

from mode_jax.eval import classify


def run(bundle_path: str, images: str, classes: str, *, templates: str | None = "openai",
         top: int = 3, out: str | None = None) -> dict:
  """The `classify` command: prints the routing weights and each image's top classes."""
  result = classify.classify(bundle_path, images, classes, templates=templates)
  weights = "  ".join(f"{e} {w:.4f}" for e, w in zip(result["experts"],
                                                     result["routing_weights"]))
  r = result["routing"]
  print(f"routing weights ({r['mode']}, top_k={r['top_k']}, {len(result['classes'])} "
        f"classes x {len(result['templates'])} templates): {weights}")
  best = classify.top_classes(result, max(1, top))
  for path, row in zip(result["images"], best):
    print(f"{os.path.basename(path)}: " + " | ".join(f"{n} {s:.4f}" for n, s in row))
  print(f"{len(result['images'])} images classified, {len(result['skipped'])} skipped "
        "(unreadable)")
  if out:
    classify.write_results(result, best, out)
    print(f"wrote {out}")
  return result
