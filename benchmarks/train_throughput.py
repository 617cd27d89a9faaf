"""Training throughput (examples/s): our JAX CLIP vs PyTorch transformers.CLIPModel.

Same model shape, batch, loss (symmetric InfoNCE) and optimiser (AdamW with
the recipe's betas/eps/decay) on the same threads, measured in one run.
Also prints the machine's measured fp32 matmul peak and our model FLOP
utilisation (FLOPs of the compiled step from XLA's cost analysis).

  python benchmarks/train_throughput.py            # demo size and B/32
  python benchmarks/train_throughput.py --only demo --steps 5
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from mode_jax.train import config as config_lib
from mode_jax.train import optimizer, sharding
from mode_jax.train import state as state_lib

THREADS = 2

# name -> (variant, image, vision (w, d, h), text (w, d, h), embed, context, batch)
CASES = {
    "demo": ("mu/8", 64, (192, 6, 3), (192, 6, 3), 192, 32, 128),
    "B/32": ("B/32", 224, (768, 12, 12), (512, 12, 8), 512, 77, 16),
}


def matmul_peak_gflops(n=2048, reps=5):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def jax_case(case, steps, dtype="float32"):
  variant, image, v, t, embed, ctx, batch = case
  c = config_lib.train_config()
  c.model.dtype = dtype
  c.model.variant, c.model.image_size, c.model.context_length = variant, image, ctx
  c.model.vision.update(width=v[0], depth=v[1], heads=v[2])
  c.model.text.update(width=t[0], depth=t[1], heads=t[2])
  c.model.embed_dim = embed
  c.optim.warmup_steps = 1
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
  graphdef, tx, _, shardings, init_fn = state_lib.build(
      c.model, c.optim, schedule_steps=1000, mesh=mesh, rules=[(".*", "replicate")])
  step = state_lib.make_train_step(graphdef, tx, optimizer.lr_schedule(c.optim, 1000),
                                   shardings, mesh)
  rng = np.random.default_rng(0)
  b = {"image": rng.normal(size=(batch, image, image, 3)).astype(np.float32),
       "tokens": rng.integers(1, 49407, size=(batch, ctx)).astype(np.int32)}
  b["tokens"][:, -1] = 49407
  gb = sharding.global_batch(b, mesh)
  state = init_fn()
  flops = step.lower(state, gb).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
  state, m = step(state, gb)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, gb)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  return batch / dt, flops / dt / 1e9


def torch_case(case, steps):
  import torch
  import transformers
  torch.set_num_threads(THREADS)
  variant, image, v, t, embed, ctx, batch = case
  patch = int(variant.split("/")[1])
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=49408, hidden_size=t[0], intermediate_size=4 * t[0],
                       num_hidden_layers=t[1], num_attention_heads=t[2],
                       max_position_embeddings=ctx, hidden_act="quick_gelu"),
      vision_config=dict(hidden_size=v[0], intermediate_size=4 * v[0], num_hidden_layers=v[1],
                         num_attention_heads=v[2], image_size=image, patch_size=patch,
                         hidden_act="quick_gelu"),
      projection_dim=embed)
  model = transformers.CLIPModel(cfg).train()
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
  g = torch.Generator().manual_seed(0)
  pix = torch.randn(batch, 3, image, image, generator=g)
  ids = torch.randint(1, 49407, (batch, ctx), generator=g)
  ids[:, -1] = 49407

  def one():
    out = model(input_ids=ids, pixel_values=pix, return_loss=True)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()

  one()
  t0 = time.perf_counter()
  for _ in range(steps):
    one()
  return batch / ((time.perf_counter() - t0) / steps)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--only", choices=sorted(CASES), default=None)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = ap.parse_args()
  peak = matmul_peak_gflops()
  print(f"machine fp32 matmul peak (jax, 2048^2): {peak:.1f} GFLOP/s on {os.cpu_count()} cores")
  print(f"{'case':6s} {'batch':>5s} {'jax ex/s':>9s} {'torch ex/s':>10s} {'ratio':>6s} "
        f"{'jax GFLOP/s':>11s} {'MFU':>5s}")
  for name in ([args.only] if args.only else list(CASES)):
    case = CASES[name]
    ours, gflops = jax_case(case, args.steps, args.dtype)
    try:
      theirs = torch_case(case, args.steps)
    except ImportError:
      theirs = float("nan")
      print("  (torch/transformers missing: pip install torch==2.13.0 transformers)")
    print(f"{name:6s} {case[-1]:5d} {ours:9.2f} {theirs:10.2f} {ours / theirs:6.2f} "
          f"{gflops:11.1f} {gflops / peak:5.0%}")


if __name__ == "__main__":
  main()
