"""The whole MoDE pipeline on the embedded real corpus, on a CPU laptop.

  python launch.py pipeline --config configs/demo.py --workdir workdirs/demo
  python launch.py pipeline --config configs/demo.py:full --workdir workdirs/demo_full
  python launch.py pipeline --config configs/demo.py:runlocal --workdir /tmp/d   # tests
  python launch.py experts --config configs/demo.py:expert=2 --workdir workdirs/demo
  python launch.py pipeline --config configs/demo.py:ablation=random --workdir workdirs/random

Arguments: n (experts, 4), m (fine clusters; 0 = one per ~400 pairs: 32, full 256),
expert (-1 = all), ablation ("" or "random": paper Table 5's Random-n split),
full (`make demo-full`), runlocal (tests).

Both sizes were fixed from the paper's ratios and the compute budget before
any score was seen (issue 13). Both keep the paper's 27:5 seed-to-expert split
(seed_epochs = 27/32 of total_epochs) and its MoDE-4. Training costs
(27 + 5 x 4 + 5) / 32 x total_epochs x N = 1.625 E N samples (the seed, then
4 experts and the dense baseline each running the last 5/32 on their own
stream). Budget: 195 samples/s measured on 2 CPU cores (the first demo run on
this machine; earlier machines ran 340-390), plus measured fixed costs
(prepare, embedding ~240 captions/s, ~20 s per training job, evaluation,
report), with ~10% left for noise:
  demo  ~14k pairs: 9k icon records, 3k clip art, 1k Fashion-MNIST, 2k MNIST;
        E = 1.6 with a token text tower: ~36k samples, ~3 min of steps, ~9 min in
        all (<= 10; measured 6 min 57 s); E = 2.8 with the locked text tower
        (below), the same minutes of steps; E = 3.6 since the validation
        curves (~1 min more of steps, chosen on the validation split;
        measured 8 min 5 s from a fresh clone).
        Held-out families subsampled to 3k records to keep evaluation ~75 s.
  full  ~108k pairs: the whole corpus (92k icons, 6.9k clip art, 5k
        Fashion-MNIST, 4k MNIST); E = 2.4 with the token tower: ~420k samples,
        ~36 min of steps, ~18 min of fixed costs (7 min of it embedding 100k
        captions), <= 60 min (measured 46 min 32 s); E = 4.2 locked (not yet
        measured at this size).
        The held-out families are evaluated in full (9.9k records).
The model is the same at both sizes (a 32 px ViT with 4x4 patches, 128 wide):
a bigger one would cost epochs the budget does not have.
"""

import ml_collections

from clustering import config as cluster_config
from configs import common
from mode_jax import constants
from mode_jax.data.corpus import build as demo_corpus
from mode_jax.data import expert_stream
from mode_jax.data.io import loader
from mode_jax.eval import bundle
from mode_jax.eval import report
from mode_jax.eval import tasks as eval_tasks
from mode_jax.text import encoders
from mode_jax.train import config as train_config


def get_config(arg=None):
  arg = common.parse_arg(arg, n=4, m=0, expert=-1, ablation="", full=False, runlocal=False)
  c = train_config.train_config()

  # ---- data and clustering stages ----
  c.prepare = demo_corpus.default_config()
  c.embed = encoders.default_config()
  c.cluster = cluster_config.default_config()
  c.cluster.n, c.cluster.m = arg.n, arg.m or (256 if arg.full else 32)
  c.input = loader.default_config()
  c.input.num_workers = 0
  c.expert_stream = expert_stream.default_config()
  c.expert_stream.ablation = arg.ablation
  c.report = report.default_config()
  c.export = bundle.default_config()   # `export`: where the bundle goes
  c.evaluate = eval_tasks.default_config()   # which tasks and models `evaluate` runs
  c.expert = arg.expert

  # ---- corpus (see the docstring for the sizes) ----
  if arg.full:
    c.prepare.fmnist_train_limit = 5_000
  else:
    c.prepare.max_icons, c.prepare.max_heldout_icons = 9_000, 3_000
    c.prepare.max_clipart, c.prepare.fmnist_train_limit, c.prepare.eval_limit = 3_000, 1_000, 1_000
    c.prepare.mnist_limit = 2_500   # 2,000 train / 500 zero-shot

  # ---- schedule: the paper's 27 + 5 of 32 epochs, scaled down ----
  # 1.6 / 2.4 epochs fit the budget with a token text tower (213 samples/s); the locked
  # text tower below trains at 375 samples/s on the same 2 cores, and the same minutes
  # buy 1.76x the epochs (2.8 / 4.2). The demo's validation curves were still rising at
  # 2.8 epochs (7 min 21 s in all), so the minutes left in its budget went to epochs:
  # 3.6 raised the dense model's validation average from 45.50 to 48.02 (docs/results.md).
  total = 4.2 if arg.full else 3.6
  seed_frac = constants.SEED_EPOCHS / (constants.SEED_EPOCHS + constants.EXPERT_EPOCHS)
  c.mode = ml_collections.ConfigDict(dict(total_epochs=total, seed_epochs=total * seed_frac))

  # ---- model: a CPU-sized CLIP at 32 px, 4 x 4 patches ----
  c.model.variant, c.model.image_size, c.model.context_length = "mu/8", 32, 24
  c.model.vision.update(width=128, depth=4, heads=4)
  # The text tower is locked (LiT, Zhai et al. 2022): the embed stage's all-MiniLM-L6-v2
  # caption embeddings (384 wide) through a trained linear head; the experts fork it with
  # the rest of the seed. Chosen on the validation split (issue 23), same 1.6 epochs: val
  # average 31.97 against 29.06 for a 3-block, 128-wide token tower (val_emoji_groups 62.5
  # vs 56.6, val_icon_retrieval 1.47 vs 1.47), at 1.76x the training samples/s.
  c.model.text.features = 384
  c.model.embed_dim = 128
  c.batch_size = 256
  c.optim.lr, c.optim.weight_decay = 1e-3, 0.1
  c.optim.warmup_steps = 50 if arg.full else 20   # of ~850 / ~75 seed steps
  c.log_every, c.ckpt_every = 20, 100
  c.eval_batch_size = 256
  # Validation curves (eval/validation.py): the seed, each expert and dense scored on the
  # validation tasks every half epoch (~1 s each on ~400 images): 3.6 epochs give the seed
  # 7 points and each expert 2 beyond its fork, rather than 3 and 1.
  c.val_every_epochs = 0.5

  if arg.runlocal:   # the same pipeline in about a minute, for tests
    c.prepare.max_clipart = 60
    c.prepare.icon_sets = "mdi,fluent-emoji-flat"   # two sets load in ~1 s, all 31 in ~12 s
    c.prepare.max_icons, c.prepare.max_heldout_icons = 200, 250
    c.prepare.fmnist_train_limit, c.prepare.eval_limit = 150, 100
    c.prepare.mnist_limit = 200
    c.prepare.min_category_images = 2
    laptop(c)
  return c


def laptop(c) -> None:
  """`runlocal`'s recipe, on any config: a 1-block CLIP of width 32 at 32 px, batch 32, one
  epoch with the paper's seed-expert split, at most 8 fine clusters, frequent logs and
  checkpoints; the stages and their data stay as configured."""
  c.cluster.m = min(c.cluster.m, 8)
  c.model.variant, c.model.image_size, c.model.context_length = (
      c.model.variant.split("/")[0] + "/8", 32, 24)
  c.model.vision.update(width=32, depth=1, heads=2)
  c.model.text.update(width=32, depth=1, heads=2)
  c.model.embed_dim = 32
  c.model.update(dtype="float32", remat="none", attention="auto")
  c.batch_size, c.accum_steps = 32, 1
  c.mode.total_epochs, c.mode.seed_epochs = 1.0, 0.6
  c.optim.warmup_steps = 2
  c.input.num_workers = 0
  c.log_every, c.ckpt_every, c.eval_batch_size = 5, 10, 64
