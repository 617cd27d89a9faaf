"""The paper's recipe (DESIGN.md "Paper recipe"), shared by mode_b32/b16/l14.py.

  python launch.py pipeline --config configs/mode_b16.py:n=4,shards=gs://b/{00000..31999}.tar \
      --workdir gs://b/mode_b16_n4

Global batch 32,768; 32 epochs of the data-set size; seed at epoch 27; 5
epochs per expert ("epoch" = the full data-set size); out-of-cluster ratio
0.02; m = 1,024 fine clusters; n experts from the argument. The sentence
encoder of the paper is supervised SimCSE BERT-base with pooler output: pass
its local HF folder as `encoder=/path/to/sup-simcse-bert-base-uncased`
(nothing is downloaded at run time); the default is the offline MiniLM.

`runlocal` keeps the recipe's structure (stages, schedule split, routing) but
shrinks model, batch and data to the embedded demo corpus, for tests.
"""

import ml_collections

from configs import common
from configs import demo
from mode_jax import constants
from mode_jax.models import clip as clip_lib


def paper_config(variant: str, arg) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, n=4, expert=-1, ablation="", shards="shards/train-*.tar",
                         encoder="", runlocal=False)
  c = demo.get_config(f"n={arg.n},m={constants.NUM_FINE_CLUSTERS},expert={arg.expert},"
                      f"ablation={arg.ablation}" + (",runlocal" if arg.runlocal else ""))
  if arg.runlocal:
    c.model.variant = variant.split("/")[0] + "/8"   # the paper's tower name, 32 px demo data
    c.cluster.m = 8
    return c

  c.input.shards = arg.shards
  c.input.num_workers = 8
  if arg.encoder:
    c.embed.encoder, c.embed.pooling = arg.encoder, "pooler"   # paper: SimCSE pooler_output

  c.model = clip_lib.default_config()   # full-size defaults: OpenAI context, vocab
  c.model.variant, c.model.image_size = variant, 224
  c.model.dtype = "bfloat16"
  c.model.remat = "full" if variant.startswith("L") else "none"
  c.model.attention = "auto"   # cuDNN flash on GPU (bf16, 64-wide heads), XLA on TPU
  c.batch_size = constants.GLOBAL_BATCH
  # Exact accumulation (state.make_train_step) sized for 8xH100 by
  # benchmarks/memory_plan.py: 128 (B/16) / 32 (L/14) images per device per
  # micro-batch. On v4-64 pass --config.accum_steps=16 (B/16) or 32 (L/14).
  c.accum_steps = {"B/16": 32, "L/14": 128}.get(variant, 1)
  c.optim.lr = constants.PEAK_LR[variant]
  c.optim.warmup_steps = constants.WARMUP_STEPS
  c.optim.weight_decay = constants.WEIGHT_DECAY
  c.mode.total_epochs = float(constants.TOTAL_EPOCHS)
  c.mode.seed_epochs = float(constants.SEED_EPOCHS)
  c.sharding_rules = [(".*", "fsdp")] if variant.startswith("L") else [(".*", "replicate")]
  c.mesh.update(data=-1, fsdp=8 if variant.startswith("L") else 1)
  c.log_every, c.ckpt_every, c.keep_ckpts = 100, 2000, 3
  c.eval_batch_size = 1024
  return c
