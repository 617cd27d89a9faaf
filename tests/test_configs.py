"""Paper configs carry the recipe of docs/method.md and pass validation at full size."""

import pytest

from configs import demo, fmnist_clip, mode_b16, mode_b32, mode_l14, sweep_n
from mode_jax import constants
from mode_jax.models import clip as clip_lib
from mode_jax.train import trainer


@pytest.mark.parametrize("module,variant,lr", [
    (mode_b32, "B/32", 5e-4), (mode_b16, "B/16", 5e-4), (mode_l14, "L/14", 4e-4)])
def test_paper_recipe(module, variant, lr, tmp_path):
  c = module.get_config("n=8,shards=gs://b/{00000..00009}.tar,root=gs://b/cb")
  assert "prepare" not in c and c.input.shards == "gs://b/{00000..00009}.tar"
  assert (c.evaluate.suite, c.evaluate.root) == ("mode26", "gs://b/cb")
  assert c.model.variant == variant and c.model.image_size == 224
  assert c.model.act == "quick_gelu" and c.model.context_length == 77
  assert c.model.vocab_size == 49408
  assert c.batch_size == 32768 and c.optim.lr == lr and c.optim.warmup_steps == 2000
  assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == (0.9, 0.98, 1e-6, 0.2)
  assert (c.mode.total_epochs, c.mode.seed_epochs) == (32, 27)
  assert c.cluster.m == 1024 and c.cluster.n == 8
  assert c.expert_stream.ooc_ratio == 0.02
  # Validates as a pod job: 256 devices, before any compute.
  c.num_steps = c.schedule_steps = 10
  trainer.validate(c, str(tmp_path), n_devices=256)


def test_runlocal_shrinks_but_keeps_the_tower_name():
  c = mode_l14.get_config("runlocal,n=2")
  assert c.model.variant.startswith("L/") and c.batch_size <= 64 and c.cluster.n == 2
  clip_lib.validate(c.model)


def test_sweep_covers_the_paper_expert_counts():
  cmds = sweep_n.commands("b16", "s/{0..9}.tar", "/w")
  assert [int(c.split(":n=")[1].split(",")[0]) for c in cmds] == list(constants.EXPERT_CHOICES)


@pytest.mark.parametrize("module", [demo, fmnist_clip])
def test_local_configs_validate(module, tmp_path):
  for arg in (None, "runlocal"):
    c = module.get_config(arg)
    trainer.validate(c, str(tmp_path), n_devices=1)
