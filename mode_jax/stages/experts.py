"""Stage `experts`: each data expert forked from the seed and trained on its stream (step 6).

Expert c resumes the seed's full state (params, Adam moments, step) and
continues the same cosine schedule on D_c plus 2% out-of-cluster samples
(data/expert_stream.py) for the remaining epochs. `config.expert=c` trains
expert c alone: experts are independent jobs, and adding one later trains
only that one.

Provenance: experts/<c>/manifest.json records the seed's and the
assignment's fingerprints, the training fields and config.expert_stream; an
expert made from other inputs moves to stale/ (checkpoints included) before
it retrains, and experts beyond config.cluster.n are moved there too.
"""

import ml_collections

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data import expert_stream
from mode_jax.data.io import loader
from mode_jax.eval import validation
from mode_jax.train import runs


def run(config, workdir: str) -> dict:
  step = runs.seed_step(config, workdir)
  inputs = {"seed": runs.current_seed(config, workdir),
            "assignment": provenance.upstream(workdir, "assign", "assign", "clustering",
                                              ("m", "n"))}
  p = runs.read_plan(workdir)
  final = step + p["expert"]
  _retire_extra_experts(config, workdir)
  decisions = {c: runs.decide(config, workdir, runs.expert_rel(c), "experts", inputs,
                              extra_fields=_stream_fields(config, c), final_step=final)
               for c in runs.expert_ids(config)}
  todo = {c: d for c, d in decisions.items() if d.todo}
  if distributed.is_primary():
    for line in _summary(decisions, todo):
      print(line)
  if not todo:
    return {}
  index = loader.load_index(runs.input_config(config), workdir)
  results = {}
  for c, decision in todo.items():
    es = ml_collections.ConfigDict(config.expert_stream.to_dict())
    es.expert = c
    stream = expert_stream.expert_stream(es, workdir, index)
    print(f"[expert {c}] {stream.num_in_cluster} in-cluster + {stream.num_ooc} out-of-cluster "
          f"samples; one expert epoch = {stream.passes_per_epoch:.1f} passes over them")
    runs.start(config, workdir, runs.expert_rel(c), decision)
    results[c] = runs.fit(config, workdir, runs.expert_rel(c), num_steps=final,
                          schedule_steps=p["total"], index=index, indices=stream.indices,
                          init=runs.fork(config, workdir, step), desc=f"expert {c}",
                          **validation.hooks(config, workdir, p["steps_per_epoch"],
                                             runs.expert_rel(c)))
    runs.finish(workdir, runs.expert_rel(c), decision, step=final,
                in_cluster=stream.num_in_cluster, out_of_cluster=stream.num_ooc)
  return results


def _stream_fields(config, c: int) -> dict:
  """What an expert's own stream depends on beyond the training fields."""
  stream = provenance.select(config, ["expert_stream"], ["expert_stream.expert"])
  return dict(stream, expert=c)


def _summary(decisions: dict, todo: dict) -> list[str]:
  """One line per distinct reason: 'experts: <why>; training experts 0, 1, 2'."""
  if not todo:
    return [f"experts: up to date ({len(decisions)} experts)"]
  by_reason = {}
  for c, d in todo.items():
    by_reason.setdefault((d.action, d.reason), []).append(c)
  lines = []
  for (action, _), cs in by_reason.items():
    verb = {"rerun": "retraining", "resume": "resuming"}.get(action, "training")
    what = f"{verb} {len(cs)} expert{'s' * (len(cs) > 1)} ({', '.join(map(str, cs))})"
    lines.append(provenance.say("experts", todo[cs[0]], what))
  return lines


def _retire_extra_experts(config, workdir: str) -> None:
  """experts/<c> for c >= config.cluster.n belong to another clustering: moved to stale/."""
  n = config.cluster.n
  extra = sorted(int(d) for d in wd.listdir(wd.path(workdir, runs.EXPERTS_DIR))
                 if d.isdigit() and int(d) >= n)

  def retire():
    for c in extra:
      rel = runs.expert_rel(c)
      fp = (provenance.read(workdir, rel) or {}).get("fingerprint")
      for path, root in ((runs.run_dir(workdir, rel), workdir),
                         (runs.ckpt_dir(config, workdir, rel), runs.ckpt_root(config, workdir))):
        provenance.move_aside(path, root, fp)
      print(f"experts: expert {c} is beyond n={n}; moved to {provenance.STALE}/")

  if extra:
    distributed.on_primary("retire experts", retire)
