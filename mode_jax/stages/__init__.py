"""The stages of `launch.py`, one module each, each `run(config, workdir)` and nothing else public.

  prepare   the embedded demo corpus -> shards/ (configs with a `prepare` section only)
  embed     one caption per sample -> sentence embeddings in embed/
  cluster   fine centers (m) and coarse experts (n) in cluster/
  assign    every sample to its fine cluster and expert in assign/
  seed      the dense seed CLIP on all data (seed/)
  experts   each expert forked from the seed, on its stream (experts/<c>/)
  dense     baseline: the seed continued on all data (dense/)
  evaluate  raw cosine logits per model and task in eval/
  report    routed ensemble vs baselines: report/
  pipeline  the stages above in order
  train     one CLIP from config.input (configs/fmnist_clip.py)
  probe     linear probe on frozen image features (paper Table 9): probe/
  export    the finished models + routing as a bundle (eval/bundle.py)
  classify  a bundle alone on a folder of images (no config, no workdir)

Stages call the libraries (data, text, clustering, models, train, eval,
ensemble), which never import a stage; `pipeline` calls the other stages'
`run` and nothing else of theirs. A stage reads only what earlier stages
wrote into the workdir (mode_jax/workdir.py).
"""

import importlib

PIPELINE = ("prepare", "embed", "cluster", "assign", "seed", "experts", "dense", "evaluate",
            "report")
OTHERS = ("pipeline", "train", "probe", "export")


def get(name: str):
  """The module of stage `name` (its `run`)."""
  if name not in PIPELINE + OTHERS + ("classify",):
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(PIPELINE + OTHERS)}")
  return importlib.import_module(f"mode_jax.stages.{name}")
