"""Train step of our CLIP (JAX) against transformers.CLIPModel (PyTorch), same shapes, one run.

Ours is built exactly as the trainer builds it (`state.build`, then
`state.make_train_step` with the config's loss and accum_steps); the peer is
`transformers.CLIPModel` of the same sizes (quick_gelu, attention through
SDPA), fp32 master weights under bf16 autocast, torch.optim.AdamW with the
recipe's betas/eps/decay (constants.py; decay on rank >= 2 weights only, as
optimizer.decay_mask) and the CLIP contrastive loss (return_loss=True), with
the logit-scale clamp after each update as ours. Both see the same synthetic
uint8 images and random tokens, normalised on the device inside the step.
Warm-up steps are not timed; the timed steps end with block_until_ready /
torch.cuda.synchronize. Model FLOPs per step come from
`mfu.clip_train_flops` (the same figure for both: the models are the same),
the peak from `mfu.peak_flops()`.

Each (framework, model) runs in its own child process so that JAX's and
PyTorch's allocators never share the GPU and a hang costs one child only.
On a GPU the JAX batch is the largest that fits: one compile at a small batch
gives fixed + per-example bytes (XLA's memory analysis), the prediction is
rounded down to powers of two and their midpoints and checked by compiling
it (stepping down while over the device's memory or out of memory). The peer
runs at the same batch, halved only if it runs out of memory (both batches
are printed).

  python benchmarks/train_peer.py              # GPU: B/32 and B/16; no GPU: a small CPU run
  python benchmarks/train_peer.py --smoke      # tiny mu/8 at 32 px, 2 steps, float32 (tests)
  python benchmarks/train_peer.py --models B/16 --steps 20 --torch-compile
Writes the results as JSON to --out (default $OUT/train_peer.json when OUT is set).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GOAL_MFU_B16 = 0.45       # issue 11: B/16 train-step MFU on one GPU
GOAL_RATIO = 1.2          # issue 11: JAX examples/s over PyTorch's at the same batch
# Batches tried on a GPU: powers of two and their midpoints (64, 96, 128, 192, ...).
CANDIDATES = sorted({int(m * 2 ** k) for k in range(5, 15) for m in (1, 1.5)})
MEMORY_HEADROOM = 0.92    # of the device's XLA pool, for fragmentation
PROBE_BATCH = 128         # the small compile that gives bytes per example

# Sizes (width, depth, heads): vision/text of the real models; the smoke model is CPU-sized.
SMOKE = dict(variant="mu/8", image_size=32, context_length=8, vocab_size=4096,
             vision=(32, 1, 2), text=(32, 1, 2), embed_dim=32)
CPU_SMALL = dict(variant="mu/8", image_size=64, context_length=32, vocab_size=49408,
                 vision=(128, 4, 4), text=(128, 4, 4), embed_dim=128)


def model_spec(variant: str, image_size=224, context_length=None, vocab_size=None,
               vision=None, text=None, embed_dim=None) -> dict:
  """Resolved tower sizes of a model, as our CLIP builds them (clip._size)."""
  from mode_jax import constants
  from mode_jax.models import clip
  size, _ = clip.parse_variant(variant)
  v = vision or dataclass_tuple(clip.VISION_SIZES[size])
  t = text or dataclass_tuple(clip.TEXT_SIZES[size])
  return dict(variant=variant, image_size=image_size,
              context_length=context_length or constants.CONTEXT_LENGTH,
              vocab_size=vocab_size or constants.VOCAB_SIZE, vision=list(v), text=list(t),
              embed_dim=embed_dim or clip.EMBED_DIMS[size])


def dataclass_tuple(s):
  return (s.width, s.depth, s.heads)


def synthetic_batch(spec: dict, batch: int, seed: int = 0):
  """uint8 images [B, H, W, 3] and int32 tokens [B, L] ending in EOT (49407, the argmax)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  s, ctx, vocab = spec["image_size"], spec["context_length"], spec["vocab_size"]
  images = rng.integers(0, 256, size=(batch, s, s, 3), dtype=np.uint8)
  tokens = rng.integers(1, vocab - 1, size=(batch, ctx), dtype=np.int32)
  tokens[:, -1] = vocab - 1
  return images, tokens


# ---------------------------------------------------------------------------- JAX


def jax_config(spec: dict, dtype: str, attention: str):
  """The trainer's config with this model; (config, attention actually set or None)."""
  from mode_jax import constants
  from mode_jax.models import clip
  from mode_jax.train import config as config_lib
  c = config_lib.train_config()
  m = c.model
  m.variant, m.image_size = spec["variant"], spec["image_size"]
  m.context_length, m.vocab_size = spec["context_length"], spec["vocab_size"]
  m.vision.update(width=spec["vision"][0], depth=spec["vision"][1], heads=spec["vision"][2])
  m.text.update(width=spec["text"][0], depth=spec["text"][1], heads=spec["text"][2])
  m.embed_dim = spec["embed_dim"]
  m.dtype = dtype
  c.optim.lr = constants.PEAK_LR.get(spec["variant"], c.optim.lr)
  used = None
  if "attention" in m:   # config.model.attention, where this checkout has it
    for name in dict.fromkeys([attention, "auto"]):
      m.attention = name
      try:
        clip.validate(m)
        used = name
        break
      except ValueError as e:
        print(f"  attention={name!r} rejected ({e}); trying the next", file=sys.stderr)
  return c, used


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def jax_worker(a) -> dict:
  import inspect

  import jax
  import numpy as np

  from mode_jax.train import mfu, optimizer, sharding
  from mode_jax.train import state as state_lib

  spec = json.loads(a.spec)
  config, attention = jax_config(spec, a.dtype, a.attention)
  # ---- mesh, model, optimiser, step: as trainer.train builds them ----
  mesh = sharding.make_mesh(config.mesh)
  graphdef, tx, abstract, shardings, init_fn = state_lib.build(
      config.model, config.optim, schedule_steps=config.schedule_steps, mesh=mesh,
      rules=[tuple(r) for r in config.sharding_rules], seed=config.seed)
  schedule = optimizer.lr_schedule(config.optim, config.schedule_steps)
  kwargs = {}
  if "accum_steps" in inspect.signature(state_lib.make_train_step).parameters:
    kwargs["accum_steps"] = config.accum_steps
  step = state_lib.make_train_step(graphdef, tx, schedule, shardings, mesh, config.loss, **kwargs)
  dev = jax.local_devices()[0]
  n_dev = len(jax.devices())

  def abstract_batch(b):
    s, ctx = spec["image_size"], spec["context_length"]
    sh = sharding.batch_sharding(mesh)
    return {"image": jax.ShapeDtypeStruct((b, s, s, 3), np.uint8, sharding=sh),
            "tokens": jax.ShapeDtypeStruct((b, ctx), np.int32, sharding=sh)}

  def compile_at(b):
    t0 = time.perf_counter()
    compiled = step.lower(abstract, abstract_batch(b)).compile()
    mem = mfu.compiled_memory(compiled)
    print(f"  jax compile at batch {b}: {time.perf_counter() - t0:.1f} s, "
          f"{mem.get('total_gib', float('nan')):.1f} GiB", file=sys.stderr, flush=True)
    return compiled, mem

  limit = (dev.memory_stats() or {}).get("bytes_limit")
  if a.batch:
    batches = [a.batch]
  elif limit:   # predict from one small compile, then step down from the prediction
    probe = min(PROBE_BATCH * n_dev, a.max_batch)
    _, mem = compile_at(probe)
    fixed = (mem["total_gib"] - mem["temp_gib"]) * 2 ** 30   # state (donated) and batch
    per = mem["temp_gib"] * 2 ** 30 / probe
    fit = (limit * MEMORY_HEADROOM - fixed) / max(per, 1.0)
    batches = [b for b in CANDIDATES if b % n_dev == 0 and b <= min(fit, a.max_batch)][::-1]
    batches = batches or [probe]
    print(f"  device pool {limit / 2 ** 30:.1f} GiB; ~{per / 2 ** 20:.0f} MiB per example "
          f"-> predicted fit {fit:.0f}", file=sys.stderr, flush=True)
  else:
    batches = [8]
  state = init_fn()
  for i, b in enumerate(batches):
    try:
      compiled, mem = compile_at(b)
      if limit and mem.get("total_gib", 0) * 2 ** 30 > limit * MEMORY_HEADROOM and \
          i + 1 < len(batches):
        continue
      images, tokens = synthetic_batch(spec, b)
      gb = sharding.global_batch({"image": images, "tokens": tokens}, mesh)
      for _ in range(a.warmup):
        state, metrics = compiled(state, gb)
      jax.block_until_ready((state, metrics))
      t0 = time.perf_counter()
      for _ in range(a.steps):
        state, metrics = compiled(state, gb)
      jax.block_until_ready((state, metrics))
      dt = (time.perf_counter() - t0) / a.steps
      break
    except Exception as e:   # noqa: BLE001  (an out-of-memory step tries the next batch down)
      if not _is_oom(e) or i + 1 == len(batches):
        raise
      print(f"  jax batch {b}: out of memory, stepping down", file=sys.stderr, flush=True)
      state = init_fn()   # the failed call may have consumed the donated state
  flops = mfu.clip_train_flops(config.model, config.loss, b)
  peak, peak_src = mfu.peak_flops()
  return dict(framework="jax", batch=b, step_s=dt, examples_per_s=b / dt,
              flops_per_step=flops, peak_flops=peak, peak_source=peak_src, n_devices=n_dev,
              mfu=mfu.mfu(flops, 1 / dt, n_dev, peak), attention=attention,
              loss=float(metrics["loss"]), device=dev.device_kind, backend=jax.default_backend(),
              jax=jax.__version__, memory=mem)


# ---------------------------------------------------------------------------- PyTorch


def torch_model(spec: dict):
  import transformers
  from mode_jax import constants
  patch = int(spec["variant"].split("/")[1])
  (vw, vd, vh), (tw, td, th) = spec["vision"], spec["text"]
  cfg = transformers.CLIPConfig(
      text_config=dict(vocab_size=spec["vocab_size"], hidden_size=tw, intermediate_size=4 * tw,
                       num_hidden_layers=td, num_attention_heads=th,
                       max_position_embeddings=spec["context_length"], hidden_act="quick_gelu",
                       bos_token_id=spec["vocab_size"] - 2, eos_token_id=spec["vocab_size"] - 1,
                       pad_token_id=1),
      vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vd,
                         num_attention_heads=vh, image_size=spec["image_size"], patch_size=patch,
                         hidden_act="quick_gelu"),
      projection_dim=spec["embed_dim"], logit_scale_init_value=constants.LOGIT_SCALE_INIT)
  return transformers.CLIPModel._from_config(cfg, attn_implementation="sdpa")


def torch_worker(a) -> dict:
  import numpy as np
  import torch

  from mode_jax import constants
  spec = json.loads(a.spec)
  cuda = torch.cuda.is_available()
  dev = torch.device("cuda" if cuda else "cpu")
  if not cuda:
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
  autocast_dtype = torch.bfloat16 if a.dtype == "bfloat16" else None
  mean = torch.tensor(constants.IMAGE_MEAN, device=dev).view(1, 3, 1, 1) * 255
  inv_std = 1 / (torch.tensor(constants.IMAGE_STD, device=dev).view(1, 3, 1, 1) * 255)

  def run(b):
    torch.manual_seed(0)
    model = torch_model(spec).to(dev).train()   # float32 master weights
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": constants.WEIGHT_DECAY},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=constants.PEAK_LR.get(spec["variant"], 5e-4), betas=(constants.ADAM_B1, constants.ADAM_B2),
        eps=constants.ADAM_EPS, fused=cuda)
    fwd = torch.compile(model) if a.torch_compile else model
    images, tokens = synthetic_batch(spec, b)
    images = torch.from_numpy(images).to(dev)
    ids = torch.from_numpy(tokens.astype(np.int64)).to(dev)

    def one():
      pix = (images.permute(0, 3, 1, 2).float() - mean) * inv_std   # on device, as ours
      with torch.autocast(dev.type, dtype=autocast_dtype or torch.float32,
                          enabled=autocast_dtype is not None):
        out = fwd(input_ids=ids, pixel_values=pix, return_loss=True)
      opt.zero_grad(set_to_none=True)
      out.loss.backward()
      opt.step()
      with torch.no_grad():
        model.logit_scale.clamp_(0, constants.LOGIT_SCALE_MAX)
      return out.loss.detach()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(a.warmup):
      loss = one()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
      loss = one()
    sync()
    return (time.perf_counter() - t0) / a.steps, float(loss), warm_s

  b = a.batch
  while True:
    try:
      dt, loss, warm_s = run(b)
      break
    except torch.OutOfMemoryError:
      if b <= 1:
        raise
      print(f"  torch batch {b}: out of memory, halving", file=sys.stderr, flush=True)
      torch.cuda.empty_cache()
      b //= 2
  return dict(framework="torch.compile" if a.torch_compile else "torch", batch=b, step_s=dt,
              examples_per_s=b / dt, loss=loss, warmup_s=warm_s, torch=torch.__version__,
              device=torch.cuda.get_device_name() if cuda else "cpu",
              peak_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None)


# ---------------------------------------------------------------------------- driver


def child(a, framework: str, spec: dict, batch: int, timeout: float, torch_compile=False):
  """Runs one worker in a fresh process; its result dict, or {"error": ...}.

  Without a GPU (a.inline) the worker runs in this process: no allocators to
  keep apart, and the smoke test saves two interpreter starts.
  """
  if a.inline:
    w = argparse.Namespace(**{**vars(a), "spec": json.dumps(spec), "batch": batch,
                              "torch_compile": torch_compile})
    try:
      return (jax_worker if framework == "jax" else torch_worker)(w)
    except Exception as e:   # noqa: BLE001  (reported in the table, as a child's failure)
      return {"error": repr(e)[:500]}
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--spec",
         json.dumps(spec), "--batch", str(batch), "--steps", str(a.steps), "--warmup",
         str(a.warmup), "--dtype", a.dtype, "--attention", a.attention,
         "--max-batch", str(a.max_batch)] + (["--torch-compile"] if torch_compile else [])
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=os.environ.get(
      "XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92"), PYTHONUNBUFFERED="1")
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=max(timeout, 1), env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
  if p.returncode or not lines:
    return {"error": f"exit {p.returncode}: {p.stdout[-500:]}"}
  out = json.loads(lines[-1][len("RESULT "):])
  out["wall_s"] = time.perf_counter() - t0
  return out


def _fmt(x, spec="9.1f"):
  return format(x, spec) if isinstance(x, (int, float)) and not math.isnan(x) else "-".rjust(9)


def has_gpu() -> bool:
  if not shutil.which("nvidia-smi"):
    return False
  return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny mu/8, 32 px, 2 steps, float32")
  ap.add_argument("--models", default="", help="comma-separated variants (GPU default B/32,B/16)")
  ap.add_argument("--steps", type=int, default=0, help="timed steps (default 10 GPU, 2 smoke)")
  ap.add_argument("--warmup", type=int, default=0, help="untimed steps (default 3 GPU, 1 smoke)")
  ap.add_argument("--batch", type=int, default=0, help="fixed batch (default: largest that fits)")
  ap.add_argument("--max-batch", type=int, default=8192)
  ap.add_argument("--dtype", default="", help="compute dtype (default bfloat16 GPU, float32 CPU)")
  ap.add_argument("--attention", default="", help="config.model.attention (default cudnn on GPU)")
  ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
  ap.add_argument("--budget", type=float, default=330, help="seconds for the whole run")
  ap.add_argument("--out", default="", help="JSON results (default $OUT/train_peer.json)")
  ap.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
  ap.add_argument("--spec", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)

  if a.worker:
    fn = jax_worker if a.worker == "jax" else torch_worker
    print("RESULT " + json.dumps(fn(a)), flush=True)
    return 0

  gpu = has_gpu() and not a.smoke
  a.inline = not gpu
  a.steps = a.steps or (10 if gpu else 2)
  a.warmup = a.warmup or (3 if gpu else 1)
  a.dtype = a.dtype or ("bfloat16" if gpu else "float32")
  a.attention = a.attention or ("cudnn" if gpu else "auto")
  if a.smoke:
    specs = [model_spec(**SMOKE)]
    a.batch = a.batch or 8
  elif gpu:
    specs = [model_spec(v) for v in (a.models or "B/32,B/16").split(",")]
  else:
    print("no GPU here (nvidia-smi): a small CPU run instead of B/32 and B/16")
    specs = [model_spec(**CPU_SMALL)]
    a.batch = a.batch or 32
  deadline = time.perf_counter() + a.budget
  rows = []
  for i, spec in enumerate(specs):
    left = deadline - time.perf_counter()
    share = left / (len(specs) - i)   # this model's part of what is left
    t_model = time.perf_counter()
    ours = child(a, "jax", spec, a.batch, share * 0.6)
    if "error" in ours:
      print(f"{spec['variant']}: jax failed: {ours['error']}", file=sys.stderr)
    batch = ours.get("batch") or a.batch or 64
    left_model = share - (time.perf_counter() - t_model)
    peer = child(a, "torch", spec, batch, left_model * (0.5 if a.torch_compile else 0.9))
    if "error" in peer:
      print(f"{spec['variant']}: torch failed: {peer['error']}", file=sys.stderr)
    compiled = None
    if a.torch_compile:
      left_model = share - (time.perf_counter() - t_model)
      compiled = child(a, "torch", spec, batch, left_model, torch_compile=True)
      if "error" in compiled:
        print(f"{spec['variant']}: torch.compile skipped: {compiled['error']}", file=sys.stderr)
    rows.append(summarise(spec, ours, peer, compiled))
  print_table(rows, a)
  out = a.out or (os.path.join(os.environ["OUT"], "train_peer.json") if os.environ.get("OUT")
                  else "")
  if out:
    with open(out, "w") as f:
      json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    print(f"results: {out}")
  return 0


def summarise(spec, ours, peer, compiled) -> dict:
  """One model's row: both frameworks' figures, MFU from the same model FLOPs, the ratio."""
  flops, peak, n = ours.get("flops_per_step"), ours.get("peak_flops"), ours.get("n_devices", 1)
  row = {"model": spec["variant"], "spec": spec, "jax": ours, "torch": peer,
         "torch_compile": compiled}
  for r in (peer, compiled):
    if r and "error" not in r and flops and peak:
      # model FLOPs of the peer's batch: linear in the batch but for the B x B logits
      r["mfu"] = flops * r["batch"] / ours["batch"] / r["step_s"] / (n * peak)
  best = max((r for r in (peer, compiled) if r and "error" not in r),
             key=lambda r: r["examples_per_s"], default=None)
  row["ratio"] = (ours["examples_per_s"] / peer["examples_per_s"]
                  if "error" not in ours and "error" not in peer else float("nan"))
  row["ratio_best_torch"] = (ours["examples_per_s"] / best["examples_per_s"]
                             if best and "error" not in ours else float("nan"))
  return row


def print_table(rows, a):
  sys.stderr.flush()
  print(f"\ntrain step, {a.dtype}, {a.steps} timed steps after {a.warmup} warm-up; "
        f"MFU = model FLOPs (mfu.clip_train_flops) / peak (mfu.peak_flops)")
  if rows and rows[0]["jax"].get("peak_source"):
    j = rows[0]["jax"]
    print(f"device: {j.get('device')} ({j.get('backend')}), peak "
          f"{(j.get('peak_flops') or float('nan')) / 1e9:.0f} GFLOP/s: {j['peak_source']}")
  print(f"{'model':6s} {'framework':20s} {'batch':>6s} {'ex/s':>9s} {'step ms':>9s} {'MFU':>6s}")
  for r in rows:
    for name in ("jax", "torch", "torch_compile"):
      x = r[name]
      if not x:
        continue
      if "error" in x:
        print(f"{r['model']:6s} {name:20s} failed: {x['error'][:100]}")
        continue
      label = name if name != "jax" else f"jax ({x.get('attention') or 'default'} attn)"
      print(f"{r['model']:6s} {label:20s} {x['batch']:6d} {_fmt(x['examples_per_s'])} "
            f"{_fmt(x['step_s'] * 1e3)} {_fmt(x.get('mfu', float('nan')) * 100, '5.1f')}%")
    ratio = r["ratio"]
    print(f"{r['model']:6s} ratio JAX/PyTorch {ratio:.2f} (goal >= {GOAL_RATIO}: "
          f"{'met' if ratio >= GOAL_RATIO else 'not met'})"
          + (f"; vs best PyTorch {r['ratio_best_torch']:.2f}" if r["torch_compile"] else ""))
    if r["model"] == "B/16" and "mfu" in r["jax"]:
      m = r["jax"]["mfu"]
      print(f"B/16   JAX MFU {m:.1%} (goal >= {GOAL_MFU_B16:.0%}: "
            f"{'met' if m >= GOAL_MFU_B16 else 'not met'})")


if __name__ == "__main__":
  sys.exit(main())
