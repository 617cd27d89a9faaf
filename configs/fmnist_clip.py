"""A small CLIP trained from scratch on Fashion-MNIST with template captions.

The first real demo: captions are class names (with synonyms) in training
templates; zero-shot accuracy on the test set is measured with templates
never used in training (mode_jax/data/corpus/fmnist_stream.py holds both lists).

  python launch.py train --config configs/fmnist_clip.py --workdir /tmp/fm
  python launch.py train --config configs/fmnist_clip.py:runlocal --workdir /tmp/fm
"""

from configs import common
from mode_jax.train import config as train_config


def get_config(arg=None):
  arg = common.parse_arg(arg, runlocal=False, epochs=1.0)
  c = train_config.train_config()
  c.input = dict(name="fmnist_demo", train_limit=60000, test_limit=10000, seed=0)

  c.model.variant = "mu/4"          # 28 px / 4 = 7 x 7 patches
  c.model.image_size = 28
  c.model.context_length = 16       # template captions are short
  c.model.vision.update(width=128, depth=4, heads=4)
  c.model.text.update(width=128, depth=3, heads=4)
  c.model.embed_dim = 128

  c.batch_size = 128
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.1
  steps = int(arg.epochs * c.input.train_limit / c.batch_size)
  c.schedule_steps = c.num_steps = steps
  c.log_every, c.eval_every, c.ckpt_every = 25, steps, 200

  if arg.runlocal:   # seconds, for tests
    c.input.train_limit, c.input.test_limit = 2048, 512
    c.model.vision.update(width=32, depth=1, heads=2)
    c.model.text.update(width=32, depth=1, heads=2)
    c.model.embed_dim = 32
    c.batch_size = 64
    c.schedule_steps = c.num_steps = 8
    c.log_every, c.eval_every, c.ckpt_every, c.optim.warmup_steps = 4, 8, 4, 2
  return c
