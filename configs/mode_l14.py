"""MoDE with ViT-L/14 experts, the paper's recipe (see configs/mode_paper.py).

  python launch.py pipeline --config configs/mode_l14.py:n=4,shards=PATTERN --workdir W
  python launch.py experts --config configs/mode_l14.py:n=4,expert=2,shards=PATTERN --workdir W

Memory plan (benchmarks/memory_plan.py, global batch 32,768, bf16, 224 px,
context 77, remat "full", FSDP over 8; GiB per device, XLA:CPU estimate
extrapolated from 1 and 2 depth units (2+1 blocks), an upper bound since
remat saved nothing on XLA:CPU):

  machine   micro/device  accum_steps  peak GiB  budget
  8xH100     32           128          39.5      74.5 (80 GB)   (64 x 64: 74.1, too tight)
  v4-64      32            32          27.8      32.0           (mesh data=4, fsdp=8)

  python benchmarks/memory_plan.py
"""

from configs import mode_paper


def get_config(arg=None):
  return mode_paper.paper_config("L/14", arg)
