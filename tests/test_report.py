"""The report stage on a tiny synthetic workdir, every number recomputed in numpy."""

import csv
import math
import os

import numpy as np
import pytest

from mode_jax import workdir as wd
from mode_jax.eval import report

N_EXPERTS, ORDER = 3, [2, 0, 1]


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_routing(E, M, pi, n, per_query=False):
  """DESIGN.md step 8 reference formula in float64 (per_query: each row its own N=1 task)."""
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
    put(model, "caps", dict(logits=logits.astype(np.float32), labels=np.arange(6, dtype=np.int32),
                            txt_to_img=t2i))
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

  avg = res["average"]
  assert float(avg["MoDE"]) == pytest.approx((float(res["toy"]["MoDE"]) +
                                              float(res["caps"]["MoDE"])) / 2)
  assert avg["seed"] == ""   # not averaged over a subset of the tasks

  weights = read_csv(f"{workdir}/report/routing_weights.csv")
  np.testing.assert_allclose([float(weights["toy"][f"expert_{c}"]) for c in range(3)], w,
                             rtol=1e-5)
  np.testing.assert_allclose([float(weights["caps"][f"expert_{c}"]) for c in range(3)], wc,
                             rtol=1e-5)
  for f in ["results.md", "routing_weights.md", "metrics.csv"]:
    assert os.path.getsize(f"{workdir}/report/{f}") > 0
  for f in ["routing_weights.png", "scores.png"]:
    with open(f"{workdir}/report/{f}", "rb") as fh:
      assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  md = open(f"{workdir}/report/results.md").read()
  assert "ORACLE" in md and "| toy |" in md
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


def test_bad_config_is_a_value_error(workdir):
  cfg = report.default_config()
  cfg.mode = "median"
  with pytest.raises(ValueError, match="report.mode"):
    report.run_report(cfg, workdir)
  cfg = report.default_config()
  cfg.top_k = 7   # only 6 fine centers
  with pytest.raises(ValueError, match="report.top_k"):
    report.run_report(cfg, workdir)
