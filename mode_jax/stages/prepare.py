"""Stage `prepare`: builds the embedded demo corpus into workdir/shards (data/corpus/build.py).

Process 0 builds it while the other hosts wait. Configs whose data are a
researcher's own shards have no `prepare` section and no prepare stage.
Provenance: shards/manifest.json records the prepare fields and the data
packages' versions (build.fingerprint); a corpus built from other ones is
moved to stale/ before the new one is written.
"""

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.corpus import build

SHARDS = "shards"


def run(config, workdir: str):
  cfg = config.prepare
  packages = build.fingerprint(cfg)
  decision = provenance.decide(
      workdir, SHARDS, "prepare", provenance.select(config, ["prepare"], [
          f"prepare.{f}" for f in build.HOW_FIELDS]),
      {"packages": provenance.Input(packages, label="data packages")},
      outputs_exist=wd.exists(wd.path(workdir, SHARDS)),
      complete=build.cached(workdir, packages) is not None)
  if cfg.get("force") and not decision.todo:   # prepare.force: rebuild all the same
    decision = provenance.Decision("rerun", decision.fingerprint, "prepare.force is set",
                                   decision.manifest)
  if not decision.todo:
    if distributed.is_primary():
      print(f"prepare: up to date ({wd.path(workdir, build.MARKER)})")
    return build.cached(workdir, packages)

  def make():
    print(provenance.say("prepare", decision, "building the demo corpus"))
    provenance.start(workdir, SHARDS, decision, stale=[(wd.path(workdir, SHARDS), workdir)])
    marker = build.run_prepare(cfg, workdir)
    provenance.finish(workdir, SHARDS, decision, train=marker["train_total"],
                      sources=sorted(marker["train"]))
    return marker

  return distributed.on_primary("prepare", make)
