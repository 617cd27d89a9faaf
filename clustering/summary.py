"""cluster/summary/: what the clusters look like, so a person can judge them at a glance.

  sizes.png        histogram of fine-cluster sizes and each expert's size
  experts.json/md  each expert's share of the data, fine centers and spread
  captions.md      sample captions per expert and per largest fine cluster,
                   read straight from shards/<stem>.tar (omitted when absent)
Samples are a seeded, order-independent draw: every row gets a random
priority and each group keeps its lowest ones.
"""

from __future__ import annotations

import os

import numpy as np

from mode_jax import workdir as wd


class Collector:
  """Accumulates cluster sizes and per-group samples over the assign stage's files."""

  def __init__(self, m: int, n: int, per_group: int, seed: int):
    self.m, self.n, self.per_group, self.seed = m, n, per_group, seed
    self.fine_counts = np.zeros(m, np.int64)
    self.expert_counts = np.zeros(n, np.int64)
    self.stems: list[str] = []
    # per kind: (group, priority, file index, row) of the kept samples
    self.kept = {k: [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64),
                     np.zeros(0, np.int64)] for k in ("fine", "expert")}

  def add(self, file_index: int, stem: str, fine: np.ndarray, expert: np.ndarray) -> None:
    self.stems.append(stem)
    self.fine_counts += np.bincount(fine, minlength=self.m)
    self.expert_counts += np.bincount(expert, minlength=self.n)
    prio = np.random.default_rng([self.seed, file_index]).random(len(fine))
    rows = np.arange(len(fine))
    for kind, groups in (("fine", fine), ("expert", expert)):
      g, p, f, r = self.kept[kind]
      g = np.concatenate([g, groups.astype(np.int64)])
      p = np.concatenate([p, prio])
      f = np.concatenate([f, np.full(len(rows), len(self.stems) - 1)])
      r = np.concatenate([r, rows])
      order = np.lexsort((p, g))
      g, p, f, r = g[order], p[order], f[order], r[order]
      first = np.searchsorted(g, g, side="left")
      keep = (np.arange(len(g)) - first) < self.per_group
      self.kept[kind] = [g[keep], p[keep], f[keep], r[keep]]

  def samples(self, kind: str, group: int) -> list[tuple[str, int]]:
    g, _, f, r = self.kept[kind]
    sel = g == group
    return [(self.stems[i], int(j)) for i, j in zip(f[sel], r[sel])]


def read_captions(tar_path: str, keys: set[str]) -> dict[str, str]:
  """First caption of each of `keys` in a shard, read with the training reader."""
  from mode_jax.data import webdataset as wds
  return {s["__key__"]: s["texts"][0]
          for s in wds.iter_shard(tar_path, with_images=False, stats=wds.Stats())
          if s["__key__"] in keys}


def _lookup_captions(workdir: str, wanted: list[tuple[str, int]]) -> dict | None:
  """(stem, row) -> caption, or None when the shards are absent."""
  by_stem: dict[str, list[int]] = {}
  for stem, row in wanted:
    by_stem.setdefault(stem, []).append(row)
  out = {}
  for stem, rows in by_stem.items():
    tar_path = wd.path(workdir, "shards", stem + ".tar")
    if not os.path.exists(tar_path):
      return None
    with np.load(wd.path(workdir, "embed", stem + ".npz"), allow_pickle=False) as z:
      keys = z["keys"]
    want = {str(keys[r]): r for r in rows}
    caps = read_captions(tar_path, set(want))
    for key, row in want.items():
      out[(stem, row)] = caps.get(key, "(caption not found)")
  return out


def _plot_sizes(path: str, fine_counts, expert_counts) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
  a.hist(fine_counts, bins=min(50, max(5, len(fine_counts) // 4)), color="tab:blue")
  a.axvline(fine_counts.sum() / len(fine_counts), color="k", ls="--", lw=1, label="N/m")
  a.set(title=f"fine-cluster sizes (m={len(fine_counts)})", xlabel="points", ylabel="clusters")
  a.legend()
  b.bar(np.arange(len(expert_counts)), expert_counts, color="tab:orange")
  b.set(title=f"expert sizes (n={len(expert_counts)})", xlabel="expert", ylabel="points")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(workdir: str, h, stats: Collector, largest: int = 10) -> dict:
  """Writes cluster/summary/ and returns the expert-share report."""
  root = wd.path(workdir, "cluster", "summary")
  os.makedirs(root, exist_ok=True)
  total = int(stats.expert_counts.sum())
  spreads = h.meta.get("expert_spread", [float("nan")] * h.n)
  rank = {e: i for i, e in enumerate(h.expert_order)}
  fine_per_expert = np.bincount(h.fine_to_expert, minlength=h.n)
  experts = [dict(expert=e, count=int(stats.expert_counts[e]),
                  share=float(stats.expert_counts[e] / max(total, 1)),
                  n_fine=int(fine_per_expert[e]), spread=float(spreads[e]),
                  spread_rank=rank[e]) for e in range(h.n)]
  report = dict(n_points=total, m=h.m, n=h.n, experts=experts,
                shares=[x["share"] for x in experts],
                fine_sizes=dict(min=int(stats.fine_counts.min()),
                                max=int(stats.fine_counts.max()),
                                mean=float(stats.fine_counts.mean()),
                                empty=int((stats.fine_counts == 0).sum())))
  wd.write_json(os.path.join(root, "experts.json"), report)
  lines = [f"# Experts ({total} points, m={h.m} fine clusters, n={h.n} experts)", "",
           "| expert | points | share | fine clusters | spread | spread rank |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {x['expert']} | {x['count']} | {x['share']:.3f} | {x['n_fine']} | "
            f"{x['spread']:.4f} | {x['spread_rank']} |" for x in experts]
  fs = report["fine_sizes"]
  lines += ["", f"Fine-cluster sizes: min {fs['min']}, mean {fs['mean']:.1f}, "
            f"max {fs['max']}, empty {fs['empty']}."]
  with open(os.path.join(root, "experts.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  _plot_sizes(os.path.join(root, "sizes.png"), stats.fine_counts, stats.expert_counts)

  top_fine = [int(i) for i in np.argsort(-stats.fine_counts, kind="stable")[:largest]]
  groups = [("expert", e) for e in h.expert_order] + [("fine", s) for s in top_fine]
  wanted = [x for kind, g in groups for x in stats.samples(kind, g)]
  caps = _lookup_captions(workdir, wanted)
  cap_path = os.path.join(root, "captions.md")
  if caps is None:
    if os.path.exists(cap_path):
      os.remove(cap_path)
    report["captions"] = False
    return report
  out = ["# Sample captions", ""]
  for kind, g in groups:
    if kind == "expert":
      title = f"## Expert {g} ({stats.expert_counts[g]} points, spread rank {rank[g]})"
    else:
      title = (f"## Fine cluster {g} ({stats.fine_counts[g]} points, "
               f"expert {h.fine_to_expert[g]})")
    out += [title, ""] + [f"- {caps[x]}" for x in stats.samples(kind, g)] + [""]
  with open(cap_path, "w") as f:
    f.write("\n".join(out))
  report["captions"] = True
  return report
