"""Stage `embed`: the training shards' captions -> embed/<stem>.npz + embed/meta.json.

docs/method.md step 1: one caption per pair (a seeded pick when a sample has
several) is embedded with a frozen sentence encoder (config.embed, see
mode_jax/text/encoders.py) and L2-normalised; the cluster stage reads these
rows. Formats: mode_jax/workdir.py. Captions come from img2dataset's parquet
files when every shard has one (no image bytes move), else from the tars
(data/io/shard_captions.py).

Shards come from config.input.shards (a pattern or list, local or remote;
relative = inside the workdir). Resumable: npz files are written atomically
(mode_jax.workdir) and a shard whose npz is up to date is skipped. Multi-host:
process i embeds shards i::process_count, batches split over its local
devices, and writes embed/<stem>.npz for those shards only plus
embed/hosts/process-<i>-of-<n>.json (what it read and wrote); process 0
writes meta.json. Distinct captions are encoded once across shards while
they fit in `cache_size` (memory stays bounded: later ones are encoded per
shard).

Provenance (mode_jax/provenance.py): each embed/<stem>.npz records the
content digest of the shard its captions came from and the encoder's
fingerprint with the caption keys (config.input.caption_keys, the fields
training reads captions from); a file whose shard bytes, encoder or caption
keys changed is embedded again,
the others are kept, and files of shards no longer in the data are moved to
<workdir>/stale/. embed/manifest.json lists the files in shard order: what
`cluster` reads.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from tqdm import tqdm

from mode_jax import distributed
from mode_jax import provenance
from mode_jax import workdir as wd
from mode_jax.data.io import digests, loader, shard_captions
from mode_jax.data.io import webdataset as wds
from mode_jax.text import captions, encoders

log = logging.getLogger(__name__)


def run(config, workdir: str) -> dict:
  """Embeds one caption per sample of this host's share of config.input.shards."""
  shards = config.input.shards if "input" in config else wd.TRAIN_SHARDS
  keys = (config.input.get("caption_keys") if "input" in config else None) or \
      ",".join(wds.CAPTION_KEYS)
  return _embed(config.get("embed"), workdir, shards, tuple(keys.split(",")))


def _stamp(path: str) -> tuple[str, str] | None:
  """(source digest, encoder fingerprint and caption keys) an embed file records, reading
  those two small members only (ranged reads on an object store, never the embeddings)."""
  with wd.open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
    if "source" not in z.files or "encoder" not in z.files:
      return None
    return str(z["source"]), str(z["encoder"])


def _shard_outputs(shards: Sequence[str], workdir: str) -> dict[str, str]:
  """shard -> embed/<stem>.npz; two shards with one stem would overwrite each other."""
  out, seen = {}, {}
  for shard in shards:
    stem = wd.shard_stem(shard)
    if stem in seen:
      raise ValueError(f"shards {seen[stem]} and {shard} share the name {stem!r}: embed/ and "
                       "assign/ files are named by shard; rename one")
    seen[stem] = shard
    out[shard] = wd.path(workdir, "embed", stem + ".npz")
  return out


def _embed(cfg, workdir: str, shards: str | Sequence[str],
           caption_keys: Sequence[str] = wds.CAPTION_KEYS) -> dict:
  cfg = encoders.resolve_config(cfg)
  try:
    shard_list = loader.shard_paths(shards, workdir)
  except FileNotFoundError:
    raise wd.MissingInput(loader.describe_shards(shards, workdir), "prepare") from None
  target = _shard_outputs(shard_list, workdir)
  out_dir = wd.path(workdir, "embed")
  meta_path = wd.path(out_dir, "meta.json")
  enc_fp = encoders.fingerprint(cfg)
  made_with = provenance.digest([enc_fp, list(caption_keys)])   # each file's recipe
  reader = shard_captions.ShardCaptions(shard_list,   # img2dataset's parquet when every shard
                                        caption_keys=caption_keys)
  caption_files = {s: shard_captions.parquet_beside(s) if reader.parquet else s  # has one
                   for s in shard_list}
  got = digests.file_digests(list(caption_files.values()), workdir)
  sources = {s: got[f] for s, f in caption_files.items()}   # what the captions come from
  stems = [wd.shard_stem(s) for s in shard_list]
  decision = provenance.decide(
      workdir, "embed", "embed", {"embed": encoders.what_fields(cfg),
                                  "input.caption_keys": list(caption_keys)},
      {"data": provenance.Input(provenance.digest([[wd.shard_stem(s), sources[s]]
                                                   for s in shard_list]),
                                {"shards": len(shard_list)}, "training captions"),
       "encoder": provenance.Input(encoders.weights_fingerprint(cfg), {},
                                   "sentence encoder weights")},
      outputs_exist=bool(wd.glob(wd.path(out_dir, "*.npz"))))
  stale = [(f, workdir) for f in wd.glob(wd.path(out_dir, "*.npz"))
           if wd.basename(f)[:-4] not in set(stems)]   # shards no longer in the data

  def up_to_date(shard) -> bool:   # made from this shard's bytes with this encoder
    if not wd.exists(target[shard]):
      return False
    stamp = _stamp(target[shard])
    return stamp == (sources[shard], made_with)

  mine = distributed.share(shard_list)
  pending = [s for s in mine if not up_to_date(s)]
  if distributed.is_primary() and not decision.todo:
    print(f"embed: up to date ({len(shard_list)} shards)")
  if distributed.is_primary() and decision.todo:
    print(provenance.say("embed", decision, f"embedding the captions of shards whose bytes or "
                         f"encoder changed ({len(pending)} of {len(mine)} here)"))
  distributed.on_primary("embed start", lambda: provenance.start(
      workdir, "embed", decision, stale=stale))
  stats = dict(shards=len(mine), skipped_done=len(mine) - len(pending), samples=0,
               no_caption=0, no_image=0, truncated_shards=0, encoded=0)
  encoder = encoders.make_encoder(cfg) if pending or not wd.exists(meta_path) else None
  if encoder is not None and distributed.is_primary():
    wd.write_json(meta_path, dict(encoder=cfg.encoder, dim=int(encoder.dim), dtype=cfg.dtype,
                                  fingerprint=enc_fp))

  bar = tqdm(desc="embed", unit="sample", disable=not pending)
  seen: dict[str, np.ndarray] = {}   # caption -> embedding, across shards, at most cache_size
  for shard in pending:
    st = wds.Stats()
    keys, cands = reader.read(shard, st)
    if st.truncated_shards or st.unreadable_shards:
      stats["truncated_shards"] += 1
      log.warning("embed: %s is truncated or corrupt; kept %d samples before the break",
                  shard, len(keys))
    texts = [captions.pick_caption(t, k, cfg.seed) for k, t in zip(keys, cands)]
    # Web and templated captions repeat: each distinct string is encoded once
    # (the encoder is deterministic, so rows are identical either way).
    here: dict[str, np.ndarray] = {}   # this shard's captions that are not in `seen`
    new = [t for t in dict.fromkeys(texts) if t not in seen]
    for i in range(0, len(new), cfg.chunk):
      chunk = new[i:i + cfg.chunk]
      for t, e in zip(chunk, encoder.encode(chunk, batch_size=cfg.batch_size)):
        if len(seen) < cfg.cache_size:
          seen[t] = e
        else:
          here[t] = e
      stats["encoded"] += len(chunk)
    emb = np.stack([seen[t] if t in seen else here[t] for t in texts]) if texts else \
        np.zeros((0, encoder.dim), np.float32)
    bar.update(len(texts))
    wd.save_npz(target[shard], keys=np.asarray(keys, dtype=str), emb=emb.astype(cfg.dtype),
                source=np.asarray(sources[shard]), encoder=np.asarray(made_with))
    stats["samples"] += len(texts)
    stats["no_caption"] += st.missing_captions
    stats["no_image"] += st.missing_images
  bar.close()
  if stats["no_caption"] or stats["no_image"]:
    log.warning("embed: skipped %d samples without a caption and %d without an image",
                stats["no_caption"], stats["no_image"])
  distributed.host_report(out_dir, **stats, read=[wd.shard_stem(s) for s in pending],
                          captions_from="parquet" if reader.parquet else "tar",
                          parquet_fallbacks=reader.fallbacks)
  distributed.barrier("embed")
  if decision.todo:
    distributed.on_primary("embed finish", lambda: provenance.finish(
        workdir, "embed", decision, files=[f"{stem}.npz" for stem in stems],
        encoder=cfg.encoder))
  return stats
