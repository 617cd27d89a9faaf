"""Stage `prepare`: builds the embedded demo corpus into workdir/shards (data/corpus/build.py).

Process 0 builds it while the other hosts wait. Configs whose data are a
researcher's own shards have no `prepare` section and no prepare stage.
"""

from mode_jax import distributed
from mode_jax.data.corpus import build


def run(config, workdir: str):
  return distributed.on_primary("prepare", lambda: build.run_prepare(config.prepare, workdir))
