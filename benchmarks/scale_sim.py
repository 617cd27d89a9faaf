"""Web-scale rehearsal of embed -> cluster -> assign: throughput and peak memory vs N.

Writes N distinct captions (6 words each from a 256-word vocabulary, so no
two repeat) in shards of --shard-size samples, with a random-weight BERT
(mode_jax/text/random_bert.py) as the sentence encoder, then runs the three
stages through launch.py, each in its own process, and reads that process's
peak RSS from wait4. Run at 100k and 500k captions by default: peak memory
should not grow with N beyond what a stage must hold (the fine centers, one
shard's or one chunk's rows, and the embed stage's caption cache, which is
bounded by embed.cache_size).

  python benchmarks/scale_sim.py                      # 100k and 500k, 10k per shard
  python benchmarks/scale_sim.py --sizes 20000 --shard-size 2000   # a quick look
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from mode_jax.data.io import wds_writer  # noqa: E402
from mode_jax.text import random_bert  # noqa: E402

VOCAB = [f"w{a}{b}" for a in "abcdefghijklmnop" for b in "abcdefghijklmnop"]   # 256 words
WORDS_PER_CAPTION = 6


def caption(i: int) -> str:
  """The i-th caption: i written in base 256 with words as digits (distinct for i < 256**6)."""
  out = []
  for _ in range(WORDS_PER_CAPTION):
    i, r = divmod(i, len(VOCAB))
    out.append(VOCAB[r])
  return " ".join(out)


def tiny_png() -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def write_corpus(workdir: str, n: int, shard_size: int) -> int:
  png = tiny_png()
  samples = ({"__key__": f"s{i:09d}", "png": png, "json": {"caption": caption(i)}}
             for i in range(n))
  return len(wds_writer.write_shards(os.path.join(workdir, "shards", "train-%05d.tar"),
                                     samples, shard_size))


def run_stage(stage: str, workdir: str, args: list[str]) -> dict:
  """launch.py <stage> in a child process: wall seconds and the child's peak RSS (MiB)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["PYTHONPATH"] = ROOT
  t0 = time.perf_counter()
  p = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), stage, "--config",
                        "configs/demo.py", *args, "--workdir", workdir], cwd=ROOT, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  out = p.stdout.read()
  _, status, usage = os.wait4(p.pid, 0)
  wall = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"{stage} failed:\n{out.decode(errors='replace')[-3000:]}")
  return dict(wall_s=wall, peak_mib=usage.ru_maxrss / 1024)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", default="100000,500000", help="caption counts, comma-separated")
  ap.add_argument("--shard-size", type=int, default=10_000)
  ap.add_argument("--m", type=int, default=1024, help="fine clusters (paper: 1024)")
  ap.add_argument("--n", type=int, default=16, help="experts")
  ap.add_argument("--dim", type=int, default=32, help="encoder width = embedding dim")
  ap.add_argument("--dir", default="", help="where to write (default: a temp dir)")
  a = ap.parse_args()
  base = a.dir or tempfile.mkdtemp(prefix="scale_sim_")
  enc = random_bert.write_random_bert(os.path.join(base, "encoder"), VOCAB, hidden=a.dim)
  args = [f"--config.embed.encoder={enc}", "--config.embed.dtype=float16",
          f"--config.cluster.m={a.m}", f"--config.cluster.n={a.n}"]
  rows = []
  for n in (int(s) for s in a.sizes.split(",")):
    w = os.path.join(base, f"n{n}")
    t0 = time.perf_counter()
    shards = write_corpus(w, n, a.shard_size)
    print(f"N={n:,}: {shards} shards written in {time.perf_counter() - t0:.0f} s", flush=True)
    for stage in ("embed", "cluster", "assign"):
      r = run_stage(stage, w, args)
      rows.append(dict(n=n, shards=shards, stage=stage, samples_per_s=n / r["wall_s"], **r))
      print(f"  {stage:8s} {r['wall_s']:7.1f} s  {n / r['wall_s']:9,.0f} samples/s  "
            f"peak RSS {r['peak_mib']:7.0f} MiB", flush=True)
  print("\n| N | shards | stage | wall s | samples/s | peak RSS MiB |\n|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['n']:,} | {r['shards']} | {r['stage']} | {r['wall_s']:.1f} | "
          f"{r['samples_per_s']:,.0f} | {r['peak_mib']:.0f} |")
  sizes = sorted({r["n"] for r in rows})
  if len(sizes) > 1:
    lo, hi = sizes[0], sizes[-1]
    for stage in ("embed", "cluster", "assign"):
      a_, b_ = ([r["peak_mib"] for r in rows if r["n"] == s and r["stage"] == stage][0]
                for s in (lo, hi))
      print(f"{stage}: peak RSS x{b_ / a_:.2f} from N={lo:,} to N={hi:,} (N x{hi / lo:.0f})")
  with open(os.path.join(base, "scale_sim.json"), "w") as f:
    json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
