"""Stage `report`: routing weights from class names, the MoDE ensemble against its baselines,
intervals, tables and plots in report/ (mode_jax/eval/report.py; process 0 writes)."""

from mode_jax.eval import report


def run(config, workdir: str):
  return report.run_report(config.report, workdir)
