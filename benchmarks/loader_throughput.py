"""Input pipeline examples/s per host core: our Grain loader against a PyTorch DataLoader.

Both read the same webdataset shards of web-like JPEGs written here (666x500,
a ~500 px short side as img2dataset-style web crawls store them, quality 90,
~70 kB), decode, RandomResizedCrop to 224 (constants.RRC_SCALE, ratio 3/4..4/3,
bicubic) and tokenize one caption with the CLIP BPE, at the same worker counts:
  ours  loader.train_iterator: simplejpeg at PIL's draft scale, uint8 out (the
        model normalises on the device), BPE in the Grain workers.
  peer  torchvision's recipe in PIL + torch (torchvision may be absent): an
        IterableDataset streaming tar members (shards split over workers),
        Image.open().convert("RGB"), RandomResizedCrop (crop, bicubic resize),
        ToTensor, Normalize, BPE per sample; DataLoader's default collate.
Per core = examples per CPU-second of the whole process tree (main process,
threads and workers, via psutil), so it does not depend on what else shares
the machine; wall-clock examples/s are printed too. "B/16 cores" is how many
such cores one host needs to feed 8 H100s training B/16 at 45% MFU (model
FLOPs per example from XLA's cost analysis, mode_jax.train.mfu).

Measured here (2 CPU cores shared with other jobs; --samples 2000 --batches 15,
batch 64; ex/s per core = per CPU-second):
  workers  ours ex/s  ours /core  torch ex/s  torch /core  per-core ratio  B/16 cores
     0        514        286         130         130          2.19            101
     1        571        302         152         148          2.03             96
     2        652        336         276         139          2.41             86
B/16 at 224 is 123.4 GFLOPs per example (forward + backward): at 45% of an
H100's 989 TFLOP/s a device trains 3,608 ex/s, a host of 8 28,861 ex/s, so
~90-100 host cores at ~300 ex/s each (per example: decode ~1.0 ms, crop +
bicubic resize ~1.2 ms, BPE ~0.04 ms, the rest tar reads and batching).

--decoders times the JPEG decoders on 500x375, 666x500 and 1024x768 images
decoded for a 224 crop (CPU ms per image, one thread). Measured here:
  decoder (CPU ms / image)          500x375  666x500  1024x768
  PIL full decode                     1.04     1.75     4.38
  PIL + draft (the old loader)        1.07     1.38     2.85
  simplejpeg, pow-2 scale (ours)      0.71     1.02     2.15
  opencv-headless IMREAD_REDUCED      0.73     1.01     2.35   (BGR out, a 60 MB wheel)
simplejpeg at any scale (libjpeg-turbo's 3/8, 5/8 IDCTs) was ~25% slower
than at PIL's power-of-two draft scale; fastdct/fastupsample save another
~10-20% but move pixels ~1.6 levels, so they are off. PyTurboJPEG needs a
system libturbojpeg, absent here.

  python benchmarks/loader_throughput.py [--workers 0,1,2] [--samples 2000] [--batches 20]
  python benchmarks/loader_throughput.py --decoders
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

from mode_jax import constants  # noqa: E402
from mode_jax.data.io import loader, preprocess, wds_writer  # noqa: E402
from mode_jax.data.io import webdataset as wds  # noqa: E402

RES = 224
SIZE = (666, 500)          # (width, height) of the written JPEGs
MFU = 0.45
DEVICES_PER_HOST = 8


def web_jpeg(rng, w: int, h: int) -> bytes:
  """Smooth shading, flat shapes and sensor-like noise: JPEG sizes like photos (~0.2 B/px)."""
  y, x = np.mgrid[:h, :w].astype(np.float32)
  img = np.stack([np.sin(x / 37 + rng.uniform(0, 6)) * 80 + 120, np.cos(y / 23) * 70 + 110,
                  (x + y) / (w + h) * 200], -1)
  for _ in range(12):
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, w / 4)
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  img += rng.normal(0, 6, img.shape)
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write(dirname: str, n: int, shard_size: int = 250) -> float:
  """Writes n samples; returns the mean JPEG size in bytes."""
  rng = np.random.default_rng(0)
  jpegs = [web_jpeg(rng, *SIZE) for _ in range(min(n, 200))]   # reused: encoding is slow
  samples = ({"__key__": f"{i:07d}", "jpg": jpegs[i % len(jpegs)],
              "json": {"texts": [f"a photo number {i} of a red bicycle by the lake",
                                 f"sample {i}: an old bicycle, leaning on a wall"]}}
             for i in range(n))
  wds_writer.write_shards(os.path.join(dirname, "shards/train-%05d.tar"), samples, shard_size)
  return float(np.mean([len(j) for j in jpegs]))


def tokenizer():
  import functools
  from mode_jax.text.clip_bpe import ClipTokenizer
  return functools.partial(ClipTokenizer(), context_length=constants.CONTEXT_LENGTH)


def cpu_seconds() -> float:
  """User + system CPU time of this process (all threads) and its live descendants."""
  import psutil
  total = 0.0
  me = psutil.Process()
  for p in [me] + me.children(recursive=True):
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


def timed(it, batch: int, batches: int) -> tuple[float, float]:
  """(examples per wall second, examples per CPU second) over `batches` after warm-up."""
  for _ in range(3):   # start-up (worker spawn, first reads) is not throughput
    next(it)
  t, c = time.perf_counter(), cpu_seconds()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - t, cpu_seconds() - c
  return batches * batch / wall, batches * batch / cpu


def time_ours(workdir: str, workers: int, batch: int, batches: int):
  cfg = loader.default_config()
  cfg.resolution, cfg.batch_size, cfg.num_workers = RES, batch, workers
  it = loader.train_iterator(cfg, workdir, tokenizer(), process_index=0, process_count=1)
  try:
    return timed(it, batch, batches)
  finally:
    it.close()


def time_torch(workdir: str, workers: int, batch: int, batches: int):
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(1)   # as in DataLoader workers; the main process only collates
  shards = sorted(os.path.join(workdir, "shards", f) for f in os.listdir(
      os.path.join(workdir, "shards")) if f.endswith(".tar"))
  dl = torch.utils.data.DataLoader(_TorchShards(shards, tokenizer()), batch_size=batch,
                                   num_workers=workers)
  return timed(iter(dl), batch, batches)


class _TorchShards:
  """The PyTorch peer; defined lazily so the module imports without torch."""

  def __new__(cls, shards, tokenize):
    import torch

    mean = torch.tensor(constants.IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(constants.IMAGE_STD).view(3, 1, 1)

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
                _, ext = m.name.split(".", 1)
                cur[ext] = tar.extractfile(m).read()
                if "json" in cur and "jpg" in cur:
                  im = Image.open(io.BytesIO(cur["jpg"])).convert("RGB")
                  top, left, h, w = preprocess.rrc_box(im.height, im.width, rng)
                  im = im.crop((left, top, left + w, top + h)).resize((RES, RES),
                                                                      Image.BICUBIC)
                  x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255)
                  text = str(rng.choice(json.loads(cur["json"])["texts"]))
                  yield (x - mean) / std, torch.from_numpy(tokenize([text])[0])
                  cur = {}

    return Shards()


def b16_flops_per_example() -> tuple[float, float, str]:
  """(train FLOPs per example of B/16 at 224, peak FLOP/s of an H100, source)."""
  from mode_jax.models import clip as clip_lib
  from mode_jax.train import mfu
  cfg = clip_lib.default_config()
  cfg.variant = "B/16"
  batch = 8
  flops = mfu.clip_train_flops(cfg, "softmax", batch) / batch
  peak, source = next((f, s) for kind, f, s in mfu.PEAK_FLOPS if kind == "H100")
  return flops, peak, source


def time_decoders(reps: float = 1.0):
  """CPU ms per image of each JPEG decoder, decoding for a RES crop (one thread)."""
  from PIL import Image

  def pil_full(d):
    with Image.open(io.BytesIO(d)) as im:
      return np.asarray(im.convert("RGB"))

  def pil_draft(d):
    with Image.open(io.BytesIO(d)) as im:
      im.draft("RGB", (RES, RES))
      return np.asarray(im.convert("RGB"))

  decoders = {"PIL full decode": pil_full, "PIL + draft": pil_draft,
              "simplejpeg pow-2 (ours)": lambda d: wds._decode_jpeg(d, RES)}  # pylint: disable=protected-access
  try:
    import cv2
    cv2.setNumThreads(1)

    def cv2_reduced(d):
      h, w, _, _ = __import__("simplejpeg").decode_jpeg_header(d)
      flag = cv2.IMREAD_REDUCED_COLOR_2 if min(h, w) >= 2 * RES else cv2.IMREAD_COLOR
      return cv2.cvtColor(cv2.imdecode(np.frombuffer(d, np.uint8), flag), cv2.COLOR_BGR2RGB)
    decoders["opencv IMREAD_REDUCED"] = cv2_reduced
  except ImportError:
    pass
  sizes = [(500, 375), SIZE, (1024, 768)]
  rng = np.random.default_rng(1)
  data = {s: [web_jpeg(rng, *s) for _ in range(10)] for s in sizes}
  print(f"{'decoder (ms / image)':28s}" + "".join(f"{f'{w}x{h}':>10}" for w, h in sizes))
  for name, fn in decoders.items():
    row = []
    for s in sizes:
      for d in data[s][:2]:
        fn(d)
      t, n = time.process_time(), 0   # CPU time: robust to other jobs on the machine
      while time.process_time() - t < reps:
        for d in data[s]:
          fn(d)
          n += 1
      row.append((time.process_time() - t) / n * 1e3)
    print(f"{name:28s}" + "".join(f"{ms:10.2f}" for ms in row), flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--samples", type=int, default=2000)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--workers", default="0,1,2")
  ap.add_argument("--no-peer", action="store_true")
  ap.add_argument("--decoders", action="store_true", help="only time the JPEG decoders")
  args = ap.parse_args()
  if args.decoders:
    time_decoders()
    return
  flops, peak, source = b16_flops_per_example()
  need = MFU * peak / flops * DEVICES_PER_HOST   # examples/s one host's accelerators consume
  print(f"B/16 at {RES}: {flops / 1e9:.1f} GFLOPs per example (forward + backward); at "
        f"{MFU:.0%} of {peak / 1e12:.0f} TFLOP/s ({source}) one device trains "
        f"{need / DEVICES_PER_HOST:.0f} ex/s, a host of {DEVICES_PER_HOST} {need:.0f} ex/s")
  with tempfile.TemporaryDirectory() as d:
    kb = write(d, args.samples) / 1e3
    print(f"{args.samples} samples, {SIZE[0]}x{SIZE[1]} JPEG (~{kb:.0f} kB) -> RRC {RES} "
          f"scale {constants.RRC_SCALE} bicubic + CLIP BPE; {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'ours ex/s':>10} {'ours /core':>10} {'torch ex/s':>10} "
          f"{'torch /core':>11} {'per-core ratio':>14} {'B/16 cores':>10}")
    for w in (int(x) for x in args.workers.split(",")):
      ours, ours_core = time_ours(d, w, args.batch, args.batches)
      peer = None if args.no_peer else time_torch(d, w, args.batch, args.batches)
      tail = (f"{peer[0]:10.0f} {peer[1]:11.0f} {ours_core / peer[1]:14.2f}" if peer
              else f"{'-':>10} {'-':>11} {'-':>14}")
      print(f"{w:7d} {ours:10.0f} {ours_core:10.0f} {tail} {need / ours_core:10.0f}",
            flush=True)


if __name__ == "__main__":
  main()
