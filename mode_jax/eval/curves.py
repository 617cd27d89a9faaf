"""Validation curves in the report: each MoDE run's validation scores, logged while it trained
(eval/validation.py), read back from its metrics.jsonl, tabled and plotted
(report/validation_curves.{csv,png}).
"""

from __future__ import annotations

from mode_jax import workdir as wd
from mode_jax.train import metrics as metrics_lib
from mode_jax.train import runs

PREFIX = "val/"            # metrics key of a validation score: val/<task>
RECORD = "validation.json"  # <run>/: {"tasks": {task: fingerprint}, "every": steps}


def read(workdir: str, n: int, evaluated: dict[str, str]) -> tuple[list[dict], list[str]]:
  """([{run, step, epoch, task, score}], [left out]) of the seed, experts 0..n-1 and dense,
  from their metrics.jsonl. `evaluated` ({task: fingerprint} the evaluate stage scored):
  a run's points on a task count only when its RECORD names the same task data; the others
  are left out and named ("expert_1 on val_x"), so no curve from other data passes as
  current. ([], []) when nothing trained (no plan)."""
  if not wd.exists(wd.path(workdir, runs.PLAN)):
    return [], []
  spe = runs.read_plan(workdir)["steps_per_epoch"]
  named = [("seed", runs.SEED_DIR)] + [(f"expert_{c}", runs.expert_rel(c)) for c in range(n)]
  rows, left_out = [], []
  for run, rel in named + [("dense", runs.DENSE_DIR)]:
    run_dir = runs.run_dir(workdir, rel)
    path = wd.path(run_dir, "metrics.jsonl")
    if not wd.exists(path):
      continue
    record = wd.path(run_dir, RECORD)
    scored_on = wd.read_json(record).get("tasks", {}) if wd.exists(record) else {}
    by_step = {}   # a resumed run's rows: the last one per step is the run's
    for row in metrics_lib.read_jsonl(path):
      scores = {k[len(PREFIX):]: v for k, v in row.items() if k.startswith(PREFIX)}
      if scores:
        by_step.setdefault(int(row["step"]), {}).update(scores)
    tasks = sorted({t for scores in by_step.values() for t in scores})
    keep = {t for t in tasks if t in evaluated and scored_on.get(t) == evaluated[t]}
    left_out += [f"{run} on {t}" for t in tasks if t not in keep]
    rows += [{"run": run, "step": s, "epoch": s / spe, "task": t, "score": v}
             for s, scores in sorted(by_step.items()) for t, v in sorted(scores.items())
             if t in keep]
  return rows, left_out


def table(rows: list[dict]) -> tuple[list[str], list[dict]]:
  """(header, one row per run: its last point's score per task and that point's epoch)."""
  tasks = sorted({r["task"] for r in rows})
  runs_ = list(dict.fromkeys(r["run"] for r in rows))
  out = []
  for run in runs_:
    mine = [r for r in rows if r["run"] == run]
    last = max(r["step"] for r in mine)
    at = {r["task"]: r["score"] for r in mine if r["step"] == last}
    out.append({"run": run, "epoch": next(r["epoch"] for r in mine if r["step"] == last),
                **{t: at.get(t, float("nan")) for t in tasks}})
  return ["run", "epoch"] + tasks, out


def plot(path: str, rows: list[dict], chance: dict | None = None) -> None:
  """One panel per validation task: score against epoch; each expert's and dense's line
  starts at the seed's last point (the state they fork from); `chance` ({task: %}) draws
  a dotted line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = sorted({r["task"] for r in rows})
  runs_ = list(dict.fromkeys(r["run"] for r in rows))
  fig, axes = plt.subplots(1, len(tasks), squeeze=False, figsize=(4.2 * len(tasks), 3.4))
  for ax, task in zip(axes[0], tasks):
    pts = {run: sorted((r["epoch"], r["score"]) for r in rows
                       if r["run"] == run and r["task"] == task) for run in runs_}
    fork = pts.get("seed", [])[-1:]
    for run in runs_:
      line = pts[run] if run == "seed" else fork + pts[run]
      if not line:
        continue
      style = ({"color": "black", "lw": 2} if run == "seed" else
               {"color": "grey", "ls": "--"} if run == "dense" else {})
      ax.plot(*zip(*line), marker="o", ms=3, label=run, **style)
    if task in (chance or {}):
      ax.axhline(chance[task], color="grey", ls=":", lw=1, label="chance")
    ax.set_title(task)
    ax.set_xlabel("epoch")
    ax.set_ylabel("score (%)")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Validation while training (the seed, then each expert and dense from it)")
  fig.tight_layout()
  wd.save_figure(path, fig)
  plt.close(fig)
