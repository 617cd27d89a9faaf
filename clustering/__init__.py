"""JAX k-means for MoDE (docs/method.md steps 2-4): fine, coarse, balanced, sharded, streamed.

  kmeans.py       chunked, data-parallel Lloyd / balanced k-means, assignment
  balanced.py     balanced assignment: reference auction and cluster prices
  streaming.py    online fitting over files, warm-started
  hierarchy.py    fine centers -> experts, spread ranking, cluster/ files
  embed_files.py  the embed stage's files: row counts, ranged row reads
  summary.py      sizes histogram, expert shares, sample captions
"""

from clustering.config import default_config  # noqa: F401
