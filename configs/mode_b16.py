"""MoDE with ViT-B/16 experts, the paper's recipe (see configs/mode_paper.py).

  python launch.py pipeline --config configs/mode_b16.py:n=4,shards=PATTERN --workdir W
  python launch.py experts --config configs/mode_b16.py:n=4,expert=2,shards=PATTERN --workdir W

Memory plan (benchmarks/memory_plan.py, global batch 32,768, bf16, 224 px,
context 77, remat "full", replicated parameters; GiB per device, XLA:CPU
estimate extrapolated from 1 and 2 blocks per tower, an upper bound since
remat saved nothing on XLA:CPU):

  machine   micro/device  accum_steps  peak GiB  budget
  8xH100    128           32           38.4      74.5 (80 GB)
  v4-64      64           16           21.8      32.0

  python benchmarks/memory_plan.py
"""

from configs import mode_paper


def get_config(arg=None):
  return mode_paper.paper_config("B/16", arg)
