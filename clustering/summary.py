"""cluster/summary/: what the clusters look like, so a person can judge them at a glance.

  sizes.png        histogram of fine-cluster sizes and each expert's size
  experts.json/md  each expert's share of the data, fine centers and spread
  captions.md      sample captions per expert and per largest fine cluster,
                   read from the shards (from img2dataset's parquet files beside
                   them when every shard has one; omitted when they are absent)
Samples are a seeded, order-independent draw: every row gets a random
priority and each group keeps its lowest ones, so hosts' partial
collections merge into exactly what one process would have kept.
"""

from __future__ import annotations

import numpy as np

from mode_jax import workdir as wd


class Collector:
  """Accumulates cluster sizes and per-group samples over the assign stage's files."""

  def __init__(self, m: int, n: int, per_group: int, seed: int):
    self.m, self.n, self.per_group, self.seed = m, n, per_group, seed
    self.fine_counts = np.zeros(m, np.int64)
    self.expert_counts = np.zeros(n, np.int64)
    self.stems: dict[int, str] = {}   # file index -> stem
    # per kind: (group, priority, file index, row) of the kept samples
    self.kept = {k: [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64),
                     np.zeros(0, np.int64)] for k in ("fine", "expert")}

  def add(self, file_index: int, stem: str, fine: np.ndarray, expert: np.ndarray) -> None:
    self.stems[int(file_index)] = stem
    self.fine_counts += np.bincount(fine, minlength=self.m)
    self.expert_counts += np.bincount(expert, minlength=self.n)
    prio = np.random.default_rng([self.seed, file_index]).random(len(fine))
    rows = np.arange(len(fine))
    for kind, groups in (("fine", fine), ("expert", expert)):
      self._keep(kind, groups.astype(np.int64), prio, np.full(len(rows), int(file_index)), rows)

  def _keep(self, kind, g, p, f, r) -> None:
    """Adds candidates and keeps each group's per_group lowest priorities."""
    g0, p0, f0, r0 = self.kept[kind]
    g, p, f, r = (np.concatenate([a, b]) for a, b in ((g0, g), (p0, p), (f0, f), (r0, r)))
    order = np.lexsort((r, f, p, g))
    g, p, f, r = g[order], p[order], f[order], r[order]
    first = np.searchsorted(g, g, side="left")
    keep = (np.arange(len(g)) - first) < self.per_group
    self.kept[kind] = [g[keep], p[keep], f[keep], r[keep]]

  def merge(self, other: "Collector") -> "Collector":
    """Adds another host's collection (disjoint files)."""
    self.fine_counts += other.fine_counts
    self.expert_counts += other.expert_counts
    self.stems.update(other.stems)
    for kind in self.kept:
      self._keep(kind, *other.kept[kind])
    return self

  def save(self, p: str) -> None:
    arrays = {f"{kind}_{name}": a for kind, parts in self.kept.items()
              for name, a in zip(("group", "prio", "file", "row"), parts)}
    wd.save_npz(p, fine_counts=self.fine_counts, expert_counts=self.expert_counts,
                stem_index=np.asarray(list(self.stems), np.int64),
                stem_name=np.asarray(list(self.stems.values()), dtype=str),
                params=np.asarray([self.m, self.n, self.per_group, self.seed], np.int64),
                **arrays)

  @classmethod
  def load(cls, p: str) -> "Collector":
    z = wd.load_npz(p)
    c = cls(*(int(v) for v in z["params"]))
    c.fine_counts, c.expert_counts = z["fine_counts"], z["expert_counts"]
    c.stems = {int(i): str(s) for i, s in zip(z["stem_index"], z["stem_name"])}
    c.kept = {kind: [z[f"{kind}_{name}"] for name in ("group", "prio", "file", "row")]
              for kind in ("fine", "expert")}
    return c

  def samples(self, kind: str, group: int) -> list[tuple[str, int]]:
    g, _, f, r = self.kept[kind]
    sel = g == group
    return [(self.stems[int(i)], int(j)) for i, j in zip(f[sel], r[sel])]


def read_captions(tar_path: str, keys: set[str], source=None) -> dict[str, str]:
  """First caption of each of `keys` in a shard, read as the embed stage reads captions
  (img2dataset's parquet beside the tars when there is one: shard_captions)."""
  from mode_jax.data.io import shard_captions
  from mode_jax.data.io import webdataset as wds
  source = source or shard_captions.ShardCaptions([tar_path])
  got, texts = source.read(tar_path, wds.Stats())
  return {k: t[0] for k, t in zip(got, texts) if k in keys}


def _shard_of_stem(workdir: str, shards) -> dict[str, str]:
  """stem -> shard path from config.input.shards ({} when they cannot be found)."""
  from mode_jax.data.io import loader
  try:
    return {wd.shard_stem(p): p for p in loader.shard_paths(shards or wd.TRAIN_SHARDS,
                                                            workdir)}
  except (FileNotFoundError, wd.MissingInput):
    return {}


def _lookup_captions(workdir: str, wanted: list[tuple[str, int]], shards=None) -> dict | None:
  """(stem, row) -> caption, or None when the shards are absent."""
  by_stem: dict[str, list[int]] = {}
  for stem, row in wanted:
    by_stem.setdefault(stem, []).append(row)
  from mode_jax.data.io import shard_captions
  tar_of = _shard_of_stem(workdir, shards)
  if any(stem not in tar_of for stem in by_stem):
    return None
  source = shard_captions.ShardCaptions([tar_of[stem] for stem in by_stem])
  out = {}
  for stem, rows in by_stem.items():
    keys = wd.load_npz(wd.path(workdir, "embed", stem + ".npz"))["keys"]
    want = {str(keys[r]): r for r in rows}
    caps = read_captions(tar_of[stem], set(want), source)
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
  wd.save_figure(path, fig, dpi=100)
  plt.close(fig)


def write(workdir: str, h, stats: Collector, largest: int = 10, shards=None) -> dict:
  """Writes cluster/summary/ and returns the expert-share report."""
  root = wd.path(workdir, "cluster", "summary")
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
  wd.write_json(wd.path(root, "experts.json"), report)
  lines = [f"# Experts ({total} points, m={h.m} fine clusters, n={h.n} experts)", "",
           "| expert | points | share | fine clusters | spread | spread rank |",
           "|---|---|---|---|---|---|"]
  lines += [f"| {x['expert']} | {x['count']} | {x['share']:.3f} | {x['n_fine']} | "
            f"{x['spread']:.4f} | {x['spread_rank']} |" for x in experts]
  fs = report["fine_sizes"]
  lines += ["", f"Fine-cluster sizes: min {fs['min']}, mean {fs['mean']:.1f}, "
            f"max {fs['max']}, empty {fs['empty']}."]
  wd.write_text(wd.path(root, "experts.md"), "\n".join(lines) + "\n")
  _plot_sizes(wd.path(root, "sizes.png"), stats.fine_counts, stats.expert_counts)

  top_fine = [int(i) for i in np.argsort(-stats.fine_counts, kind="stable")[:largest]]
  groups = [("expert", e) for e in h.expert_order] + [("fine", s) for s in top_fine]
  wanted = [x for kind, g in groups for x in stats.samples(kind, g)]
  caps = _lookup_captions(workdir, wanted, shards)
  cap_path = wd.path(root, "captions.md")
  if caps is None:
    wd.remove(cap_path)
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
  wd.write_text(cap_path, "\n".join(out))
  report["captions"] = True
  return report
