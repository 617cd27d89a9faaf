"""The report stage on a tiny synthetic workdir, every number recomputed in numpy."""

import csv
import math
import os

import numpy as np
import pytest

from mode_jax import workdir as wd
from mode_jax.eval import report

N_EXPERTS, ORDER = 3, [2, 0, 1]
SCALE = 50.0   # expert_2's logit_scale on the retrieval task (the others: none saved -> 100)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_routing(E, M, pi, n, per_query=False):
  """docs/method.md step 8 reference formula in float64 (per_query: each row its own N=1 task)."""
  if per_query:
    return np.stack([ref_routing(E[q:q + 1], M, pi, n) for q in range(len(E))])
  N = len(E)
  dist = np.linalg.norm(E[:, None].astype(np.float64) - M[None], axis=-1)
  d, c = dist.min(1), pi[dist.argmin(1)]
  a = math.exp(0.5 - math.sqrt(N)) if N < 10 else 0.0
  tau = 5 * math.log10(max(10, N - 200))
  u = np.array([np.exp((a - d[c == k]) * tau).sum() for k in range(n)])
  e = np.exp(u / 8 - (u / 8).max())
  return e / e.sum()


def ref_paper_routing(E, M, pi, n):
  """Paper Sec. 3.3 (Eq. 5-6) in float64: A_l = prior exp(-d_l^2 / lambda) to each class's
  nearest center, w = softmax(sum per expert)."""
  N = len(E)
  d2 = ((E[:, None].astype(np.float64) - M[None]) ** 2).sum(-1)
  lam = 0.2 / (math.log(N) if N > 200 else 1.0)
  prior = math.exp(0.5 - math.sqrt(N)) if N < 10 else 1.0
  a = prior * np.exp(-d2.min(1) / lam)
  u = np.array([a[pi[d2.argmin(1)] == k].sum() for k in range(n)])
  e = np.exp(u - u.max())
  return e / e.sum()


def ref_infonce(s, t2i):
  """Symmetric InfoNCE, a loop per row; an image's positives are all its captions."""
  i2t = [-np.log(np.exp(s[i, t2i == i]).sum() / np.exp(s[i]).sum()) for i in range(len(s))]
  t2i_loss = [-np.log(np.exp(s[t2i[j], j]) / np.exp(s[:, j]).sum()) for j in range(s.shape[1])]
  return (np.mean(i2t) + np.mean(t2i_loss)) / 2


def top1(logits, labels):
  return 100 * np.mean(np.argmax(logits, 1) == labels)


def mean_r1(i2t, t2i, txt_to_img):
  a = np.mean([txt_to_img[np.argmax(i2t[i])] == i for i in range(len(i2t))])
  b = np.mean(np.argmax(t2i, 0) == txt_to_img)
  return 100 * (a + b) / 2


@pytest.fixture
def workdir(tmp_path):
  rng = np.random.default_rng(0)
  w = str(tmp_path)
  M = unit(rng.normal(size=(6, 8))).astype(np.float32)
  pi = np.array([0, 0, 1, 1, 2, 0], np.int32)
  os.makedirs(f"{w}/cluster")
  np.save(f"{w}/cluster/fine_centers.npy", M)
  np.save(f"{w}/cluster/fine_to_expert.npy", pi)
  wd.write_json(f"{w}/cluster/expert_order.json", ORDER)

  def put(model, task, arrays):
    os.makedirs(f"{w}/eval/{model}", exist_ok=True)
    np.savez(f"{w}/eval/{model}/{task}.npz", **arrays)

  # zero-shot task: 4 classes, 30 images; class metadata near centers 0, 2, 3, 4
  labels = rng.integers(0, 4, 30).astype(np.int32)
  meta = unit(M[[0, 2, 3, 4]] + 0.2 * rng.normal(size=(4, 8))).astype(np.float32)
  for model in ["dense", "seed"] + [f"expert_{c}" for c in range(N_EXPERTS)]:
    logits = rng.uniform(-1, 1, (30, 4)) + 0.8 * np.eye(4)[labels] * rng.uniform(0, 1, (30, 1))
    put(model, "toy", dict(logits=logits.astype(np.float32), labels=labels))
  # retrieval task: 6 images x 2 captions, caption metadata near random centers
  t2i = np.repeat(np.arange(6), 2).astype(np.int32)
  cap_meta = unit(M[rng.integers(0, 6, 12)] + 0.2 * rng.normal(size=(12, 8))).astype(np.float32)
  for model in ["dense"] + [f"expert_{c}" for c in range(N_EXPERTS)]:
    logits = rng.uniform(-1, 1, (6, 12)) + 0.7 * (t2i[None] == np.arange(6)[:, None])
    extra = {"logit_scale": np.float32(SCALE)} if model == "expert_2" else {}
    put(model, "caps", dict(logits=logits.astype(np.float32), labels=np.arange(6, dtype=np.int32),
                            txt_to_img=t2i, **extra))
  os.makedirs(f"{w}/eval/meta_emb")
  np.save(f"{w}/eval/meta_emb/toy.npy", meta)
  np.save(f"{w}/eval/meta_emb/caps.npy", cap_meta)
  wd.write_json(f"{w}/shards/eval/toy.json", {"kind": "zeroshot", "classnames": list("abcd"),
                                               "templates": ["{}"]})
  wd.write_json(f"{w}/shards/eval/caps.json", {"kind": "retrieval"})
  return w


def load(w, model, task):
  with np.load(f"{w}/eval/{model}/{task}.npz") as z:
    return {k: z[k] for k in z.files}


def read_csv(p):
  with open(p) as f:
    return {r["task"]: r for r in csv.DictReader(f)}


def read_weights(workdir, formula="reference"):
  """report/routing_weights.csv's rows of one formula, by task."""
  with open(f"{workdir}/report/routing_weights.csv") as f:
    return {r["task"]: r for r in csv.DictReader(f) if r["formula"] == formula}


def test_report_numbers(workdir, capsys):
  cfg = report.default_config()
  cfg.plots = True
  report.run_report(cfg, workdir)
  M = np.load(f"{workdir}/cluster/fine_centers.npy")
  pi = np.load(f"{workdir}/cluster/fine_to_expert.npy")
  res = read_csv(f"{workdir}/report/results.csv")
  assert set(res) == {"toy", "caps", "average"}

  # zero-shot
  toy = {m: load(workdir, m, "toy") for m in ["dense", "seed", "expert_0", "expert_1",
                                                "expert_2"]}
  y = toy["dense"]["labels"]
  L = np.stack([toy[f"expert_{c}"]["logits"] for c in range(3)]).astype(np.float64)
  w = ref_routing(np.load(f"{workdir}/eval/meta_emb/toy.npy"), M, pi, 3)
  row = res["toy"]
  want = {"dense": top1(toy["dense"]["logits"], y), "seed": top1(toy["seed"]["logits"], y),
          **{f"expert_{c}": top1(L[c], y) for c in range(3)},
          "uniform": top1(L.mean(0), y), "MoDE": top1(np.einsum("c,cij->ij", w, L), y)}
  wp = ref_paper_routing(np.load(f"{workdir}/eval/meta_emb/toy.npy"), M, pi, 3)
  want["MoDE_paper"] = top1(np.einsum("c,cij->ij", wp, L), y)
  assert not np.allclose(w, wp)   # the two formulas differ here
  ex = [want[f"expert_{c}"] for c in range(3)]
  want["best_single"] = max(ex)
  want["prior"] = ex[int(np.argmax(w))]
  for k in range(1, 4):
    s = ORDER[:k]
    want[f"MoDE-{k}"] = top1(np.einsum("c,cij->ij", w[s] / w[s].sum(), L[s]), y)
  for key, v in want.items():
    assert float(row[key]) == pytest.approx(v, abs=1e-6), key
  assert int(row["best_single_expert"]) == int(np.argmax(ex))
  assert int(row["n_classes"]) == 4
  assert len(set(ex)) > 1   # the synthetic experts really differ

  # retrieval: i2t with corpus weights, t2i with per-query weights
  caps = {m: load(workdir, m, "caps") for m in ["dense", "expert_0", "expert_1", "expert_2"]}
  t2i = caps["dense"]["txt_to_img"]
  L = np.stack([caps[f"expert_{c}"]["logits"] for c in range(3)]).astype(np.float64)
  cm = np.load(f"{workdir}/eval/meta_emb/caps.npy")
  wc, wq = ref_routing(cm, M, pi, 3), ref_routing(cm, M, pi, 3, per_query=True)
  row = res["caps"]
  assert float(row["dense"]) == pytest.approx(mean_r1(caps["dense"]["logits"],
                                                      caps["dense"]["logits"], t2i))
  assert float(row["expert_1"]) == pytest.approx(mean_r1(L[1], L[1], t2i))
  mode_t2i = np.einsum("tc,cit->it", wq, L)
  assert float(row["MoDE"]) == pytest.approx(mean_r1(np.einsum("c,cij->ij", wc, L), mode_t2i,
                                                     t2i))
  assert row["seed"] == ""   # no seed logits for this task

  # specialisation: each caption to the expert of its nearest fine center; every model on
  # each cluster's pairs, at its logit_scale
  cap_expert = pi[((cm[:, None].astype(np.float64) - M[None]) ** 2).sum(-1).argmin(1)]
  with open(f"{workdir}/report/specialisation.csv") as f:
    spec = list(csv.DictReader(f))
  assert sorted((int(r["cluster"]), r["model"]) for r in spec) == sorted(
      (c, m) for c in range(3) for m in caps)
  scored = 0
  for r in spec:
    mine = np.flatnonzero(cap_expert == int(r["cluster"]))
    imgs = np.unique(t2i[mine])
    assert (int(r["n_pairs"]), int(r["n_images"])) == (len(mine), len(imgs))
    if min(len(mine), len(imgs)) < 2:
      assert r["loss"] == r["i2t_R@1"] == ""
      continue
    scored += 1
    sub = caps[r["model"]]["logits"][np.ix_(imgs, mine)].astype(np.float64)
    local = np.searchsorted(imgs, t2i[mine])
    scale = SCALE if r["model"] == "expert_2" else 100.0
    assert float(r["loss"]) == pytest.approx(ref_infonce(scale * sub, local), rel=1e-5)
    r1 = 100 * np.mean([local[np.argmax(sub[i])] == i for i in range(len(imgs))])
    assert float(r["i2t_R@1"]) == pytest.approx(r1)
  assert scored >= 8   # at least two clusters really scored

  avg = res["average"]
  assert float(avg["MoDE"]) == pytest.approx((float(res["toy"]["MoDE"]) +
                                              float(res["caps"]["MoDE"])) / 2)
  assert avg["seed"] == ""   # not averaged over a subset of the tasks

  with open(f"{workdir}/report/routing_weights.csv") as f:
    weights = {(r["task"], r["formula"]): r for r in csv.DictReader(f)}
  assert set(weights) == {(t, f) for t in ("toy", "caps") for f in ("reference", "paper")}
  for (task, formula), ref in ((("toy", "reference"), w), (("caps", "reference"), wc),
                               (("toy", "paper"), wp)):
    np.testing.assert_allclose([float(weights[task, formula][f"expert_{c}"]) for c in range(3)],
                               ref, rtol=1e-5)
  for f in ["results.md", "routing_weights.md", "metrics.csv"]:
    assert os.path.getsize(f"{workdir}/report/{f}") > 0
  for f in ["routing_weights.png", "scores.png"]:
    with open(f"{workdir}/report/{f}", "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  md = open(f"{workdir}/report/results.md").read()
  assert "ORACLE" in md and "| toy |" in md
  assert "## Specialisation" in md and "### caps" in md and "Expert c beats dense" in md
  assert "## Clusters" not in md   # no assign/ outputs in this workdir
  printed = capsys.readouterr().out
  assert "| task | kind |" in printed and "| caps |" in printed


def test_missing_inputs_name_their_stage(workdir):
  cfg = report.default_config()
  cfg.plots = False
  os.remove(f"{workdir}/eval/expert_1/caps.npz")
  with pytest.raises(wd.MissingInput) as e:
    report.run_report(cfg, workdir)
  assert e.value.stage == "evaluate" and e.value.path.endswith("expert_1/caps.npz")
  os.remove(f"{workdir}/cluster/fine_to_expert.npy")
  with pytest.raises(wd.MissingInput) as e:
    report.run_report(cfg, workdir)
  assert e.value.stage == "cluster"


def test_tasks_from_config_and_paper_mode(workdir):
  cfg = report.default_config()
  cfg.tasks, cfg.mode, cfg.plots = "toy", "paper", False
  out = report.run_report(cfg, workdir)
  assert [r["task"] for r in out["rows"]] == ["toy", "average"]
  assert not os.path.exists(f"{workdir}/report/scores.png")
  assert out["specialisation"] == [] and out["clusters"] is None   # no retrieval task
  assert not os.path.exists(f"{workdir}/report/specialisation.csv")


def test_cluster_summary_linked(workdir):
  from mode_jax.data.io import wds_writer
  caps = ["a red dog", "a red dog", "a blue car", "a blue car"]
  wds_writer.write_shard(f"{workdir}/shards/train-00000.tar", [
      {"__key__": f"k{i}", "txt": t, "png": np.zeros((4, 4, 3), np.uint8)}
      for i, t in enumerate(caps)])
  wd.save_npz(f"{workdir}/assign/train-00000.npz", keys=np.asarray(["k0", "k1", "k2", "k3"]),
              fine=np.array([0, 0, 2, 2], np.int32), expert=np.array([0, 0, 1, 1], np.int32),
              cluster_fingerprint=np.asarray("x"))
  cfg = report.default_config()
  cfg.tasks, cfg.plots, cfg.bootstrap_samples = "toy", False, 0
  out = report.run_report(cfg, workdir)
  assert [[w for w, _ in r["words"]] for r in out["clusters"]["rows"]] == [
      ["dog", "red"], ["blue", "car"], []]
  md = open(f"{workdir}/report/results.md").read()
  assert "## Clusters" in md and "[clusters.md](clusters.md)" in md
  assert "clusters.png" not in md and not os.path.exists(f"{workdir}/report/clusters.png")


def test_bad_config_is_a_value_error(workdir):
  cfg = report.default_config()
  cfg.mode = "median"
  with pytest.raises(ValueError, match="report.mode"):
    report.run_report(cfg, workdir)
  cfg = report.default_config()
  cfg.top_k = 7   # only 6 fine centers
  with pytest.raises(ValueError, match="report.top_k"):
    report.run_report(cfg, workdir)


def test_unlabelled_images_are_counted_and_left_out(workdir):
  """Zero-shot rows labelled -1 (a sample without a label) are not scored as the last class:
  every model, ensemble and interval uses the labelled rows; results and scores count them."""
  from mode_jax.eval import evaluate, tasks as tasks_lib
  models = ["dense", "seed"] + [f"expert_{c}" for c in range(N_EXPERTS)]
  toy = {}
  for m in models:
    a = load(workdir, m, "toy")
    a["labels"][:6] = -1
    a["logits"][:6, 3] = 5.0   # class 3 on top: a hit each, were -1 read as the last class
    np.savez(f"{workdir}/eval/{m}/toy.npz", **a)
    toy[m] = a
  cfg = report.default_config()
  cfg.tasks, cfg.plots, cfg.bootstrap_samples, cfg.clusters = "toy", False, 50, False
  out = report.run_report(cfg, workdir)
  row = read_csv(f"{workdir}/report/results.csv")["toy"]
  y = toy["dense"]["labels"][6:]
  L = np.stack([toy[f"expert_{c}"]["logits"][6:] for c in range(3)]).astype(np.float64)
  w = ref_routing(np.load(f"{workdir}/eval/meta_emb/toy.npy"),
                  np.load(f"{workdir}/cluster/fine_centers.npy"),
                  np.load(f"{workdir}/cluster/fine_to_expert.npy"), 3)
  want = {m: top1(toy[m]["logits"][6:], y) for m in models}
  want.update(uniform=top1(L.mean(0), y), MoDE=top1(np.einsum("c,cij->ij", w, L), y))
  for m, v in want.items():
    assert float(row[m]) == pytest.approx(v, abs=1e-6), m
  assert row["n_unlabelled"] == "6"
  assert "Unlabelled test images (label -1)" in open(f"{workdir}/report/results.md").read()
  assert "- toy: 6\n" in open(f"{workdir}/report/results.md").read()
  sig = {r["comparison"]: r for r in out["significance"] if r["task"] == "toy"}
  assert sig["MoDE - dense"]["diff"] == pytest.approx(want["MoDE"] - want["dense"], abs=1e-6)
  # the evaluate stage's plain table scores and counts them the same way
  task = tasks_lib.Task("toy", "zeroshot", "top1", "", classnames=list("abcd"), templates=["{}"])
  evaluate.write_scores(workdir, {"toy": task}, ["dense"])
  scores = read_csv(f"{workdir}/eval/scores.csv")["toy"]
  assert float(scores["dense"]) == pytest.approx(want["dense"], abs=1e-6)
  assert "- toy: 6\n" in open(f"{workdir}/eval/scores.md").read()


def test_retrieval_meta_rows_follow_the_caption_columns(workdir):
  """An unreadable image takes its captions out of the logits but not out of eval/meta_emb
  (one row per caption of every sample): each model's txt_index names the row of each
  column, so routing sees the captions that were scored. Before, the report refused the task
  (or, with as many rows, would have routed every later caption by its neighbour's row)."""
  rng = np.random.default_rng(9)
  models = ["dense"] + [f"expert_{c}" for c in range(N_EXPERTS)]
  M = np.load(f"{workdir}/cluster/fine_centers.npy")
  pi = np.load(f"{workdir}/cluster/fine_to_expert.npy")
  cm = np.load(f"{workdir}/eval/meta_emb/caps.npy")        # the 12 scored captions
  lost = unit(M[[5, 5]] + 0.1 * rng.normal(size=(2, 8))).astype(np.float32)
  np.save(f"{workdir}/eval/meta_emb/caps.npy", np.concatenate([cm[:4], lost, cm[4:]]))
  txt_index = np.array([0, 1, 2, 3] + list(range(6, 14)), np.int32)   # image 2 unreadable
  caps = {}
  for m in models:
    caps[m] = load(workdir, m, "caps")
    np.savez(f"{workdir}/eval/{m}/caps.npz", **caps[m], txt_index=txt_index)
  cfg = report.default_config()
  cfg.tasks, cfg.plots, cfg.bootstrap_samples, cfg.clusters = "caps", False, 0, False
  report.run_report(cfg, workdir)
  row = read_csv(f"{workdir}/report/results.csv")["caps"]
  t2i = caps["dense"]["txt_to_img"]
  L = np.stack([caps[f"expert_{c}"]["logits"] for c in range(3)]).astype(np.float64)
  wc, wq = ref_routing(cm, M, pi, 3), ref_routing(cm, M, pi, 3, per_query=True)
  assert int(row["n_classes"]) == 12
  assert float(row["MoDE"]) == pytest.approx(mean_r1(np.einsum("c,cij->ij", wc, L),
                                                     np.einsum("tc,cit->it", wq, L), t2i))
  weights = read_weights(workdir)["caps"]
  np.testing.assert_allclose([float(weights[f"expert_{c}"]) for c in range(3)], wc, rtol=1e-5)

  # a model that read other images cannot join the ensemble; nor can a file without txt_index
  np.savez(f"{workdir}/eval/expert_1/caps.npz", **caps["expert_1"],
           txt_index=np.arange(2, 14, dtype=np.int32))
  with pytest.raises(ValueError, match="caps: expert_1 and dense were scored on different"):
    report.run_report(cfg, workdir)
  np.savez(f"{workdir}/eval/expert_1/caps.npz", **caps["expert_1"])
  with pytest.raises(ValueError, match="12 caption columns.*14 rows.*no txt_index"):
    report.run_report(cfg, workdir)


def add_binary_task(w, rng, task="memes", n=40):
  """A 2-class task scored by ROC AUC (eval/tasks/<task>.json), like HatefulMemes."""
  labels = rng.integers(0, 2, n).astype(np.int32)
  M = np.load(f"{w}/cluster/fine_centers.npy")
  np.save(f"{w}/eval/meta_emb/{task}.npy",
          unit(M[[1, 5]] + 0.2 * rng.normal(size=(2, 8))).astype(np.float32))
  for model in ["dense"] + [f"expert_{c}" for c in range(N_EXPERTS)]:
    logits = np.round(rng.uniform(-1, 1, (n, 2)) + 0.5 * np.eye(2)[labels], 1)   # with ties
    np.savez(f"{w}/eval/{model}/{task}.npz", logits=logits.astype(np.float32), labels=labels)
  wd.write_json(f"{w}/eval/tasks/{task}.json", {"kind": "zeroshot", "metric": "roc_auc"})


def test_validation_tasks_are_tabled_and_averaged_apart(workdir):
  """A task of the validation split (where a recipe is chosen) is in its own table and
  average, and in no interval; the held-out average is over held-out tasks only."""
  wd.write_json(f"{workdir}/shards/eval/toy.json", {
      "kind": "zeroshot", "classnames": list("abcd"), "templates": ["{}"], "split": "validation"})
  cfg = report.default_config()
  cfg.plots, cfg.bootstrap_samples = False, 50
  out = report.run_report(cfg, workdir)
  res = read_csv(f"{workdir}/report/results.csv")
  assert set(res) == {"toy", "caps", "average", "average (validation)"}
  assert {t: r["split"] for t, r in res.items()} == {
      "toy": "validation", "average (validation)": "validation", "caps": "test", "average": "test"}
  for col in ("dense", "expert_1", "MoDE"):
    assert float(res["average"][col]) == pytest.approx(float(res["caps"][col]))
    assert float(res["average (validation)"][col]) == pytest.approx(float(res["toy"][col]))
  assert [r["task"] for r in out["rows"]] == ["caps", "average"]
  assert [r["task"] for r in out["validation"]] == ["toy", "average (validation)"]
  assert {r["task"] for r in out["significance"]} == {"caps", "average"}
  md = open(f"{workdir}/report/results.md").read()
  head, val = md.split("## Validation")
  assert "| toy |" in val and "| toy |" not in head and "| caps |" in head
  with open(f"{workdir}/report/routing_weights.csv") as f:
    assert {(r["task"], r["split"]) for r in csv.DictReader(f)} == {("toy", "validation"),
                                                                    ("caps", "test")}


def test_metrics_significance_sharpness_probe_skipped(workdir):
  from sklearn.metrics import balanced_accuracy_score, roc_auc_score
  rng = np.random.default_rng(5)
  add_binary_task(workdir, rng)
  wd.write_json(f"{workdir}/eval/tasks/toy.json", {"kind": "zeroshot", "metric": "mean_per_class"})
  wd.write_json(f"{workdir}/eval/skipped.json", {"gone": "not found: /data/gone"})
  probe = {"toy": [0.5, 0.6, 0.7, 0.4, 0.8], "memes": [0.25, 0.5, 0.5, 0.5, 0.75]}
  for t, s in probe.items():
    models = ["dense", "expert_0", "expert_1", "expert_2", "concat"]
    wd.write_json(f"{workdir}/probe/{t}.json", {
        "task": t, "metric": "top1", "split": "holdout", "n_train": 9, "n_val": 3, "n_test": 4,
        "models": {m: {"score": v, "l2": 1e-3} for m, v in zip(models, s)}})
  cfg = report.default_config()
  cfg.plots, cfg.bootstrap_samples = False, 300
  out = report.run_report(cfg, workdir)
  res = read_csv(f"{workdir}/report/results.csv")
  assert set(res) == {"toy", "caps", "memes", "average"}   # "gone" is skipped, not fatal
  assert {t: res[t]["metric"] for t in res} == {
      "toy": "mean_per_class", "caps": "mean_R@1", "memes": "roc_auc", "average": ""}

  # each zero-shot task scored by its own metric
  y = load(workdir, "dense", "toy")["labels"]
  pred = load(workdir, "expert_1", "toy")["logits"].argmax(1)
  assert float(res["toy"]["expert_1"]) == pytest.approx(100 * balanced_accuracy_score(y, pred))
  d = load(workdir, "dense", "memes")
  s = d["logits"].astype(np.float64)   # the score is taken in float64
  auc = roc_auc_score(d["labels"], s[:, 1] - s[:, 0])
  assert float(res["memes"]["dense"]) == pytest.approx(100 * auc)

  # significance: one row per task and comparison, point = the results' difference
  with open(f"{workdir}/report/significance.csv") as f:
    sig = list(csv.DictReader(f))
  comps = ["MoDE - dense", "MoDE - uniform", "MoDE - best_single"]
  assert [(r["task"], r["comparison"]) for r in sig] == [
      (t, c) for t in ["caps", "memes", "toy", "average"] for c in comps]
  for r in sig:
    base = r["comparison"].split(" - ")[1]
    assert float(r["diff"]) == pytest.approx(float(res[r["task"]]["MoDE"])
                                             - float(res[r["task"]][base]), abs=1e-6)
    lo, hi = float(r["lo"]), float(r["hi"])
    assert lo <= hi and r["significant"] == str(lo > 0 or hi < 0)
  assert len({(r["lo"], r["hi"]) for r in sig}) > 3   # real intervals, not one constant
  assert out["significance"][-1]["task"] == "average"
  first = open(f"{workdir}/report/significance.csv").read()
  report.run_report(cfg, workdir)
  assert open(f"{workdir}/report/significance.csv").read() == first   # fixed seed

  # routing sharpness
  weights = read_weights(workdir)
  for t in ["toy", "caps", "memes"]:
    w = np.array([float(weights[t][f"expert_{c}"]) for c in range(N_EXPERTS)])
    ent = -np.sum(w * np.log(w))
    assert float(weights[t]["max_weight"]) == pytest.approx(w.max(), rel=1e-4)
    assert float(weights[t]["entropy"]) == pytest.approx(ent, rel=1e-4)
    assert float(weights[t]["entropy_norm"]) == pytest.approx(ent / np.log(3), rel=1e-4)
    assert out["sharpness"][t]["entropy_norm"] == pytest.approx(ent / np.log(3), rel=1e-4)

  # linear probe table, in percent, with an average row
  pr = read_csv(f"{workdir}/report/probe.csv")
  assert set(pr) == {"toy", "memes", "average"}
  assert float(pr["toy"]["concat"]) == pytest.approx(80.0)
  assert float(pr["average"]["expert_2"]) == pytest.approx((40.0 + 50.0) / 2)
  md = open(f"{workdir}/report/results.md").read()
  assert "| task | kind | metric | n_classes |" in md
  assert "- gone: not found: /data/gone" in md
  assert "## Significance" in md and "MoDE - dense [lo, hi]" in md and "300 replicates" in md
  assert "## Linear probe (paper Table 9)" in md and "| task | metric | split | dense |" in md
  assert os.path.getsize(f"{workdir}/report/significance.md") > 0


def test_no_bootstrap_no_probe_and_bad_metric(workdir):
  cfg = report.default_config()
  cfg.plots, cfg.bootstrap_samples = False, 0
  out = report.run_report(cfg, workdir)
  assert out["significance"] == [] and out["probe"] is None
  assert not os.path.exists(f"{workdir}/report/significance.csv")
  assert not os.path.exists(f"{workdir}/report/probe.csv")
  assert "Significance" not in open(f"{workdir}/report/results.md").read()
  wd.write_json(f"{workdir}/eval/tasks/toy.json", {"kind": "zeroshot", "metric": "top3"})
  with pytest.raises(ValueError, match="task toy.*top1_top5"):
    report.run_report(cfg, workdir)
  cfg.bootstrap_samples = -1
  with pytest.raises(ValueError, match="report.bootstrap_samples"):
    report.run_report(cfg, workdir)


def test_compare_pairs_another_runs_mode_on_the_same_images(workdir, tmp_path):
  """report.compare=name=workdir: the other run's MoDE (scored by its own report) becomes a
  column with paired intervals of MoDE - name; other test images are refused."""
  import shutil
  other = str(tmp_path / "other")
  shutil.copytree(workdir, other)
  rng = np.random.default_rng(7)
  for c in range(N_EXPERTS):   # the other run's experts: other weights, the same images
    for task in ("toy", "caps"):
      a = load(other, f"expert_{c}", task)
      a["logits"] = (a["logits"] + rng.normal(0, 0.5, a["logits"].shape)).astype(np.float32)
      np.savez(f"{other}/eval/expert_{c}/{task}.npz", **a)
  cfg = report.default_config()
  cfg.plots, cfg.bootstrap_samples, cfg.clusters = False, 200, False
  theirs = report.run_report(cfg, other)
  cfg.compare = f"random={other}"
  mine = report.run_report(cfg, workdir)
  res = read_csv(f"{workdir}/report/results.csv")
  for row in theirs["rows"][:-1]:
    assert float(res[row["task"]]["random"]) == pytest.approx(row["MoDE"])
  assert "random" in mine["columns"]
  sig = {(r["task"], r["comparison"]): r for r in mine["significance"]}
  for t in ("toy", "caps", "average"):
    r = sig[(t, "MoDE - random")]
    assert r["diff"] == pytest.approx(float(res[t]["MoDE"]) - float(res[t]["random"]), abs=1e-6)
    assert r["lo"] <= r["diff"] <= r["hi"] or t == "average"
  assert sig[("toy", "MoDE - dense")]["diff"] == pytest.approx(
      float(res["toy"]["MoDE"]) - float(res["toy"]["dense"]), abs=1e-6)
  # Each compared run's task data is checked by content (the eval manifests' task
  # fingerprints), the second as the first.
  other2 = str(tmp_path / "other2")
  shutil.copytree(other, other2)
  for w, toy in ((workdir, "a"), (other, "a"), (other2, "b")):
    wd.write_json(f"{w}/eval/manifest.json", {"inputs": {
        "task toy": {"fingerprint": toy}, "task caps": {"fingerprint": "c"}}})
  cfg.compare = f"random={other},again={other2}"
  with pytest.raises(ValueError, match=f"again={other2} evaluated other data for task toy"):
    report.run_report(cfg, workdir)
  cfg.compare = f"random={other}"
  a = load(other, "dense", "toy")
  a["labels"] = np.roll(a["labels"], 1)
  np.savez(f"{other}/eval/dense/toy.npz", **a)
  with pytest.raises(ValueError, match="other test images for task toy"):
    report.run_report(cfg, workdir)
  for bad in ("dense=/x", "random", "MoDE_x=/x"):
    cfg.compare = bad
    with pytest.raises(ValueError, match="report.compare"):
      report.run_report(cfg, workdir)
