"""The paper's recipe (docs/method.md "Paper recipe"), shared by mode_b32/b16/l14.py.

  python launch.py pipeline \
      --config 'configs/mode_b16.py:n=4,shards=gs://b/cc12m/{00000..01242}.tar,root=gs://b/cb' \
      --workdir gs://b/mode_b16_n4

Arguments: n (experts), expert (-1 = all; c = expert c alone), ablation
("" | "random"), shards (required: the training data, img2dataset's
webdataset output, local or gs:// / s3://; brace and glob patterns,
'::'-joined lists), suite ("mode26" the paper's 26 tasks, "datacomp38",
"folders" = every CLIP_benchmark folder under root, or a module), root
(the folder of the suite's CLIP_benchmark task folders), encoder (a local HF
folder of the paper's sentence encoder, supervised SimCSE BERT-base, read
with pooler output; default the offline MiniLM), runlocal.

Global batch 32,768; 32 epochs of the data-set size; seed at epoch 27; 5
epochs per expert ("epoch" = the full data-set size); out-of-cluster ratio
0.02; m = 1,024 fine clusters. Nothing is downloaded at run time.

The data is the researcher's own: a config with shards= has no `prepare`
stage and needs none of the demo corpus's packages. Without shards= it stops
before any compute naming the argument. `runlocal` shrinks the model, batch
and schedule to a CPU (configs/demo.py `laptop`) and keeps the shards and
suite; `runlocal` without shards runs on the embedded demo corpus instead.
"""

import ml_collections

from configs import common
from configs import demo
from mode_jax import constants
from mode_jax.models import clip as clip_lib


def paper_config(variant: str, arg) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, n=4, expert=-1, ablation="", shards="", suite="mode26", root="",
                         encoder="", runlocal=False)
  structure = (f"n={arg.n},m={constants.NUM_FINE_CLUSTERS},expert={arg.expert},"
               f"ablation={arg.ablation}")
  if not arg.shards:
    if not arg.runlocal:
      raise ValueError(f"the {variant} recipe needs the training data: shards=PATTERN "
                       "(img2dataset webdataset shards, e.g. shards=/data/cc3m/{00000..00331}.tar "
                       "or gs://bucket/cc12m/{00000..01242}.tar); `runlocal` without shards runs "
                       "the demo corpus")
    c = demo.get_config(structure + ",runlocal")   # the embedded demo corpus, CPU-sized
    c.model.variant = variant.split("/")[0] + "/8"   # the paper's tower name, 32 px demo data
    c.model.text.features = 0   # the paper trains both towers from scratch
    return c

  c = demo.get_config(structure)
  c.model.text.features = 0   # the paper trains both towers (the demo's text tower is locked)
  del c["prepare"]   # the researcher's data: no demo corpus stage
  c.input.shards = arg.shards
  c.evaluate.update(suite=arg.suite, root=arg.root)
  if arg.encoder:
    c.embed.encoder, c.embed.pooling = arg.encoder, "pooler"   # paper: SimCSE pooler_output
  if arg.runlocal:
    c.model.variant = variant
    demo.laptop(c)
    return c

  c.input.num_workers = 8
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
