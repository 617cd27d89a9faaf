"""Do the experts specialise? Every model scored on each cluster's held-out pairs (issue 13).

A retrieval task's captions are assigned as the assign stage assigns training
samples (mode_jax/stages/assign.py): nearest fine center by `kmeans.assign` under
cluster/meta.json's metric, expert = fine_to_expert of that center, from the
caption's sentence-encoder embedding (eval/meta_emb/<task>.npy). Cluster c's
pairs are its captions j with their images txt_to_img[j]; its images are the
images of those captions. An image whose captions fall in several clusters is
in each of them, with only that cluster's captions as its positives.

On cluster c, with s = logit_scale * cosine on c's images x c's captions:
  text->image  each of c's captions against c's images; one positive, its image;
  image->text  each of c's images against c's captions; positives = its captions
               in c, scored as -log of their summed softmax mass (an image's other
               captions are not its negatives, so a perfect model can reach 0);
  loss         (mean image->text + mean text->image) / 2: with one caption per
               image, CLIP's symmetric InfoNCE on the batch of c's pairs;
  i2t_R@1      image->text R@1 on the same sub-matrix, in %, by retrieval.py's rule
               (hit when no caption scores strictly above the image's best positive).
logit_scale is the npz's scalar 'logit_scale' (the multiplier exp(t) that
the evaluate stage saves, eval/files.py), else 100 (older workdirs): CLIP's
clamp exp(ln 100), where trained CLIPs sit. Clusters with fewer than 2 pairs or 2 images have no negatives to
contrast: they are listed with their n and no scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from clustering import distributed as points_lib
from clustering import kmeans
from clustering.config import default_config as clustering_defaults
from mode_jax import workdir as wd

DEFAULT_LOGIT_SCALE = 100.0   # exp(ln 100): CLIP's logit-scale clamp (docs/method.md recipe)
MIN_PAIRS = 2                 # fewer pairs (or images) leave nothing to contrast
HEADER = ["task", "cluster", "model", "n_pairs", "n_images", "loss", "i2t_R@1"]


def cluster_metric(workdir: str) -> str:
  """The metric the assign stage used (cluster/meta.json), else the clustering default."""
  p = wd.path(workdir, "cluster", "meta.json")
  meta = wd.read_json(p) if wd.exists(p) else {}
  return kmeans.check_metric(meta.get("metric", clustering_defaults().metric))


def caption_experts(caption_emb, fine_centers, fine_to_expert, metric: str = "euclidean"):
  """(fine int32 [N_txt], expert int32 [N_txt]) of each caption, by the assign stage's rule."""
  fine, _ = kmeans.assign(np.asarray(caption_emb, np.float32), np.asarray(fine_centers),
                          metric=metric, mesh=points_lib.local_mesh())
  fine = np.asarray(fine, np.int32)
  return fine, np.asarray(fine_to_expert, np.int32)[fine]


def logit_scale(arrays: dict) -> float:
  """The model's logit-scale multiplier from its eval npz, else CLIP's clamp (100)."""
  if "logit_scale" not in arrays:
    return DEFAULT_LOGIT_SCALE
  scale = float(np.asarray(arrays["logit_scale"]).reshape(()))
  if not np.isfinite(scale) or scale <= 0:
    raise ValueError(f"logit_scale {scale}: expected the positive multiplier exp(t)")
  return scale


def cluster_pairs(txt_to_img, caption_expert, c: int):
  """(image rows, caption columns, caption -> local image index) of cluster c's pairs."""
  caps = np.flatnonzero(np.asarray(caption_expert) == c)
  imgs, local = np.unique(np.asarray(txt_to_img)[caps], return_inverse=True)
  return imgs, caps, local.astype(np.int32)


def _lse(s, axis):
  m = jnp.max(s, axis=axis, keepdims=True)   # finite: every row and column has an entry
  return jnp.squeeze(m, axis) + jnp.log(jnp.sum(jnp.exp(s - m), axis=axis))


@jax.jit
def _scores(logits, scale, txt_to_img):
  """(loss, i2t R@1 fraction) of a pair set, float32, in one program and one transfer."""
  s = logits * scale
  n_img = s.shape[0]
  pos = s[txt_to_img, jnp.arange(s.shape[1])]                            # [J]
  top = jax.ops.segment_max(pos, txt_to_img, num_segments=n_img)         # best positive [I]
  pos_lse = top + jnp.log(jax.ops.segment_sum(jnp.exp(pos - top[txt_to_img]), txt_to_img,
                                              num_segments=n_img))
  loss = (jnp.mean(_lse(s, 1) - pos_lse) + jnp.mean(_lse(s, 0) - pos)) / 2
  # retrieval.py's rank on the unscaled cosines: captions strictly above the best positive
  raw = logits[txt_to_img, jnp.arange(s.shape[1])]
  best = jax.ops.segment_max(raw, txt_to_img, num_segments=n_img)
  r1 = jnp.mean(jnp.sum(logits > best[:, None], axis=1) < 1)
  return loss, r1


def cluster_scores(logits, txt_to_img, scale: float = 1.0) -> tuple[float, float]:
  """(the module docstring's loss on logits [I, J] * scale, i2t R@1 in %); caption j's image
  is txt_to_img[j], and every image needs a caption."""
  t2i = np.asarray(txt_to_img, np.int32)
  if np.bincount(t2i, minlength=len(logits)).min(initial=1) == 0:
    raise ValueError("every image of the pair set needs a caption")
  loss, r1 = _scores(jnp.asarray(logits, jnp.float32), jnp.float32(scale), jnp.asarray(t2i))
  return float(loss), 100.0 * float(r1)


def task_rows(task: str, models: dict, txt_to_img, caption_expert, n: int) -> list[dict]:
  """Long rows (HEADER) of every model on every cluster; models = {name: (logits, scale)}."""
  rows = []
  for c in range(n):
    imgs, caps, local = cluster_pairs(txt_to_img, caption_expert, c)
    scored = len(caps) >= MIN_PAIRS and len(imgs) >= MIN_PAIRS
    for name, (logits, scale) in models.items():
      row = {"task": task, "cluster": c, "model": name, "n_pairs": len(caps),
             "n_images": len(imgs), "loss": "", "i2t_R@1": ""}
      if scored:
        row["loss"], row["i2t_R@1"] = cluster_scores(np.asarray(logits)[np.ix_(imgs, caps)],
                                                     local, scale)
      rows.append(row)
  return rows


# ---------------------------------------------------------------- output ----
def _value(rows, model, c, key):
  v = next(r[key] for r in rows if r["model"] == model and r["cluster"] == c)
  return None if v == "" else float(v)


def own_cluster_wins(rows, n: int, key: str, lower_is_better: bool) -> tuple[list[int], int]:
  """(clusters c where expert_c beats dense on c, number of scored clusters)."""
  won, scored = [], 0
  for c in range(n):
    mine, dense = _value(rows, f"expert_{c}", c, key), _value(rows, "dense", c, key)
    if mine is None or dense is None:
      continue
    scored += 1
    if (mine < dense) if lower_is_better else (mine > dense):
      won.append(c)
  return won, scored


def matrix(rows, models, n: int, key: str, fmt: str) -> str:
  """Markdown: rows = models, columns = clusters; bold = expert c on its own cluster c."""
  sizes = {r["cluster"]: r["n_pairs"] for r in rows}
  head = ["model"] + [f"cluster {c} (n={sizes[c]})" for c in range(n)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for m in models:
    cells = []
    for c in range(n):
      v = _value(rows, m, c, key)
      cell = "skipped" if v is None else fmt.format(v)
      cells.append(f"**{cell}**" if m == f"expert_{c}" else cell)
    lines.append("| " + " | ".join([m] + cells) + " |")
  return "\n".join(lines)


def _wins_line(rows, n) -> str:
  def part(key, lower, what):
    won, scored = own_cluster_wins(rows, n, key, lower)
    return f"{what} on {len(won)} of {scored} scored clusters ({', '.join(map(str, won)) or '-'})"
  return ("Expert c beats dense on its own cluster c: "
          + part("loss", True, "lower loss") + "; " + part("i2t_R@1", False, "higher i2t R@1")
          + ".")


def markdown(rows) -> str:
  """Per task: the loss and the i2t R@1 matrices, and the own-cluster wins over dense."""
  out = []
  for task in dict.fromkeys(r["task"] for r in rows):
    t = [r for r in rows if r["task"] == task]
    n = max(r["cluster"] for r in t) + 1
    models = list(dict.fromkeys(r["model"] for r in t))
    out += [f"### {task}", "", _wins_line(t, n), "",
            "Symmetric InfoNCE loss on the cluster's pairs (lower is better):", "",
            matrix(t, models, n, "loss", "{:.3f}"), "",
            "Image->text R@1 (%) within the cluster's images and captions:", "",
            matrix(t, models, n, "i2t_R@1", "{:.1f}"), ""]
  return "\n".join(out)


NOTE = ("Held-out retrieval pairs grouped by the expert of their caption (nearest fine "
        "center, as the assign stage); n = the cluster's pairs (captions). Logits = cosine "
        "x the model's logit_scale (100 when its eval npz has none). Bold = expert c on its "
        "own cluster c. Clusters with < 2 pairs or images are skipped.\n")

