"""Trainer: sharded step equals one device, kill-and-resume, cross-mesh restore, NaN stop."""

import os
import time

import jax
import numpy as np
import pytest

from mode_jax import checkpoint as ckpt_lib
from mode_jax.train import config as config_lib
from mode_jax.train import metrics as metrics_lib
from mode_jax.train import sharding
from mode_jax.train import state as state_lib
from mode_jax.train import trainer


def tiny_config(**kw):
  c = config_lib.train_config()
  c.model.variant, c.model.image_size = "mu/8", 16
  c.model.vocab_size, c.model.context_length = 64, 8
  c.model.vision.update(width=32, depth=2, heads=2)
  c.model.text.update(width=32, depth=1, heads=2)
  c.model.embed_dim = 16
  c.optim.lr, c.optim.warmup_steps = 1e-3, 2
  c.batch_size, c.schedule_steps, c.num_steps = 16, 10, 4
  c.log_every, c.ckpt_every = 1, 2
  for k, v in kw.items():
    setattr(c, k, v)
  return c


class SyntheticData:
  """Deterministic per position, so a resumed stream can be compared with a straight one."""

  def __init__(self, config, mesh=None, nan_at=None):
    self.pos, self.cfg, self.nan_at = 0, config, nan_at
    self.local = config.batch_size // jax.process_count()

  def __next__(self):
    rng = np.random.default_rng(1000 + self.pos)
    s, L, V = self.cfg.model.image_size, self.cfg.model.context_length, self.cfg.model.vocab_size
    img = rng.normal(size=(self.local, s, s, 3)).astype(np.float32)
    tok = rng.integers(1, V - 1, size=(self.local, L)).astype(np.int32)
    tok[:, -1] = V - 1
    if self.nan_at is not None and self.pos >= self.nan_at:
      img[:] = np.nan
    self.pos += 1
    return {"image": img, "tokens": tok}

  def get_state(self):
    return {"pos": self.pos}

  def set_state(self, s):
    self.pos = s["pos"]


def _one_step(config, devices):
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  graphdef, tx, _, shardings, init_fn = state_lib.build(
      config.model, config.optim, schedule_steps=10, mesh=mesh,
      rules=config.sharding_rules, seed=0)
  from mode_jax.train import optimizer
  step = state_lib.make_train_step(graphdef, tx, optimizer.lr_schedule(config.optim, 10),
                                   shardings, mesh)
  state, m = step(init_fn(), sharding.global_batch(next(SyntheticData(config)), mesh))
  return state, m


def _init_params(config):
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
  *_, init_fn = state_lib.build(config.model, config.optim, schedule_steps=10, mesh=mesh,
                                rules=config.sharding_rules, seed=0)
  return init_fn()["params"]


def test_sharded_step_equals_single_device():
  assert jax.device_count() == 8
  # One step at the peak LR. Adam eps 1e-3 instead of 1e-6: the attention key
  # bias has an exactly-zero true gradient, and with a tiny eps Adam turns the
  # float noise there into +-lr updates of random sign on any device layout.
  c8 = tiny_config(sharding_rules=[(".*", "fsdp")])
  c8.mesh.update(data=4, fsdp=2)
  c1 = tiny_config()
  c1.mesh.update(data=1, fsdp=1)
  for c in (c8, c1):
    c.optim.warmup_steps, c.optim.eps = 0, 1e-3
  s8, m8 = _one_step(c8, jax.devices())
  s1, m1 = _one_step(c1, jax.devices()[:1])
  # Parameters really are sharded over fsdp in the 8-device run.
  kernel = s8["params"]["visual"]["transformer"]["blocks"][0]["c_fc"]["kernel"]
  assert "fsdp" in tuple(kernel.value.sharding.spec)
  np.testing.assert_allclose(m8["loss"], m1["loss"], atol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                                       s1["params"], _init_params(c1)))
  assert max(moved) > 1e-4  # the step really changed the parameters
  for a, b in zip(jax.tree.leaves(s8["params"]), jax.tree.leaves(s1["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_kill_and_resume_equals_straight_run(tmp_path):
  straight = trainer.train(tiny_config(num_steps=4), str(tmp_path / "a"),
                           input_fn=SyntheticData, progress=False)
  trainer.train(tiny_config(num_steps=2), str(tmp_path / "b"), input_fn=SyntheticData,
                progress=False)
  resumed = trainer.train(tiny_config(num_steps=4), str(tmp_path / "b"),
                          input_fn=SyntheticData, progress=False)
  assert resumed.step == 4
  la = [r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))]
  lb = [r["loss"] for r in metrics_lib.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))]
  np.testing.assert_allclose(la, lb, atol=1e-6)
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_metrics_report_mfu_memory_and_a_profile_writes_a_trace(tmp_path):
  c = tiny_config(num_steps=4, log_every=2, profile=(1, 3))
  trainer.train(c, str(tmp_path), input_fn=SyntheticData, progress=False)
  rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:
    assert 0 < r["mfu"] < 2 and r["step_mem_gib"] > 0
    assert r["examples_per_s_per_device"] == pytest.approx(r["examples_per_s"] / 8)
  traces = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "profile") for f in fs
            if f.endswith(".xplane.pb")]
  assert traces and os.path.getsize(traces[0]) > 0


@pytest.mark.parametrize("field,value,match", [
    ("accum_steps", 0, "accum_steps"),
    ("accum_steps", 3, "accum_steps"),          # 16 rows are not 3 micro-batches over 8 devices
    ("profile", (3, 3), "profile"),
    ("log_every", 0, "log_every"),
])
def test_more_bad_fields_stop_before_compute(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    trainer.validate(tiny_config(**{field: value}), str(tmp_path))


def test_bad_optimiser_fields_name_the_field(tmp_path):
  for field, value in (("lr", -1.0), ("b2", 1.0), ("weight_decay", -0.1), ("eps", 0.0)):
    c = tiny_config()
    c.optim[field] = value
    with pytest.raises(ValueError, match=f"config.optim.{field}"):
      trainer.validate(c, str(tmp_path))


def test_checkpoint_saved_on_8_devices_restores_on_1(tmp_path):
  c = tiny_config(num_steps=2, sharding_rules=[(".*", "fsdp")])
  c.mesh.update(data=1, fsdp=8)
  res = trainer.train(c, str(tmp_path), input_fn=SyntheticData, progress=False)
  mesh1 = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  _, _, abstract, shardings1, _ = state_lib.build(
      c.model, c.optim, schedule_steps=10, mesh=mesh1, rules=[(".*", "replicate")])
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"))
  state, meta = ck.restore(ckpt_lib.abstract_with_shardings(abstract, shardings1))
  ck.close()
  assert meta["data"] == {"pos": 2} and int(state["step"]) == 2
  for a, b in zip(jax.tree.leaves(res.state), jax.tree.leaves(state)):
    assert len(b.sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fork_continues_step_and_schedule(tmp_path):
  trainer.train(tiny_config(num_steps=2), str(tmp_path / "seed"), input_fn=SyntheticData,
                progress=False)
  c = tiny_config(num_steps=4)
  c.init.checkpoint, c.init.step = str(tmp_path / "seed" / "ckpt"), 2
  res = trainer.train(c, str(tmp_path / "expert"), input_fn=SyntheticData, progress=False)
  rows = metrics_lib.read_jsonl(str(tmp_path / "expert" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [3, 4]
  from mode_jax.train import optimizer
  sched = optimizer.lr_schedule(c.optim, c.schedule_steps)
  np.testing.assert_allclose([r["lr"] for r in rows], [sched(2), sched(3)], rtol=1e-6)
  assert int(res.state["step"]) == 4


def test_fork_with_continue_data_equals_one_continuous_run(tmp_path):
  """The dense baseline's fork: the seed's params, moments, step and data position."""
  straight = trainer.train(tiny_config(num_steps=4), str(tmp_path / "straight"),
                           input_fn=SyntheticData, progress=False)
  trainer.train(tiny_config(num_steps=2), str(tmp_path / "seed"), input_fn=SyntheticData,
                progress=False)
  outs = {}
  for cont in (True, False):
    c = tiny_config(num_steps=4)
    c.init.checkpoint, c.init.step = str(tmp_path / "seed" / "ckpt"), 2
    c.init.continue_data = cont
    outs[cont] = trainer.train(c, str(tmp_path / f"fork{cont}"), input_fn=SyntheticData,
                               progress=False)
  for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(outs[True].state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  # without it the fork replays the seed's first batches: a different model
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(straight.state["params"]),
                 jax.tree.leaves(outs[False].state["params"])))


def test_logit_scale_is_clamped_to_0_and_ln100():
  """Regression: the clamp matched the path string 'logit_scale', but NNX paths end in
  '/value', so it never applied (22.7 passed through)."""
  params = _init_params(tiny_config())
  for raw, want in ((22.7, np.log(100.0)), (-3.0, 0.0), (2.5, 2.5)):
    p = jax.tree.map(lambda x: x, params)
    p["logit_scale"] = jax.tree.map(lambda x: x * 0 + raw, p["logit_scale"])
    out = state_lib.clamp_logit_scale(p)
    np.testing.assert_allclose(float(jax.tree.leaves(out["logit_scale"])[0]), want, rtol=1e-6)
    assert float(jax.tree.leaves(p["logit_scale"])[0]) == pytest.approx(raw)   # input intact
  # and inside the jitted step: a scale above ln 100 comes out clamped
  c = tiny_config()
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
  graphdef, tx, _, shardings, init_fn = state_lib.build(
      c.model, c.optim, schedule_steps=10, mesh=mesh, rules=c.sharding_rules, seed=0)
  from mode_jax.train import optimizer
  step = state_lib.make_train_step(graphdef, tx, optimizer.lr_schedule(c.optim, 10),
                                   shardings, mesh)
  state = init_fn()
  state["params"]["logit_scale"] = jax.tree.map(lambda x: x * 0 + 22.7,
                                                state["params"]["logit_scale"])
  state = jax.device_put(state, shardings)
  new, _ = step(state, sharding.global_batch(next(SyntheticData(c)), mesh))
  assert float(jax.tree.leaves(new["params"]["logit_scale"])[0]) <= np.log(100.0) + 1e-6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config(num_steps=6)
  with pytest.raises(trainer.NonFiniteLoss, match="last good checkpoint"):
    trainer.train(c, str(tmp_path), input_fn=lambda cfg, mesh: SyntheticData(cfg, nan_at=3),
                  progress=False)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"))
  assert ck.latest_step() == 2
  ck.close()


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 12, "batch_size"),
    ("loss", "hinge", "loss"),
    ("num_steps", 11, "num_steps"),
])
def test_bad_config_stops_before_compute(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    trainer.validate(tiny_config(**{field: value}), str(tmp_path))


def test_bad_variant_and_unwritable_workdir(tmp_path):
  c = tiny_config()
  c.model.variant = "Q/16"
  with pytest.raises(ValueError, match="model.variant"):
    trainer.validate(c, str(tmp_path))
  ro = tmp_path / "ro"
  ro.mkdir()
  os.chmod(ro, 0o500)
  if os.access(str(ro), os.W_OK):  # root ignores permissions; use a path under a file
    bad = str(tmp_path / "file")
    open(bad, "w").close()
    ro = os.path.join(bad, "sub")
  with pytest.raises(ValueError, match="workdir"):
    trainer.validate(tiny_config(), str(ro))


class _SlowData:
  """Batches that take `delay` seconds each to produce."""

  def __init__(self, delay):
    self.delay, self.pos = delay, 0

  def __next__(self):
    time.sleep(self.delay)
    self.pos += 1
    return {"x": np.full((8, 2), self.pos, np.float32)}

  def get_state(self):
    return {"pos": self.pos}


class _FakeClock:
  """DeviceClock stand-in: the device finishes its last step at `done_at`."""

  def __init__(self, done_at):
    self.done_at = done_at

  def idle_since(self):
    return self.done_at if time.perf_counter() >= self.done_at else None


def test_prefetcher_counts_only_device_idle_time_as_stall():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  pf = trainer.Prefetcher(_SlowData(0.3), mesh)
  try:
    # device busy the whole time: the wait overlaps compute, no stall at all
    t0 = time.perf_counter()
    batch, stall = pf.next_with_stall(_FakeClock(time.perf_counter() + 60))
    assert stall == 0.0 and time.perf_counter() - t0 > 0.1
    assert float(np.asarray(batch["x"])[0, 0]) == 1
    # device done 0.1 s into a ~0.3 s wait: only the rest is a stall
    t0 = time.perf_counter()
    _, stall = pf.next_with_stall(_FakeClock(t0 + 0.1))
    waited = time.perf_counter() - t0
    assert stall == pytest.approx(waited - 0.1, abs=0.01)
    # device idle before the wait began, or no clock: all of the wait
    t0 = time.perf_counter()
    _, stall = pf.next_with_stall(_FakeClock(t0 - 5))
    assert stall == pytest.approx(time.perf_counter() - t0, abs=0.01)
    assert pf.get_state() == {"pos": 3}
  finally:
    pf.close()


def test_device_clock_stamps_the_end_of_the_last_dispatched_step():
  clock = trainer.DeviceClock()
  try:
    x = jax.numpy.ones((256, 256))
    f = jax.jit(lambda a: (a @ a).sum())
    before = time.perf_counter()
    clock.dispatched(f(x))
    for _ in range(500):   # the watcher thread stamps it once the result exists
      if clock.idle_since() is not None:
        break
      time.sleep(0.01)
    assert before <= clock.idle_since() <= time.perf_counter()
    long = jax.jit(lambda a: jax.lax.fori_loop(0, 300, lambda i, b: jax.numpy.tanh(b @ a), a))
    t_dispatch = time.perf_counter()
    clock.dispatched(long(jax.numpy.eye(512) * 0.5))   # returns before it is computed
    assert clock.idle_since() is None   # the last dispatched step still runs
    jax.block_until_ready(long(jax.numpy.eye(512)))
    for _ in range(500):
      if clock.idle_since() is not None:
        break
      time.sleep(0.01)
    assert clock.idle_since() > t_dispatch
  finally:
    clock.close()


def test_embedders_on_fsdp_sharded_parameters_equal_one_device():
  """The validation curves embed with the model being trained, on the training mesh: with
  parameters sharded over fsdp (data=4, fsdp=2) every row of images and texts comes back,
  in order, as from the same parameters on one device."""
  from mode_jax.models import embedders
  c8 = tiny_config(sharding_rules=[(".*", "fsdp")])
  c8.mesh.update(data=4, fsdp=2)
  mesh = sharding.make_mesh(c8.mesh, devices=jax.devices())
  graphdef, _, _, _, init_fn = state_lib.build(c8.model, c8.optim, schedule_steps=10,
                                               mesh=mesh, rules=c8.sharding_rules, seed=0)
  state = init_fn()
  model = state_lib.model_from_state(graphdef, state)
  kernel = state["params"]["visual"]["transformer"]["blocks"][0]["c_fc"]["kernel"]
  assert "fsdp" in tuple(kernel.value.sharding.spec)
  single = state_lib.model_from_state(graphdef, jax.device_get(state))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (13, 16, 16, 3)).astype(np.uint8)   # not a multiple of 8

  def tok(texts, context_length):
    return np.array([[1 + (hash(t) + i) % 60 for i in range(context_length - 1)] + [63]
                     for t in texts], np.int32)

  texts = [f"t{i}" for i in range(11)]
  kw = dict(context_length=c8.model.context_length, batch_size=8)
  ei, et = embedders.make_embedders(model, tok, mesh=mesh, **kw)
  ei1, et1 = embedders.make_embedders(single, tok, **kw)
  np.testing.assert_allclose(ei(images), ei1(images), atol=1e-5)
  np.testing.assert_allclose(et(texts), et1(texts), atol=1e-5)
