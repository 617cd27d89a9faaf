"""Bytes an object store sends, and captions/s, to read training captions without images.

The embed stage and the cluster summaries need each shard's (key, captions), not
its images. Read from a tar (images skipped with seeks) that is a ranged GET per
member header and per caption member; from img2dataset's `<stem>.parquet` beside
the tar it is a footer and the key/status/caption column chunks
(mode_jax/data/io/shard_captions.py). This writes synthetic img2dataset shards
(tests/helpers/img2dataset_shards.py: its tar and parquet layout, web-size
666x500 JPEGs from benchmarks/loader_throughput.py, 84 kB mean; captions of
6-16 random words, URLs, 20% failed rows in the parquet only), serves them
from the GCS emulator or moto's S3 server on localhost (tests/helpers/stores.py),
and reads all captions through a TCP proxy that counts every byte each way
(HTTP headers included: what crosses the wire). Run 1: with the parquet files
(shard_captions' default; the first shard's tar is also read, for the check).
Run 2: the parquet files deleted, so every shard is read from its tar.

Requests are counted as HTTP request heads sent. The emulators answer in
milliseconds; a real bucket takes ~10-50 ms per request, so there the
request counts, not the emulators' captions/s, set the time. An img2dataset
tar costs ~11 requests per sample without its images: Python's tarfile
writes each member (jpg, json, txt) with a PAX header for its float mtime, so
a member is a PAX header, its record, the ustar header and the data.

Measured here (2 CPU cores shared with other jobs):
  GCS emulator, --shards 4 --rows 600: 1,939 captions, tars 174.7 MB, parquets 383 kB
  read                              bytes moved  per caption  requests  captions/s
  tars (parquet files deleted)       20,372,526       10,507    21,333          16
  parquet (first shard: + its tar)    5,875,913        3,030     5,531          43
  tars, shards 2-4                   15,098,008       10,507    15,810          17
  parquet, shards 2-4                   450,858          314         6      15,820
  -> 3.5x fewer bytes for the run, 33x (and 2,635x fewer requests) per caption after
     the checked shard.
  moto S3, --shards 4 --rows 300: 973 captions, tars 87.7 MB, parquets 194 kB
  tars (parquet files deleted)       20,792,698       21,370    10,707           3
  parquet (first shard: + its tar)    5,837,478        5,999     2,825          16
  tars, shards 2-4                   15,321,882       21,369     7,890           3
  parquet, shards 2-4                   275,266          384         6       4,889
  -> 3.6x for the run, 56x bytes (1,315x requests) per caption after the checked shard.
The parquet reads move 1.6-1.9x the parquet files here: Arrow reads the last
64 KiB for the footer, then the key/status/caption chunks as one coalesced
range (img2dataset writes a row group per 100 rows, so the skipped columns
between them are holes under Arrow's 8 KiB coalescing limit) that overlaps
it. At img2dataset's default 10,000 rows per shard the same reads come to
1.05x the file in 3 requests (a local file behind a counting reader).

  python benchmarks/caption_read.py [--store gcs|s3] [--shards 4] [--rows 600]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.loader_throughput import SIZE, web_jpeg  # noqa: E402
from mode_jax import workdir as wd  # noqa: E402
from mode_jax.data.io import shard_captions  # noqa: E402
from mode_jax.data.io import webdataset as wds  # noqa: E402
from tests.helpers import img2dataset_shards as i2d, stores  # noqa: E402

BUCKET = "captions-bench"


class CountingProxy:
  """Forwards 127.0.0.1:<port> to a server, counting the bytes each way and request heads."""

  def __init__(self, target: tuple[str, int]):
    self.target = target
    self.down = self.up = self.requests = 0
    self._lock = threading.Lock()
    self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
    self.port = self.sock.getsockname()[1]
    threading.Thread(target=self._accept, daemon=True).start()

  def reset(self) -> None:
    with self._lock:
      self.down = self.up = self.requests = 0

  def _accept(self) -> None:
    while True:
      try:
        client, _ = self.sock.accept()
      except OSError:
        return
      server = socket.create_connection(self.target)
      threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
      threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

  def _pump(self, src, dst, way: str) -> None:
    tail = b""
    try:
      while data := src.recv(1 << 16):
        dst.sendall(data)
        with self._lock:
          setattr(self, way, getattr(self, way) + len(data))
          if way == "up":   # reads send no bodies: one blank line ends each request head
            self.requests += (tail + data).count(b"\r\n\r\n")
        tail = data[-3:]
    except OSError:
      pass
    finally:
      for s in (src, dst):
        try:
          s.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass


def caption(rng) -> str:
  words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 10)))
           for _ in range(rng.integers(6, 17))]
  return " ".join(words).capitalize()


def write_local(d: str, shards: int, rows: int, failed: float) -> tuple[list[str], float]:
  """img2dataset-style shards in d; returns the tar paths and the mean JPEG size."""
  rng = np.random.default_rng(0)
  jpegs = [web_jpeg(rng, *SIZE) for _ in range(40)]   # reused: encoding is slow
  tars = []
  for s in range(shards):
    inputs = []
    for i in range(rows):
      status = ("success" if rng.random() >= failed else
                str(rng.choice(["failed_to_download", "failed_to_resize"])))
      inputs.append(dict(caption=caption(rng), status=status,
                         url=f"https://img{i % 7}.example.com/p/{rng.integers(1 << 40):x}/{i}.jpg",
                         jpg=jpegs[(s * rows + i) % len(jpegs)], size=SIZE,
                         original=(2 * SIZE[0], 2 * SIZE[1]), error_message="timed out"))
    tars.append(i2d.write_shard(d, s, inputs, rng.permutation(rows).tolist())[0])
  return tars, float(np.mean([len(j) for j in jpegs]))


def point_clients_at(proxy_url: str, store: str) -> None:
  """This process's fsspec clients talk to the proxy from now on (fresh instances)."""
  import fsspec
  if store == "gcs":
    os.environ["STORAGE_EMULATOR_HOST"] = proxy_url
    import gcsfs
    gcsfs.GCSFileSystem.clear_instance_cache()
  else:
    os.environ["FSSPEC_S3_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"] = proxy_url
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = proxy_url
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()


def clear_caches(store: str) -> None:
  """A fresh client per run: no listing or connection state carried over."""
  if store == "gcs":
    import gcsfs
    gcsfs.GCSFileSystem.clear_instance_cache()
  else:
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()


def read_all(shards: list[str], proxy: CountingProxy, store: str) -> dict:
  """Reads every shard's captions; per shard (captions, bytes moved, requests, seconds)."""
  clear_caches(store)
  proxy.reset()
  reader = shard_captions.ShardCaptions(shards)
  per_shard = []
  for shard in shards:
    t0, b0, r0 = time.perf_counter(), proxy.down + proxy.up, proxy.requests
    keys, _ = reader.read(shard, wds.Stats())
    per_shard.append(np.array([len(keys), proxy.down + proxy.up - b0, proxy.requests - r0,
                               time.perf_counter() - t0]))
  return dict(parquet=reader.parquet, per_shard=np.stack(per_shard))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--store", choices=["gcs", "s3"], default="gcs")
  ap.add_argument("--shards", type=int, default=4)
  ap.add_argument("--rows", type=int, default=600, help="input rows per shard")
  ap.add_argument("--failed", type=float, default=0.2, help="share of failed rows")
  args = ap.parse_args()

  local = tempfile.mkdtemp(prefix="caption_read_")
  tars, jpeg = write_local(local, args.shards, args.rows, args.failed)
  tar_mb = sum(os.path.getsize(t) for t in tars) / 1e6
  pq_sizes = np.array([os.path.getsize(t[:-4] + ".parquet") for t in tars])
  ctx = stores.gcs_emulator(BUCKET) if args.store == "gcs" else stores.moto_s3(BUCKET)
  with ctx as env:
    real = env.get("STORAGE_EMULATOR_HOST") or env["FSSPEC_S3_ENDPOINT_URL"]
    host, port = real.removeprefix("http://").split(":")
    proxy = CountingProxy((host, int(port)))
    point_clients_at(f"http://127.0.0.1:{proxy.port}", args.store)
    scheme = "gs" if args.store == "gcs" else "s3"
    remote = []
    for t in tars:
      for p in (t, t[:-4] + ".parquet"):
        wd.upload(p, f"{scheme}://{BUCKET}/shards/{os.path.basename(p)}")
      remote.append(f"{scheme}://{BUCKET}/shards/{os.path.basename(t)}")
    with_pq = read_all(remote, proxy, args.store)
    for t in remote:
      wd.remove(t[:-4] + ".parquet")
    tar_only = read_all(remote, proxy, args.store)
  assert with_pq["parquet"] and not tar_only["parquet"]
  assert (with_pq["per_shard"][:, 0] == tar_only["per_shard"][:, 0]).all()

  tar, pqt = tar_only["per_shard"], with_pq["per_shard"]
  n = int(tar[:, 0].sum())
  print(f"{args.store} store on localhost through a counting proxy; {args.shards} shards x "
        f"{args.rows} rows ({args.failed:.0%} failed): {n} captions; tars {tar_mb:.1f} MB "
        f"(JPEG mean {jpeg / 1e3:.1f} kB), parquets {pq_sizes.sum() / 1e3:.0f} kB")
  print(f"{'read':<36}{'bytes moved':>13}{'per caption':>13}{'requests':>10}"
        f"{'captions/s':>12}")

  def row(name, part):
    caps, moved, reqs, secs = part.sum(0)
    print(f"{name:<36}{int(moved):>13,}{moved / caps:>13,.0f}{int(reqs):>10,}"
          f"{caps / secs:>12,.0f}")
    return moved / caps

  t_all = row("tars (parquet files deleted)", tar)
  p_all = row("parquet (first shard: + its tar)", pqt)
  print(f"ratio tars / parquet, bytes per caption: {t_all / p_all:.1f}x")
  if args.shards > 1:
    t_rest = row(f"tars, shards 2-{args.shards}", tar[1:])
    p_rest = row(f"parquet, shards 2-{args.shards}", pqt[1:])
    print(f"ratio after the checked shard: {t_rest / p_rest:.0f}x bytes, "
          f"{tar[1:, 2].sum() / pqt[1:, 2].sum():.0f}x requests; parquet bytes moved / "
          f"parquet file size: {pqt[1:, 1].sum() / pq_sizes[1:].sum():.2f}")


if __name__ == "__main__":
  main()
