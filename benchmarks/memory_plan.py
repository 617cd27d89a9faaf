"""Memory plan: per-device bytes of the B/16 and L/14 train steps, compiled without allocating.

The step is lowered on abstract inputs (jax.ShapeDtypeStruct with shardings)
for a mesh of fake CPU devices, and XLA's buffer assignment reports argument,
output, aliased (donated) and temporary bytes per device. Peak ~= argument +
output - alias + temp. XLA:CPU has no native bf16 matmuls and may keep some
bf16 buffers as float32, so these are estimates of accelerator memory, on the
high side for activations; check on the accelerator before a long run.
Measured here (B/16, 64 per device, 2 and 4 blocks): temp bytes are the same
with remat "none" and "full", for the plain step as for the accumulated one,
so XLA:CPU's schedule keeps the recomputed activations alive and these
numbers are an upper bound: what the step needs without remat's savings.

Compiling full-depth towers on 2 CPU cores takes minutes per case, so the
default run compiles each case at 1 and 2 "units" of depth (B: 1+1 and 2+2
vision+text blocks; L: 2+1 and 4+2) and extrapolates linearly to the full
depth (memory is affine in depth: per-block parameters, optimiser state,
gradients and saved block inputs; one block's recompute). --full compiles the
real depth (to check the extrapolation).

  python benchmarks/memory_plan.py                  # the plan: 8xH100 and v4-64, batch 32,768
  python benchmarks/memory_plan.py --quick          # B/16 on 8xH100 only
  python benchmarks/memory_plan.py --variant L/14 --devices 32 --fsdp 8 --micro 256 \\
      --accum 4 --remat full [--full]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAX_DEVICES = 32
GIB = 2 ** 30

# name -> (devices, HBM bytes per device)
MACHINES = {
    "8xH100": (8, 80e9),            # H100 SXM 80 GB
    "v4-64": (32, 32 * GIB),        # TPU v4: 32 GiB HBM per chip, v4-64 = 32 chips
}
# The plan at global batch 32,768 (constants.GLOBAL_BATCH):
# (machine, variant, fsdp, per-device micro-batch, accum_steps, remat)
# Sized on these CPU numbers, in which remat saves nothing (see the module
# docstring), so the micro-batches are conservative.
PLAN = [
    ("8xH100", "B/16", 1, 128, 32, "full"),
    ("8xH100", "L/14", 8, 32, 128, "full"),
    ("v4-64", "B/16", 1, 64, 16, "full"),
    ("v4-64", "L/14", 8, 32, 32, "full"),
]


def _remat_value(policy):
  """config.model.remat as this tree takes it: a policy name, or the older bool."""
  from mode_jax.models import clip
  if isinstance(clip.default_config().remat, bool):
    if policy not in ("none", "full"):
      raise SystemExit(f"--remat {policy}: this tree's config.model.remat is a bool "
                       "(use none or full)")
    return policy == "full"
  return policy


def _config(variant, units, remat):
  from configs import mode_paper
  from mode_jax.models import clip
  c = mode_paper.paper_config(variant, "")
  c.model.remat = _remat_value(remat)
  if units:   # shallow towers for the extrapolation, same widths
    size = variant.split("/")[0]
    v, t = clip.VISION_SIZES[size].depth, clip.TEXT_SIZES[size].depth
    g = min(v, t)
    c.model.vision.depth, c.model.text.depth = units * v // g, units * t // g
  return c


def full_units(variant):
  from mode_jax.models import clip
  size = variant.split("/")[0]
  return min(clip.VISION_SIZES[size].depth, clip.TEXT_SIZES[size].depth)


def measure(variant, devices, fsdp, micro, accum, remat, units=0):
  """Per-device bytes {argument, output, alias, temp} of one compiled train step."""
  import jax
  import jax.numpy as jnp

  from mode_jax.train import optimizer, sharding
  from mode_jax.train import state as state_lib
  c = _config(variant, units, remat)
  c.mesh.update(data=devices // fsdp, fsdp=fsdp)
  rules = [(".*", "fsdp")] if fsdp > 1 else [(".*", "replicate")]
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:devices])
  graphdef, tx, abstract, shardings, _ = state_lib.build(
      c.model, c.optim, schedule_steps=c.schedule_steps, mesh=mesh, rules=rules)
  step = state_lib.make_train_step(graphdef, tx, optimizer.lr_schedule(c.optim, c.schedule_steps),
                                   shardings, mesh, c.loss, accum_steps=accum)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)
  b, px, ctx = micro * accum * devices, c.model.image_size, c.model.context_length
  row = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((b, px, px, 3), jnp.uint8, sharding=row),
           "tokens": jax.ShapeDtypeStruct((b, ctx), jnp.int32, sharding=row)}
  m = step.lower(state, batch).compile().memory_analysis()
  return {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
          "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}


def estimate(variant, devices, fsdp, micro, accum, remat, full=False):
  """Full-depth bytes: compiled directly (full) or extrapolated from 1 and 2 depth units."""
  if full:
    return measure(variant, devices, fsdp, micro, accum, remat), "compiled"
  one = measure(variant, devices, fsdp, micro, accum, remat, units=1)
  two = measure(variant, devices, fsdp, micro, accum, remat, units=2)
  u = full_units(variant)
  return {k: one[k] + (two[k] - one[k]) * (u - 1) for k in one}, "extrapolated"


def peak(m):
  return m["argument"] + m["output"] - m["alias"] + m["temp"]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="only the first row of the plan")
  ap.add_argument("--full", action="store_true", help="compile full depth (slow on CPU)")
  ap.add_argument("--variant", choices=("B/16", "L/14"))
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--fsdp", type=int, default=1)
  ap.add_argument("--micro", type=int, default=512, help="per-device micro-batch")
  ap.add_argument("--accum", type=int, default=1)
  ap.add_argument("--remat", default="full")
  ap.add_argument("--hbm_gib", type=float, default=0, help="budget per device (custom case)")
  args = ap.parse_args()
  if args.devices > MAX_DEVICES:
    raise SystemExit(f"--devices at most {MAX_DEVICES}")

  import jax
  jax.config.update("jax_num_cpu_devices", MAX_DEVICES)
  jax.config.update("jax_platforms", "cpu")

  if args.variant:
    rows = [(f"{args.devices} dev", args.variant, args.fsdp, args.micro, args.accum, args.remat)]
    budgets = {rows[0][0]: args.hbm_gib * GIB or float("nan")}
    devices = {rows[0][0]: args.devices}
  else:
    rows = PLAN[:1] if args.quick else PLAN
    budgets = {k: v[1] for k, v in MACHINES.items()}
    devices = {k: v[0] for k, v in MACHINES.items()}
  print("per-device bytes of one train step (XLA:CPU buffer assignment; estimate of "
        "accelerator memory)")
  print(f"{'machine':8s} {'model':5s} {'fsdp':>4s} {'micro':>5s} {'accum':>5s} {'global':>6s} "
        f"{'remat':6s} {'arg GiB':>7s} {'out GiB':>7s} {'alias':>6s} {'temp GiB':>8s} "
        f"{'peak GiB':>8s} {'budget':>6s} {'how':12s} {'s':>4s}")
  for machine, variant, fsdp, micro, accum, remat in rows:
    n = devices[machine]
    t = time.perf_counter()
    m, how = estimate(variant, n, fsdp, micro, accum, remat, full=args.full)
    g = {k: v / GIB for k, v in m.items()}
    print(f"{machine:8s} {variant:5s} {fsdp:4d} {micro:5d} {accum:5d} {micro * accum * n:6d} "
          f"{remat:6s} {g['argument']:7.2f} {g['output']:7.2f} {g['alias']:6.2f} "
          f"{g['temp']:8.2f} {peak(m) / GIB:8.2f} {budgets[machine] / GIB:6.1f} {how:12s} "
          f"{time.perf_counter() - t:4.0f}", flush=True)


if __name__ == "__main__":
  main()
