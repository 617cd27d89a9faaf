"""Stage `experts`: each data expert forked from the seed and trained on its stream (step 6).

Expert c resumes the seed's full state (params, Adam moments, step) and
continues the same cosine schedule on D_c plus 2% out-of-cluster samples
(data/expert_stream.py) for the remaining epochs. `config.expert=c` trains
expert c alone: experts are independent jobs, and adding one later trains
only that one.
"""

import ml_collections

from mode_jax.data import expert_stream
from mode_jax.data.io import loader
from mode_jax.train import runs


def run(config, workdir: str) -> dict:
  step = runs.seed_step(config, workdir)
  index = loader.load_index(runs.input_config(config), workdir)
  p = runs.read_plan(workdir)
  results = {}
  for c in runs.expert_ids(config):
    es = ml_collections.ConfigDict(config.expert_stream.to_dict())
    es.expert = c
    stream = expert_stream.expert_stream(es, workdir, index)
    print(f"[expert {c}] {stream.num_in_cluster} in-cluster + {stream.num_ooc} out-of-cluster "
          f"samples; one expert epoch = {stream.passes_per_epoch:.1f} passes over them")
    results[c] = runs.fit(config, workdir, runs.expert_rel(c),
                          num_steps=step + p["expert"], schedule_steps=p["total"],
                          index=index, indices=stream.indices,
                          init=runs.fork(config, workdir, step), desc=f"expert {c}")
  return results
