"""Per-cluster scores of every model: known answers and a loop-by-loop numpy transcription."""

import numpy as np
import pytest

from mode_jax import workdir as wd
from mode_jax.eval import retrieval
from mode_jax.eval import specialisation as sp


def ref_infonce(s, t2i):
  """Symmetric InfoNCE, one loop per row: image rows with all their captions as positives."""
  s = np.asarray(s, np.float64)
  i2t = [-np.log(np.exp(s[i, t2i == i]).sum() / np.exp(s[i]).sum()) for i in range(len(s))]
  t2i_loss = [-np.log(np.exp(s[t2i[j], j]) / np.exp(s[:, j]).sum()) for j in range(s.shape[1])]
  return (np.mean(i2t) + np.mean(t2i_loss)) / 2


def ref_r1(s, t2i):
  return 100 * np.mean([t2i[np.argmax(s[i])] == i for i in range(len(s))])


def loss(logits, t2i, scale=1.0):
  return sp.cluster_scores(logits, t2i, scale)[0]


def test_loss_matches_clip_and_known_answers():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(5, 5)) * 3
  # one caption per image: CLIP's loss, (CE(rows, diag) + CE(columns, diag)) / 2
  ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
  assert loss(s, np.arange(5)) == pytest.approx((ce(s) + ce(s.T)) / 2, rel=1e-6)
  # several captions per image
  t2i = np.array([0, 0, 1, 2, 2, 2, 3])
  s = rng.normal(size=(4, 7)) * 3
  assert loss(s, t2i) == pytest.approx(ref_infonce(s, t2i), rel=1e-6)
  assert loss(s, t2i, 20.0) == pytest.approx(ref_infonce(20 * s, t2i), rel=1e-6)
  # equal logits: image i scores ln(J / |P_i|), a caption ln(I)
  want = (np.mean(np.log(7 / np.array([2, 1, 3, 1]))) + np.log(4)) / 2
  assert loss(np.zeros((4, 7)), t2i) == pytest.approx(want, rel=1e-6)
  # a perfect model at scale 100 reaches 0: an image's other captions are not negatives
  perfect = (t2i[None] == np.arange(4)[:, None]).astype(np.float32)
  assert loss(perfect, t2i, 100.0) < 1e-30
  with pytest.raises(ValueError, match="needs a caption"):
    loss(np.zeros((3, 2)), np.array([0, 1]))


def test_r1_is_the_retrieval_rule_with_ties():
  t2i = np.array([0, 0, 1, 2])
  s = np.array([[0.5, 0.2, 0.5, 0.1],    # best positive tied with a negative: a hit
                [0.3, 0.3, 0.2, 0.4],    # a negative strictly above: a miss
                [0.1, 0.1, 0.1, 0.1]])   # all tied: a hit
  assert sp.cluster_scores(s, t2i, 50.0)[1] == pytest.approx(200 / 3)
  assert retrieval.image_to_text_recall(s, t2i, ks=(1,))["i2t_R@1"] == pytest.approx(2 / 3)


def test_caption_experts_is_the_nearest_fine_center(tmp_path):
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(6, 4)).astype(np.float32)
  f2e = np.array([2, 0, 1, 1, 0, 2], np.int32)
  emb = rng.normal(size=(40, 4)).astype(np.float32)
  fine, expert = sp.caption_experts(emb, centers, f2e)
  want = np.argmin(((emb[:, None] - centers[None]) ** 2).sum(-1), 1)
  np.testing.assert_array_equal(fine, want)
  np.testing.assert_array_equal(expert, f2e[want])
  # cosine clustering (cluster/meta.json) assigns by angle: scaling a center changes nothing
  assert sp.cluster_metric(str(tmp_path)) == "euclidean"
  wd.write_json(f"{tmp_path}/cluster/meta.json", {"metric": "cosine"})
  metric = sp.cluster_metric(str(tmp_path))
  fine, _ = sp.caption_experts(emb, centers * np.arange(1, 7)[:, None], f2e, metric)
  cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (
      centers / np.linalg.norm(centers, axis=1, keepdims=True)).T
  np.testing.assert_array_equal(fine, np.argmax(cos, 1))


def toy_task():
  """9 images, 14 captions; cluster 0: images 0-3, cluster 1: images 4-7 (two captions
  each), cluster 2: one caption (of image 8). expert_1 is perfect on cluster 1's pairs,
  random elsewhere; the others random."""
  rng = np.random.default_rng(2)
  t2i = np.array([0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 0])
  expert = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 0])
  logits = {m: rng.uniform(-0.3, 0.3, (9, 14)).astype(np.float32)
            for m in ["dense", "expert_0", "expert_1", "expert_2"]}
  one = logits["expert_1"]
  imgs, caps = np.arange(4, 8), np.flatnonzero(expert == 1)
  one[np.ix_(imgs, caps)] = (t2i[caps][None] == imgs[:, None]).astype(np.float32)
  return logits, t2i, expert


def test_task_rows_known_answer():
  logits, t2i, expert = toy_task()
  scales = {"dense": 10.0, "expert_0": 100.0, "expert_1": 100.0, "expert_2": 100.0}
  models = {m: (logits[m], scales[m]) for m in logits}
  rows = sp.task_rows("toy", models, t2i, expert, 3)
  got = {(r["cluster"], r["model"]): r for r in rows}
  assert len(rows) == 12
  assert [got[(c, "dense")]["n_pairs"] for c in range(3)] == [5, 8, 1]
  assert [got[(c, "dense")]["n_images"] for c in range(3)] == [4, 4, 1]
  # expert 1 on its own cluster: perfect
  assert got[(1, "expert_1")]["loss"] < 1e-30 and got[(1, "expert_1")]["i2t_R@1"] == 100.0
  # every scored cell against the transcription on the cluster's own sub-matrix
  for c, imgs in ((0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])):
    caps = np.flatnonzero(expert == c)
    local = np.searchsorted(imgs, t2i[caps])
    for m, (x, scale) in models.items():
      sub = x[np.ix_(imgs, caps)].astype(np.float64)
      assert got[(c, m)]["loss"] == pytest.approx(ref_infonce(scale * sub, local), rel=1e-6)
      assert got[(c, m)]["i2t_R@1"] == pytest.approx(ref_r1(sub, local))
  # one pair: listed with its n, not scored
  assert got[(2, "expert_2")]["loss"] == "" and got[(2, "expert_2")]["i2t_R@1"] == ""

  won, scored = sp.own_cluster_wins(rows, 3, "loss", lower_is_better=True)
  assert scored == 2 and won == [c for c in (0, 1)
                                 if got[(c, f"expert_{c}")]["loss"] < got[(c, "dense")]["loss"]]
  assert 1 in won
  md = sp.markdown(rows)
  assert "### toy" in md and "| expert_1 | " in md and "**0.000**" in md and "**100.0**" in md
  assert "cluster 2 (n=1)" in md and "**skipped**" in md
  line = next(x for x in md.splitlines() if x.startswith("Expert c beats dense"))
  assert f"lower loss on {len(won)} of 2 scored clusters" in line


def test_logit_scale_from_the_npz():
  assert sp.logit_scale({"logits": np.zeros((2, 2))}) == 100.0
  assert sp.logit_scale({"logit_scale": np.float32(42.5)}) == 42.5
  assert sp.logit_scale({"logit_scale": np.array([7.0])}) == 7.0
  with pytest.raises(ValueError, match="positive multiplier"):
    sp.logit_scale({"logit_scale": np.array(-1.0)})
