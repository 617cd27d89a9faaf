"""MoDE with ViT-B/16 experts, the paper's recipe (see configs/mode_paper.py).

  python launch.py pipeline --config configs/mode_b16.py:n=4,shards=PATTERN --workdir W
  python launch.py experts --config configs/mode_b16.py:n=4,expert=2,shards=PATTERN --workdir W
"""

from configs import mode_paper


def get_config(arg=None):
  return mode_paper.paper_config("B/16", arg)
