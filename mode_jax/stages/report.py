"""Stage `report`: routing weights from class names, the MoDE ensemble against its baselines,
intervals, tables and plots in report/ (mode_jax/eval/report.py; process 0 writes).

Provenance: report/manifest.json records the evaluation's and the
clustering's fingerprints (and those of config.report.compare's runs), the
linear probe's results of the evaluated models (probe/<task>.json of other
models are left out) and config.report;
a report of other inputs is moved to stale/ before the new one is written.
"""

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.eval import report


def run(config, workdir: str):
  inputs = {"evaluation": provenance.upstream(workdir, "eval", "evaluate", "evaluation",
                                              ("models", "tasks")),
            "clustering": provenance.upstream(workdir, "cluster", "cluster", "clustering",
                                              ("m", "n"))}
  for name, other in report.compare_workdirs(config.report).items():   # by content, too
    inputs[f"compare {name}"] = provenance.upstream(other, "eval", "evaluate",
                                                    f"evaluation of {other}", ("models",))
    inputs[f"compare {name} clustering"] = provenance.upstream(
        other, "cluster", "cluster", f"clustering of {other}", ("m", "n"))
  models = report.evaluated(workdir, "model")
  probed = report.probe_results(workdir, models)
  if probed:   # the linear probe of these very models, when it ran: a new probe re-reports
    inputs["probe"] = provenance.Input(provenance.digest(probed), {"tasks": sorted(probed)},
                                       "linear probe")
  decision = provenance.decide(workdir, "report", "report",
                               provenance.select(config, ["report"]), inputs,
                               outputs_exist=wd.exists(wd.path(workdir, "report")),
                               complete=wd.exists(wd.path(workdir, "report", "results.md")))
  if not decision.todo:
    if distributed.is_primary():
      print(f"report: up to date ({wd.path(workdir, 'report', 'results.md')})")
    return None
  if distributed.is_primary():
    print(provenance.say("report", decision, "routing, ensembling and scoring"))
  distributed.on_primary("report start", lambda: provenance.start(
      workdir, "report", decision, stale=[(wd.path(workdir, "report"), workdir)]))
  out = report.run_report(config.report, workdir, models)
  distributed.on_primary("report finish", lambda: provenance.finish(workdir, "report", decision))
  return out

