"""The whole MoDE pipeline on the embedded real corpus, on a CPU laptop.

  python launch.py pipeline --config configs/demo.py --workdir workdirs/demo
  python launch.py pipeline --config configs/demo.py:runlocal --workdir /tmp/d   # tests
  python launch.py experts --config configs/demo.py:expert=2 --workdir workdirs/demo
  python launch.py pipeline --config configs/demo.py:ablation=random --workdir workdirs/random

Arguments: n (experts, 4), m (fine clusters, 64), expert (-1 = all),
ablation ("" or "random": paper Table 5's Random-n split), runlocal.
The demo keeps the paper's 27:5 seed-to-expert split of the schedule but
shrinks the run to total_epochs=3.2 (seed 2.7) of the ~31k training pairs.
"""

import ml_collections

from clustering import config as cluster_config
from configs import common
from mode_jax import bundle
from mode_jax.data import demo_corpus
from mode_jax.data import expert_stream
from mode_jax.data import loader
from mode_jax.eval import report
from mode_jax.eval import tasks as eval_tasks
from mode_jax.text import embed_stage
from mode_jax.train import config as train_config


def get_config(arg=None):
  arg = common.parse_arg(arg, n=4, m=64, expert=-1, ablation="", runlocal=False)
  c = train_config.train_config()

  # ---- data and clustering stages ----
  c.prepare = demo_corpus.default_config()
  c.embed = embed_stage.default_config()
  c.cluster = cluster_config.default_config()
  c.cluster.n, c.cluster.m = arg.n, arg.m
  c.input = loader.default_config()
  c.input.num_workers = 0
  c.expert_stream = expert_stream.default_config()
  c.expert_stream.ablation = arg.ablation
  c.report = report.default_config()
  c.export = bundle.default_config()   # `export`: where the bundle goes
  c.evaluate = eval_tasks.default_config()   # which tasks and models `evaluate` runs
  c.expert = arg.expert

  # ---- schedule: the paper's 27 + 5 of 32 epochs, scaled down ----
  c.mode = ml_collections.ConfigDict(dict(total_epochs=3.2, seed_epochs=2.7))

  # ---- model: a CPU-sized CLIP at 32 px, 4 x 4 patches (~400 examples/s on 2 cores) ----
  c.model.variant, c.model.image_size, c.model.context_length = "mu/8", 32, 24
  c.model.vision.update(width=128, depth=4, heads=4)
  c.model.text.update(width=128, depth=3, heads=4)
  c.model.embed_dim = 128
  c.batch_size = 256
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 1e-3, 50, 0.1
  c.log_every, c.ckpt_every = 20, 100
  c.eval_batch_size = 256

  if arg.runlocal:   # the same pipeline in about a minute, for tests
    c.prepare.max_clipart = 60
    c.prepare.fmnist_train_limit, c.prepare.eval_limit = 300, 100
    c.prepare.mnist_limit = 200
    c.prepare.min_category_images = 2
    c.cluster.m = min(arg.m, 8)
    c.model.vision.update(width=32, depth=1, heads=2)
    c.model.text.update(width=32, depth=1, heads=2)
    c.model.embed_dim = 32
    c.batch_size = 32
    c.mode.total_epochs, c.mode.seed_epochs = 1.0, 0.6
    c.optim.warmup_steps = 2
    c.log_every, c.ckpt_every, c.eval_batch_size = 5, 10, 64
  return c
