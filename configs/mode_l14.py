"""MoDE with ViT-L/14 experts, the paper's recipe (see configs/mode_paper.py).

  python launch.py pipeline --config configs/mode_l14.py:n=4,shards=PATTERN --workdir W
  python launch.py experts --config configs/mode_l14.py:n=4,expert=2,shards=PATTERN --workdir W
"""

from configs import mode_paper


def get_config(arg=None):
  return mode_paper.paper_config("L/14", arg)
