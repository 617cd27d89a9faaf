"""Input pipeline throughput (examples/s) against the trainer's consumption rate.

Writes synthetic webdataset shards of 64x64 RGB PNGs with captions, then times
loader.train_iterator (decode, RandomResizedCrop, normalise, tokenize) at
resolution 64 with 0, 1 and 2 worker processes. The peer, when torch is
installed, is the usual PyTorch recipe on the same shards: an IterableDataset
streaming tar members with `tarfile` (shards split over workers), PIL decode
and crop, torch.utils.data.DataLoader with the same worker counts.

  python benchmarks/loader_throughput.py [--consume 500] [--samples 3000] [--batches 30]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax.data import loader, preprocess, wds_writer  # noqa: E402


def _image(rng) -> np.ndarray:
  """A smooth gradient plus noise: PNG sizes closer to real small images than pure noise."""
  y, x = np.mgrid[:64, :64]
  base = np.stack([x * 4, y * 4, (x + y) * 2], -1) + rng.integers(0, 40, (64, 64, 3))
  return (base % 256).astype(np.uint8)


def write(dirname: str, n: int, shard_size: int = 500) -> str:
  rng = np.random.default_rng(0)
  samples = ({"__key__": f"{i:07d}", "png": _image(rng),
              "json": {"texts": [f"sample {i}", f"another caption {i}"]}} for i in range(n))
  wds_writer.write_shards(os.path.join(dirname, "shards/train-%05d.tar"), samples, shard_size)
  return dirname


def tokenize(texts):   # stands in for the CLIP BPE: same output shape and dtype
  out = np.zeros((len(texts), 77), np.int32)
  for r, t in enumerate(texts):
    b = np.frombuffer(t.encode()[:77], np.uint8)
    out[r, :len(b)] = b
  return out


def time_ours(workdir: str, workers: int, batch: int, batches: int) -> float:
  cfg = loader.default_config()
  cfg.resolution, cfg.batch_size, cfg.num_workers = 64, batch, workers
  it = loader.train_iterator(cfg, workdir, tokenize, process_index=0, process_count=1)
  for _ in range(3):   # start-up (worker spawn) is not throughput
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t
  it.close()
  return batches * batch / dt


def time_torch(workdir: str, workers: int, batch: int, batches: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  shards = sorted(os.path.join(workdir, "shards", f) for f in os.listdir(
      os.path.join(workdir, "shards")) if f.endswith(".tar"))
  ds = _TorchShards(shards)
  dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                   persistent_workers=False)
  it = iter(dl)
  for _ in range(3):
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t)


class _TorchShards:
  """The PyTorch peer; defined lazily so the module imports without torch."""

  def __new__(cls, shards):
    import torch

    class Shards(torch.utils.data.IterableDataset):
      def __iter__(self):
        import json
        from PIL import Image
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng(wid)
        while True:
          for path in shards[wid::nw]:
            with tarfile.open(path) as tar:
              cur = {}
              for m in tar:
                key, ext = m.name.split(".", 1)
                cur[ext] = tar.extractfile(m).read()
                if "json" in cur and "png" in cur:
                  im = np.asarray(Image.open(io.BytesIO(cur["png"])).convert("RGB"))
                  im = preprocess.random_resized_crop(im, 64, rng)
                  text = rng.choice(json.loads(cur["json"])["texts"])
                  yield (torch.from_numpy(preprocess.normalize(im)),
                         torch.from_numpy(tokenize([str(text)])[0]))
                  cur = {}

    return Shards()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--consume", type=float, default=500.0,
                  help="trainer examples/s the input must sustain")
  ap.add_argument("--samples", type=int, default=3000)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--batches", type=int, default=30)
  ap.add_argument("--workers", default="0,1,2")
  ap.add_argument("--no-peer", action="store_true")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    write(d, args.samples)
    print(f"wrote {args.samples} 64x64 PNG samples in {time.perf_counter() - t:.1f}s; "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'ours ex/s':>10} {'torch ex/s':>11} {'ours/torch':>10} "
          f"{'ours/consume':>12}")
    for w in (int(x) for x in args.workers.split(",")):
      ours = time_ours(d, w, args.batch, args.batches)
      peer = None if args.no_peer else time_torch(d, w, args.batch, args.batches)
      ratio = f"{ours / peer:10.2f}" if peer else f"{'-':>10}"
      peer_s = f"{peer:11.0f}" if peer else f"{'-':>11}"
      print(f"{w:7d} {ours:10.0f} {peer_s} {ratio} {ours / args.consume:12.2f}",
            flush=True)
  print(f"consumption rate: {args.consume:.0f} examples/s (pass --consume with the "
        f"trainer's measured rate)")


if __name__ == "__main__":
  main()
