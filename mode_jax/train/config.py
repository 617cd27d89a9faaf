"""Defaults shared by every training config (seed, experts, demo).

Experiment files in configs/ start from `train_config()` and change fields;
`runlocal` variants shrink them to a laptop.
"""

import ml_collections

from mode_jax import distributed
from mode_jax.models import clip as clip_lib
from mode_jax.train import optimizer


def train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = clip_lib.default_config()
  c.optim = optimizer.default_config()
  c.loss = "softmax"
  c.batch_size = 32768
  # Micro-batches per step: exact gradient accumulation for the contrastive loss
  # (features of the whole global batch first, then gradients micro-batch by
  # micro-batch; state.make_train_step). 1 = one pass over the whole batch.
  c.accum_steps = 1
  c.schedule_steps = 1000
  c.num_steps = 1000
  c.seed = 0
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  # (regex over "/"-joined state paths, rule); first match wins. FSDP: [(".*", "fsdp")].
  c.sharding_rules = [(".*", "replicate")]
  c.distributed = distributed.default_config()   # jax.distributed: mode auto | on | off
  c.ckpt_dir = ""              # "" = <run dir>/ckpt; the pipeline sets it from checkpoint_root
  # Where checkpoints go when the workdir is on s3:// (Orbax writes local paths and
  # gs:// only): "" = inside the workdir; else a shared folder or gs:// prefix.
  c.checkpoint_root = ""
  c.log_every = 50
  c.ckpt_every = 1000
  c.keep_ckpts = 2
  c.milestones = ()
  c.eval_every = 0
  # MoDE runs (seed, experts, dense): score the workdir's validation tasks every this many
  # epochs and at each run's end, into its metrics (eval/validation.py); 0 = never.
  c.val_every_epochs = 1.0
  # (first, last) global steps to trace with jax.profiler into <run dir>/profile; () = off.
  c.profile = ()
  c.init = ml_collections.ConfigDict({"checkpoint": "", "step": -1, "pretrained": "",
                                      "continue_data": False})
  return c
