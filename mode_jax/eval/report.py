"""The report stage (docs/method.md steps 8-10): route, ensemble, score, tabulate, plot.

Reads eval/<model>/<task>.npz for 'dense', 'expert_0'..'expert_{n-1}' (and
'seed' when present), eval/meta_emb/<task>.npy, the task spec (kind, metric:
eval/tasks/<task>.json, else shards/eval/<task>.json), eval/skipped.json,
cluster/fine_centers.npy, cluster/fine_to_expert.npy,
cluster/expert_order.json and, when the probe stage ran, probe/<task>.json;
writes report/results.{md,csv}, report/routing_weights.{md,csv} (with the
routing sharpness), report/significance.{md,csv}, report/metrics.csv (every
metric, long form), report/probe.{md,csv}, report/specialisation.{md,csv}
(retrieval tasks: every model on every cluster's pairs, eval/specialisation.py),
report/clusters.{md,png} (top words and sample images per expert, when assign/
and the training shards exist: eval/cluster_summary.py) and
report/routing_weights.png, report/scores.png, and report/validation_curves.{csv,png}
(each run's validation scores while it trained: eval/curves.py) when the runs logged them.

Score per task, in percent: zero-shot -> the task's metric (zeroshot.METRICS,
default top-1) on the labelled test images (the unlabelled ones, label -1, are
counted: results.csv n_unlabelled); retrieval -> the mean of image->text R@1
and text->image R@1, each caption routed by its own row of eval/meta_emb.
Columns: dense, seed, each expert, uniform (mean of experts), best_single
(ORACLE: best expert on the test labels), prior (the expert with the largest
routing weight, alone), MoDE (routed ensemble), MoDE-k (progressive: first k
experts of expert_order.json, weights renormalised over them).

Significance: paired bootstrap intervals of MoDE - dense, MoDE - uniform and
MoDE - best_single (eval/significance.py), on the logits scored here.
"""

from __future__ import annotations

import csv
import io

import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.ensemble import ensemble, routing
from mode_jax.eval import (cluster_summary, curves, files, retrieval, significance,
                           specialisation)
from mode_jax.eval import zeroshot

CLUSTER_STAGE = "cluster"
PROBE_NOTE = ("% on the test split (split `train`: the task's train split fits the probe; "
              "`holdout`: a seeded stratified half of the test images fits it, the other half "
              "scores it); the L2 penalty is chosen on a validation part of the fitting images; "
              "concat = the experts' features side by side.")
RETRIEVAL_METRIC = retrieval.TASK_METRIC   # the metric column of a retrieval task


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "reference"   # routing formula: 'reference' (MetaCLIP code) or 'paper' (Eq. 5-7)
  c.top_k = 1            # fine centers per class that vote (1 = the method as published)
  c.tasks = ""           # comma-separated task names; "" = every eval/meta_emb/<task>.npy
  c.plots = True         # write the PNG plots
  c.bootstrap_samples = 1000   # paired bootstrap replicates per task (0 = no intervals)
  c.bootstrap_seed = 0         # with the task name, seeds each task's resamples
  c.clusters = True            # report/clusters.{md,png} when assign/ and the shards exist
  c.cluster_words = 10         # top caption words per expert
  c.cluster_images = 8         # sample training images per expert (0 = no clusters.png)
  c.cluster_max_shards = 256   # shards read for words and images, evenly spaced (0 = all)
  c.cluster_seed = 0           # seeds each expert's pick of images
  # "name=workdir,...": other runs evaluated on the same tasks (e.g. Random-n, paper Table 5);
  # each one's MoDE becomes column <name>, with paired intervals of MoDE - <name>.
  c.compare = ""
  return c


# results.csv columns that a compared run's name must not take
RESERVED_COLUMNS = ("dense", "seed", "uniform", "best_single", "prior", "task", "kind",
                    "metric", "split", "n_classes", "best_single_expert", "prior_expert",
                    "n_unlabelled")


def compare_workdirs(cfg) -> dict[str, str]:
  """config report.compare -> {name: workdir}; names must not be a column already."""
  out = {}
  for item in (x.strip() for x in str(cfg.get("compare", "") or "").split(",")):
    if not item:
      continue
    name, eq, path = (v.strip() for v in item.partition("="))
    if not eq or not name or not path or name in out or name in RESERVED_COLUMNS \
        or name.startswith(("expert_", "MoDE")):
      raise ValueError(f"config report.compare: {item!r} is not name=workdir with a new "
                       f"name (taken: {RESERVED_COLUMNS}, expert_<c>, MoDE*)")
    out[name] = path
  return out


# ---------------------------------------------------------------- inputs ----
def evaluated(workdir: str, kind: str) -> dict[str, str]:
  """{name: fingerprint} of the models (kind "model") or tasks ("task") eval/ was made from
  (its manifest's inputs); {} before the evaluate stage ran."""
  inputs = (provenance.read(workdir, "eval") or {}).get("inputs", {})
  return {k[len(kind) + 1:]: v["fingerprint"] for k, v in inputs.items()
          if k.startswith(kind + " ")}


def list_tasks(cfg, workdir: str, skipped=()) -> list[str]:
  """The configured tasks (default: all with eval/meta_emb), less those the evaluate stage
  skipped (they are listed in results.md instead)."""
  if cfg.get("tasks"):
    tasks = [t.strip() for t in str(cfg.tasks).split(",") if t.strip()]
  else:
    d = wd.require(workdir, "eval/meta_emb", files.EVAL_STAGE)
    tasks = sorted(f[:-4] for f in wd.listdir(d) if f.endswith(".npy"))
    if not tasks:
      raise wd.MissingInput(wd.path(d, "<task>.npy"), files.EVAL_STAGE)
  return [t for t in tasks if t not in skipped]


def load_cluster(workdir: str):
  """(fine_centers [m, D], fine_to_expert [m], expert_order list of n expert ids)."""
  centers = wd.load_npy(wd.require(workdir, "cluster/fine_centers.npy", CLUSTER_STAGE))
  f2e = wd.load_npy(wd.require(workdir, "cluster/fine_to_expert.npy", CLUSTER_STAGE))
  order = [int(c) for c in wd.read_json(
      wd.require(workdir, "cluster/expert_order.json", CLUSTER_STAGE))]
  n = len(order)
  if sorted(order) != list(range(n)) or (len(f2e) and int(f2e.max()) >= n):
    raise ValueError(f"cluster/expert_order.json {order} does not match fine_to_expert")
  return centers.astype(np.float32), f2e.astype(np.int32), order


def task_kind_metric_split(workdir: str, task: str) -> tuple[str, str, str]:
  """(kind, metric, split) of a task's spec, checked before any scoring; split is wd.TEST
  (held out: the results) or wd.VALIDATION (where a recipe is chosen)."""
  spec = files.read_task_spec(workdir, task)
  kind, split = spec.get("kind", "zeroshot"), spec.get("split", wd.TEST)
  if split not in (wd.TEST, wd.VALIDATION):
    raise ValueError(f"task {task}: unknown split {split!r}")
  if kind == "retrieval":
    return kind, RETRIEVAL_METRIC, split
  if kind != "zeroshot":
    raise ValueError(f"task {task}: unknown kind {kind!r}")
  try:
    return kind, zeroshot.check_metric(spec.get("metric", "top1")), split
  except ValueError as e:
    raise ValueError(f"task {task}: {e}") from None


# --------------------------------------------------------------- scoring ----
def score_zeroshot(logits, labels, metric: str = "top1") -> tuple[float, dict]:
  m = zeroshot.metrics(logits, labels)
  if metric not in m:
    m[metric] = zeroshot.task_score(metric, logits, labels)
  return 100.0 * m[metric], m


def score_retrieval(i2t_logits, t2i_logits, txt_to_img) -> tuple[float, dict]:
  m = retrieval.recall(i2t_logits, txt_to_img, t2i_logits=t2i_logits)
  return 100.0 * (m["i2t_R@1"] + m["t2i_R@1"]) / 2, m


def chance(row) -> float | None:
  """A zero-shot task's score by chance, in % (None for retrieval)."""
  n, metric = row.get("n_classes"), row.get("metric")
  if row.get("kind") != "zeroshot" or not n:
    return None
  return {"roc_auc": 50.0, "top1_top5": min(100.0, 300.0 / n)}.get(metric, 100.0 / n)


def routing_sharpness(weights) -> dict[str, float]:
  """How decisively routing picks experts: the largest weight, and the entropy in nats and
  over log n (1 = uniform, 0 = one expert). The reference formula's weights are gentle."""
  w = np.asarray(weights, np.float64)
  p = w[w > 0]
  entropy = float(-np.sum(p * np.log(p)))
  norm = entropy / np.log(len(w)) if len(w) > 1 else 1.0   # one expert: trivially uniform
  return {"max_weight": float(w.max()), "entropy": entropy, "entropy_norm": float(norm)}


def evaluate_task(cfg, workdir, task, fine_centers, fine_to_expert, order,
                  kind="zeroshot", metric="top1", assign_metric="euclidean") -> dict:
  """Scores of every model and ensemble on one task, its routing weights, (for the
  bootstrap) the per-image outcomes of dense, uniform, best_single and MoDE and, for
  retrieval, the specialisation rows (every model on every cluster's pairs)."""
  n = len(order)
  meta = files.read_meta_emb(workdir, task)
  experts = [files.read_task_logits(workdir, f"expert_{c}", task) for c in range(n)]
  baselines = ["dense"] + (["seed"] if wd.exists(
      wd.path(workdir, files.logits_rel("seed", task))) else [])
  arrays = {name: files.read_task_logits(workdir, name, task) for name in baselines}
  if kind == "retrieval":   # the rows of the captions whose images were read, column order
    meta = meta[caption_rows(task, {**arrays, **{f"expert_{c}": e for c, e in
                                                 enumerate(experts)}}, len(meta))]
  stack = jnp.asarray(np.stack([e["logits"] for e in experts]), jnp.float32)
  labels = experts[0]["labels"]
  if stack.shape[2] != len(meta):
    raise ValueError(f"{task}: logits have {stack.shape[2]} columns but "
                     f"eval/meta_emb/{task}.npy has {len(meta)} rows")
  args = (fine_centers, fine_to_expert, n, cfg.mode, int(cfg.top_k))
  weights = np.asarray(routing.routing_weights(jnp.asarray(meta), *args))
  other = other_formula(cfg.mode)   # scored beside it: the paper's and the reference's
  other_args = (fine_centers, fine_to_expert, n, other, int(cfg.top_k))
  other_weights = np.asarray(routing.routing_weights(jnp.asarray(meta), *other_args))
  row = {"task": task, "kind": kind, "metric": metric, "n_classes": len(meta)}
  if kind == "zeroshot":   # left out of every score below (zeroshot.labelled)
    row["n_unlabelled"] = zeroshot.n_unlabelled(labels)
  metrics, stats = {}, {}
  keep = ("dense", "uniform", "MoDE") if cfg.get("bootstrap_samples", 0) else ()

  if kind == "retrieval":
    txt_to_img = files.txt_to_img_of(experts[0])
    qweights = routing.query_routing_weights(jnp.asarray(meta), *args)

  def per_image(logits, t2i_logits=None):
    if kind == "zeroshot":
      return significance.zeroshot_stats(metric, logits, labels)
    return significance.retrieval_stats(
        logits, logits if t2i_logits is None else t2i_logits, txt_to_img)

  def score(name, logits, t2i_logits=None):
    if kind == "zeroshot":
      row[name], metrics[name] = score_zeroshot(logits, labels, metric)
    else:
      row[name], metrics[name] = score_retrieval(
          logits, logits if t2i_logits is None else t2i_logits, txt_to_img)
    if name in keep:
      stats[name] = per_image(logits, t2i_logits)

  for name in baselines:
    score(name, arrays[name]["logits"])
  for c in range(n):
    score(f"expert_{c}", stack[c])
  score("uniform", ensemble.uniform(stack))
  best = ensemble.best_single([row[f"expert_{c}"] for c in range(n)])
  row["best_single"], row["best_single_expert"] = row[f"expert_{best}"], best
  if keep:
    stats["best_single"] = per_image(stack[best])   # the oracle's expert, fixed in replicates
  prior = ensemble.prior_selection(weights)
  row["prior"], row["prior_expert"] = row[f"expert_{prior}"], prior
  if kind == "zeroshot":
    score("MoDE", ensemble.combine(stack, weights))
    score(f"MoDE_{other}", ensemble.combine(stack, other_weights))
    for k, logits in ensemble.progressive(stack, order, weights):
      score(f"MoDE-{k}", logits)
  else:
    score("MoDE", *ensemble.retrieval_ensemble(stack, weights, qweights))
    score(f"MoDE_{other}", *ensemble.retrieval_ensemble(
        stack, other_weights, routing.query_routing_weights(jnp.asarray(meta), *other_args)))
    for k, i2t, t2i in ensemble.progressive_retrieval(stack, order, weights, qweights):
      score(f"MoDE-{k}", i2t, t2i)
  spec = []
  if kind == "retrieval":
    arrays.update({f"expert_{c}": e for c, e in enumerate(experts)})
    _, caption_expert = specialisation.caption_experts(meta, fine_centers, fine_to_expert,
                                                       assign_metric)
    models = {m: (a["logits"], specialisation.logit_scale(a)) for m, a in arrays.items()}
    spec = specialisation.task_rows(task, models, txt_to_img, caption_expert, n)
  return {"row": row, "weights": weights, "other_weights": other_weights, "metrics": metrics,
          "stats": stats, "specialisation": spec}


def other_formula(mode: str) -> str:
  """The routing formula the report scores beside the configured one."""
  return next(m for m in routing.MODES if m != mode)


def caption_rows(task: str, models: dict, n_meta: int) -> np.ndarray:
  """The eval/meta_emb row of each caption column (files.caption_rows), which every model
  must share: models that read different images cannot be ensembled column by column."""
  try:
    rows = {m: files.caption_rows(a, n_meta) for m, a in models.items()}
  except ValueError as e:
    raise ValueError(f"{task}: {e}") from None
  first = next(iter(models))
  for m, a in models.items():
    if not (np.array_equal(rows[m], rows[first])
            and np.array_equal(files.txt_to_img_of(a), files.txt_to_img_of(models[first]))):
      raise ValueError(f"{task}: {m} and {first} were scored on different captions or images "
                       "(an image one of them could not read?): re-run the evaluate stage")
  return rows[first]


def unlabelled_note(rows) -> str:
  """results.md lines for the zero-shot tasks with unlabelled test images ('' when none)."""
  hit = [r for r in rows if r.get("n_unlabelled")]
  return ("\nUnlabelled test images (label -1), left out of every score and interval:\n"
          + "".join(f"- {r['task']}: {r['n_unlabelled']}\n" for r in hit)) if hit else ""


# ---------------------------------------------------------------- output ----
def columns(rows, n, compared=()) -> list[str]:
  cols = ["dense"] + (["seed"] if any("seed" in r for r in rows) else [])
  cols += [f"expert_{c}" for c in range(n)]
  cols += ["uniform", "best_single", "prior", "MoDE"]
  cols += [k for k in rows[0] if k.startswith("MoDE_")] if rows else []
  return cols + [f"MoDE-{k}" for k in range(1, n + 1)] + list(compared)


def add_compared(cfg, workdir, tasks, specs, results, others: dict[str, str]) -> None:
  """Scores each other run's MoDE on the same tasks (its own clustering and routing) into
  row[name] and, for the bootstrap, stats[name]; ValueError when its test images differ."""
  my_tasks = evaluated(workdir, "task")
  for name, other in others.items():
    their_tasks = evaluated(other, "task")
    for t in tasks:   # the same test images, by content and by rows, before any scoring
      if t in my_tasks and t in their_tasks and my_tasks[t] != their_tasks[t]:
        raise ValueError(f"config report.compare: {name}={other} evaluated other data for "
                         f"task {t}: not a paired comparison")
      mine, theirs = (files.read_task_logits(w, "dense", t) for w in (workdir, other))
      for key in ("labels", "txt_to_img"):
        if key in mine and not np.array_equal(mine[key], theirs.get(key)):
          raise ValueError(f"config report.compare: {name}={other} has other test images "
                           f"for task {t} ({key} differ): not a paired comparison")
    centers, f2e, order = load_cluster(other)
    for t, (kind, metric, _), r in zip(tasks, specs, results):
      o = evaluate_task(cfg, other, t, jnp.asarray(centers), jnp.asarray(f2e), order, kind,
                        metric, specialisation.cluster_metric(other))
      r["row"][name] = o["row"]["MoDE"]
      if "MoDE" in o["stats"]:
        r["stats"][name] = o["stats"]["MoDE"]


def with_average(rows, cols, name: str = "average"):
  if not rows:
    return []
  avg = {"task": name, "kind": "", "metric": "", "n_classes": ""}
  for c in cols:
    vals = [r[c] for r in rows if c in r]
    avg[c] = float(np.mean(vals)) if len(vals) == len(rows) else ""   # only over all tasks
  return rows + [avg]


def write_csv(p, header, rows):
  buf = io.StringIO(newline="")
  w = csv.writer(buf)
  w.writerow(header)
  for r in rows:
    w.writerow([r.get(h, "") for h in header])
  wd.write_text(p, buf.getvalue())


def markdown(header, rows, fmt="{:.2f}") -> str:
  def cell(v):
    return fmt.format(v) if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(r.get(h, "")) for h in header) + " |" for r in rows]
  return "\n".join(lines)


def plot(out_dir, tasks, weights: dict, rows, n):
  """routing_weights.png (one heat map per formula, {formula: [weights per task]}) and
  scores.png."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(weights), squeeze=False,
                           figsize=(len(weights) * (3.0 + 0.7 * n), 1.8 + 0.45 * len(tasks)))
  for ax, (formula, ws) in zip(axes[0], weights.items()):
    w = np.stack(ws)
    im = ax.imshow(w, cmap="viridis", aspect="auto")   # data range: reference weights are gentle
    mid = (w.min() + w.max()) / 2
    ax.set_xticks(range(n), [f"expert {c}" for c in range(n)], rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i in range(len(tasks)):
      for j in range(n):
        ax.text(j, i, f"{w[i, j]:.3f}", ha="center", va="center", fontsize=7,
                color="white" if w[i, j] < mid else "black")
    fig.colorbar(im, ax=ax, label="routing weight")
    ax.set_title(f"routing weights: {formula} formula")
  fig.tight_layout()
  wd.save_figure(wd.path(out_dir, "routing_weights.png"), fig)
  plt.close(fig)

  models = ["dense"] + [f"expert_{c}" for c in range(n)] + ["uniform", "best_single", "MoDE"]
  fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(tasks) * len(models) / 4), 4))
  width = 0.8 / len(models)
  for j, m in enumerate(models):
    ax.bar(np.arange(len(tasks)) + j * width, [r[m] for r in rows], width, label=m)
  ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks)
  ax.set_ylabel("score (%)")
  ax.legend(fontsize=7, ncols=2)
  ax.set_title("Per-task scores (zero-shot: the task's metric; retrieval: mean R@1)")
  fig.tight_layout()
  wd.save_figure(wd.path(out_dir, "scores.png"), fig)
  plt.close(fig)


# ---------------------------------------------------------- significance ----
def bootstrap(cfg, results, tasks, compared=()) -> list[dict]:
  """significance.rows of the configured paired bootstrap, on the scored logits' stats
  (MoDE against its baselines, then against each compared run's MoDE)."""
  samples, seed = int(cfg.get("bootstrap_samples", 0)), int(cfg.get("bootstrap_seed", 0))
  pairs = significance.COMPARISONS + tuple(("MoDE", name) for name in compared)
  per_task = {t: significance.paired_bootstrap(r["stats"], pairs, samples,
                                               significance.task_rng(seed, t))
              for t, r in zip(tasks, results)}
  return significance.rows(per_task)


def significance_note(cfg) -> str:
  return (f"Paired bootstrap over test images (retrieval: images with their captions), "
          f"{cfg.get('bootstrap_samples', 0)} replicates, seed {cfg.get('bootstrap_seed', 0)} "
          f"(with the task name), both models scored on the same resamples; 95% percentile "
          f"intervals in points; * = the interval excludes 0. The average row averages the "
          f"tasks' differences per replicate.\n")


def compact_significance(sig_rows) -> tuple[list[str], list[dict]]:
  """One row per task: 'diff [lo, hi]' per comparison, '*' when significant."""
  comparisons = list(dict.fromkeys(r["comparison"] for r in sig_rows))
  by_task = {}
  for r in sig_rows:
    mark = " *" if r["significant"] else ""
    by_task.setdefault(r["task"], {"task": r["task"]})[f"{r['comparison']} [lo, hi]"] = (
        f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]{mark}")
  return ["task"] + [f"{c} [lo, hi]" for c in comparisons], list(by_task.values())


# -------------------------------------------------------- specialisation ----
def write_specialisation(out, rows) -> str:
  """Writes report/specialisation.{csv,md}; returns the markdown for results.md."""
  write_csv(wd.path(out, "specialisation.csv"), specialisation.HEADER, rows)
  body = specialisation.NOTE + "\n" + specialisation.markdown(rows)
  wd.write_text(wd.path(out, "specialisation.md"),
                "# Specialisation: every model on every cluster's pairs\n\n" + body + "\n")
  return body


# -------------------------------------------------------------- leak audit ----
def leak_audit_section(workdir: str) -> str:
  """results.md's "Leak audit" section: one line per held-out task of shards/leak_audit.json
  (written by `prepare`, data/corpus/audit.py); "" when the file is absent."""
  from mode_jax.data.corpus import audit
  p = wd.path(workdir, "shards", audit.AUDIT_FILE)
  if not wd.exists(p):
    return ""
  a = wd.read_json(p)
  head = (f"Held-out tasks against the {a['train']['images']} training images and "
          f"{a['train']['captions']} captions (shards/{audit.AUDIT_FILE}): pHash threshold "
          f"{a['max_distance']} bits; {', '.join(a['photo_tasks']) or 'no task'} count only "
          f"identical images (other photos of a class look alike); texts = retrieval "
          f"captions or zero-shot prompts, {a['caption_rule']}. Leaks in all: {a['leaks']}.\n\n")
  return head + "".join(f"- {audit.summary_line(t, v)}\n" for t, v in sorted(a["tasks"].items()))


# ----------------------------------------------------------- linear probe ----
def probe_columns(models) -> list[str]:
  """dense, expert_0.. (numeric order), concat, then any others."""
  first = [m for m in ("dense",) if m in models] + files.expert_names(models)
  last = [m for m in ("concat",) if m in models]
  return first + sorted(set(models) - set(first) - set(last)) + last


def probe_results(workdir: str, models: dict[str, str] | None = None) -> dict[str, dict]:
  """{task: probe/<task>.json} of the probe of exactly these models ({name: fingerprint};
  None: every result there is). A probe of other weights is not these models' probe."""
  d = wd.path(workdir, "probe")
  out = {}
  for f in sorted(wd.listdir(d)):
    if not f.endswith(".json"):
      continue
    spec = wd.read_json(wd.path(d, f))
    if models is None or spec.get("idents", {}).get("models") == models:
      out[f[:-5]] = spec
  return out


def read_probe(workdir: str, models: dict[str, str] | None = None
               ) -> tuple[list[str], list[dict]] | None:
  """(model columns, rows in percent) of probe_results; None when the probe did not run."""
  got = probe_results(workdir, models)
  if not got:
    return None
  rows, models = [], []
  for f, spec in got.items():
    row = {"task": spec.get("task", f), "metric": spec.get("metric", ""),
           "split": spec.get("split", "")}
    for m, v in spec["models"].items():
      row[m] = 100.0 * float(v["score"])
      models.append(m)
    rows.append(row)
  return probe_columns(set(models)), rows


def write_probe(out, probe) -> str:
  """Writes report/probe.{md,csv}; returns the markdown table."""
  cols, rows = probe
  table = with_average(rows, cols)
  for r in table:
    r.setdefault("split", "")
  head = ["task", "metric", "split"] + cols
  write_csv(wd.path(out, "probe.csv"), head, table)
  md = markdown(head, table)
  wd.write_text(wd.path(out, "probe.md"), "# Linear probe (paper Table 9)\n\n" + PROBE_NOTE + "\n\n"
                + md + "\n")
  return md


def run_report(cfg, workdir: str, models: dict[str, str] | None = None) -> dict | None:
  """Writes report/; returns {'rows' (held-out tasks and their average), 'validation'
  (validation tasks and theirs, [] when none), 'weights', 'columns', 'sharpness', 'significance',
  'skipped', 'probe', 'specialisation' (long rows), 'clusters' (cluster_summary.run's
  answer or None), 'curves' (validation points, curves.read)}; prints the markdown table.

  models: {name: fingerprint} of the evaluated models; the linear probe's
  results of other models are left out (None: all of probe/). On a pod,
  process 0 writes the report (a few small arrays) while the others wait;
  they return None.
  """
  from mode_jax import distributed
  return distributed.on_primary("report", lambda: _report(cfg, workdir, models))


def _report(cfg, workdir: str, models=None) -> dict:
  if cfg.mode not in routing.MODES:
    raise ValueError(f"config report.mode={cfg.mode!r}: expected one of {routing.MODES}")
  if int(cfg.get("bootstrap_samples", 0)) < 0:
    raise ValueError(f"config report.bootstrap_samples={cfg.bootstrap_samples}: must be >= 0")
  skipped = files.read_skipped(workdir)
  tasks = list_tasks(cfg, workdir, skipped)
  specs = [task_kind_metric_split(workdir, t) for t in tasks]   # all checked before scoring
  splits = {t: split for t, (_, _, split) in zip(tasks, specs)}
  fine_centers, fine_to_expert, order = load_cluster(workdir)
  n = len(order)
  if not 1 <= int(cfg.top_k) <= len(fine_centers):
    raise ValueError(f"config report.top_k={cfg.top_k}: must be in 1..{len(fine_centers)}")
  assign_metric = specialisation.cluster_metric(workdir)
  results = [evaluate_task(cfg, workdir, t, jnp.asarray(fine_centers),
                           jnp.asarray(fine_to_expert), order, kind, metric, assign_metric)
             for t, (kind, metric, _) in tqdm(list(zip(tasks, specs)), desc="report",
                                              leave=False)]
  others = compare_workdirs(cfg)
  add_compared(cfg, workdir, tasks, specs, results, others)
  for t, r in zip(tasks, results):
    r["row"]["split"] = splits[t]
  rows = [r["row"] for r in results]
  cols = columns(rows, n, others)
  # Held-out tasks are the results; validation tasks (where a recipe is chosen) are tabled
  # and averaged apart, and stay out of the intervals.
  table = with_average([r for r in rows if r["split"] == wd.TEST], cols)
  val_rows = [r for r in rows if r["split"] == wd.VALIDATION]
  val_table = with_average(val_rows, cols, "average (validation)")
  for r in val_table:
    r["split"] = wd.VALIDATION
  if table:
    table[-1]["split"] = wd.TEST
  test_tasks = [t for t in tasks if splits[t] == wd.TEST]
  test_results = [r for t, r in zip(tasks, results) if splits[t] == wd.TEST]

  out = wd.path(workdir, "report")
  head = (["task", "split", "kind", "metric", "n_classes"] + cols
          + ["best_single_expert", "prior_expert", "n_unlabelled"])
  write_csv(wd.path(out, "results.csv"), head, table + val_table)
  md = markdown(["task", "kind", "metric", "n_classes"] + cols, table)
  notes = (
      f"Scores in %: zero-shot = the task's metric (top1; mean_per_class = per-class top-1 "
      f"recall, averaged; top1_top5 = (top-1 + top-5) / 2; roc_auc = ROC AUC of binary "
      f"tasks); retrieval = mean of image->text R@1 and text->image R@1.\n"
      f"Routing: {cfg.mode} formula, top_k={cfg.top_k} (MoDE); MoDE_{other_formula(cfg.mode)} "
      f"routes by the other formula; image->text uses corpus-level weights, text->image "
      f"per-query weights.\n"
      f"best_single is an ORACLE (chosen on test labels); prior = the expert with the largest "
      f"routing weight, alone.\nMoDE-k: first k experts of expert_order {order} (widest "
      f"spread first), weights renormalised over them.\n"
      + "".join(f"{name}: the MoDE of {path} (its own clusters, experts and routing) on the "
                f"same test images.\n" for name, path in others.items()))
  doc = "# MoDE results\n\n" + notes + "\n" + md + "\n" + unlabelled_note(rows)
  if val_table:
    doc += ("\n## Validation\n\nTasks built from concepts held back from the training "
            "families (never in a held-out task): a recipe is chosen here, and these rows are "
            "not in the average above.\n\n"
            + markdown(["task", "kind", "metric", "n_classes"] + cols, val_table) + "\n")
  if skipped:
    doc += ("\nSkipped (not evaluated, not in the average):\n"
            + "".join(f"- {t}: {why}\n" for t, why in sorted(skipped.items())))

  curve_rows, stale_curves = curves.read(workdir, n, evaluated(workdir, "task"))
  if curve_rows:
    write_csv(wd.path(out, "validation_curves.csv"), list(curve_rows[0]), curve_rows)
    if cfg.get("plots", True):
      curves.plot(wd.path(out, "validation_curves.png"), curve_rows,
                  {r["task"]: c for r in val_rows if (c := chance(r)) is not None})
    doc += ("\n## Validation curves\n\nEach run scored on the validation tasks while it "
            "trained (every point: report/validation_curves.csv; the plot: "
            "validation_curves.png); each run's last point:\n\n"
            + markdown(*curves.table(curve_rows)) + "\n")
  if stale_curves:
    doc += ("\nCurves left out (scored on other task data than the evaluation's): "
            + ", ".join(stale_curves) + "\n")

  leaks = leak_audit_section(workdir)
  if leaks:
    doc += "\n## Leak audit\n\n" + leaks

  sig_rows = (bootstrap(cfg, test_results, test_tasks, others)
              if int(cfg.get("bootstrap_samples", 0)) and test_tasks else [])
  if sig_rows:
    sig_head = ["task", "comparison", "diff", "lo", "hi", "significant"]
    write_csv(wd.path(out, "significance.csv"), sig_head, sig_rows)
    wd.write_text(wd.path(out, "significance.md"),
                  "# Significance: MoDE vs baselines, points\n\n" + significance_note(cfg)
                  + "\n" + markdown(sig_head, sig_rows) + "\n")
    doc += ("\n## Significance\n\n" + significance_note(cfg) + "\n"
            + markdown(*compact_significance(sig_rows)) + "\n")

  probe = read_probe(workdir, models)
  if probe:
    doc += "\n## Linear probe (paper Table 9)\n\n" + PROBE_NOTE + "\n\n" + write_probe(
        out, probe) + "\n"
  spec_rows = [s for r in results for s in r["specialisation"]]
  if spec_rows:
    doc += "\n## Specialisation\n\n" + write_specialisation(out, spec_rows) + "\n"
  clusters = None
  if cfg.get("clusters", True):
    clusters = cluster_summary.run(
        workdir, out, n, words=int(cfg.get("cluster_words", 10)),
        images=int(cfg.get("cluster_images", 8)) if cfg.get("plots", True) else 0,
        max_shards=int(cfg.get("cluster_max_shards", 0)), seed=int(cfg.get("cluster_seed", 0)))
  if clusters:
    doc += "\n## Clusters\n\n" + cluster_summary.links(clusters)
  wd.write_text(wd.path(out, "results.md"), doc)

  sharpness = {t: routing_sharpness(r["weights"]) for t, r in zip(tasks, results)}
  other = other_formula(cfg.mode)
  wrows = [{"task": t, "formula": f, "split": splits[t], "kind": r["row"]["kind"],
            "n_classes": r["row"]["n_classes"],
            **{f"expert_{c}": float(w[c]) for c in range(n)}, **routing_sharpness(w)}
           for t, r in zip(tasks, results)
           for f, w in ((cfg.mode, r["weights"]), (other, r["other_weights"]))]
  whead = (["task", "formula", "split", "kind", "n_classes"] + [f"expert_{c}" for c in range(n)]
           + ["max_weight", "entropy", "entropy_norm"])
  write_csv(wd.path(out, "routing_weights.csv"), whead, wrows)
  wd.write_text(wd.path(out, "routing_weights.md"),
                "# Routing weights (retrieval: corpus-level, image->text)\n\n"
                "Sharpness: max_weight = the largest weight; entropy in nats; entropy_norm = "
                "entropy / log(n experts) (1 = uniform).\n\n"
                + markdown(whead, wrows, "{:.4f}") + "\n")

  long = [{"task": t, "model": m, "metric": k, "value": v}
          for t, r in zip(tasks, results) for m, d in r["metrics"].items() for k, v in d.items()]
  write_csv(wd.path(out, "metrics.csv"), ["task", "model", "metric", "value"], long)
  if cfg.get("plots", True):
    plot(out, tasks, {cfg.mode: [r["weights"] for r in results],
                      other: [r["other_weights"] for r in results]}, rows, n)
  print(md)
  return {"rows": table, "validation": val_table,
          "weights": {t: r["weights"] for t, r in zip(tasks, results)},
          "columns": cols, "sharpness": sharpness, "significance": sig_rows,
          "skipped": skipped, "probe": probe[1] if probe else None,
          "specialisation": spec_rows, "clusters": clusters, "curves": curve_rows}
