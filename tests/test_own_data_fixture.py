"""A researcher's own data, made by img2dataset and clip-benchmark's writer, read by ours.

The references are independent of our readers: the URL list we served (what
each URL shows and says), img2dataset's own report (its parquet and
_stats.json files), and the bytes we handed clip-benchmark's writer.
"""

import math
import os

import numpy as np
import pytest

from mode_jax.data.io import clip_benchmark as cb
from mode_jax.data.io import loader, shard_index
from mode_jax.data.io import webdataset as wds
from mode_jax.eval import tasks as tasks_lib
from tests.helpers import own_data


def _shard_ids(pattern):
  return [int(os.path.basename(p).split(".")[0]) for p in wds.expand_shards(pattern)]


def test_img2dataset_writes_tars_parquets_and_stats_and_reports_the_broken_urls(own_crawl):
  pattern, stats = own_crawl
  site = stats["site"]
  out = os.path.dirname(pattern)
  n_rows = len(site.good) + len(site.missing) + len(site.corrupt)
  per_shard = own_data.CRAWL["per_shard"]
  assert stats["shards"] == list(range(math.ceil(n_rows / per_shard))) == _shard_ids(pattern)
  for i in stats["shards"]:
    for suffix in (".tar", ".parquet", "_stats.json"):
      assert os.path.isfile(os.path.join(out, f"{i:05d}{suffix}"))
  assert not os.path.exists(os.path.join(out, "_tmp"))   # img2dataset cleans up locally
  assert (stats["count"], stats["successes"], stats["failed_to_download"],
          stats["failed_to_resize"]) == (n_rows, len(site.good), len(site.missing),
                                         len(site.corrupt))
  failed = {os.path.basename(r["url"]): r["status"] for r in stats["samples"]
            if r["status"] != "success"}
  assert failed == {**{os.path.basename(p): "failed_to_download" for p, _ in site.missing},
                    **{os.path.basename(p): "failed_to_resize" for p, _ in site.corrupt}}


def test_iter_shard_reads_each_success_with_its_caption_and_picture(own_crawl):
  pattern, stats = own_crawl
  url_of = {r["key"]: r["url"] for r in stats["samples"] if r["status"] == "success"}
  read, st = [], wds.Stats()
  for shard in wds.expand_shards(pattern):
    read += list(wds.iter_shard(shard, stats=st))
  assert st.samples == stats["successes"] == len(read) and st.skipped == 0
  assert sorted(s["__key__"] for s in read) == sorted(url_of)   # tar order: download order
  # the caption our URL list gave that URL, once (img2dataset writes it to .txt and .json)
  assert all(s["texts"] == [stats["captions"][url_of[s["__key__"]]]] for s in read)
  served = {r["url"] for r in stats["samples"]}
  bad = {u for u in served if u.rsplit("/", 2)[-1].startswith(("gone-", "corrupt-"))}
  assert bad and not bad & set(url_of.values())
  # each image decodes, is the requested size, and is nearest to the picture its URL served
  size = own_data.CRAWL["image_size"]
  refs = {p: own_data.border_resize(s.draw(), size).astype(np.float32)
          for p, s in stats["site"].good}
  names = list(refs)
  stack = np.stack([refs[p] for p in names])
  for s in read:
    assert s["image"].shape == (size, size, 3) and s["image"].dtype == np.uint8
    mad = np.abs(stack - s["image"].astype(np.float32)).mean(axis=(1, 2, 3))
    assert names[int(mad.argmin())] == url_of[s["__key__"]].split("/", 3)[3]
    assert mad.min() < 4.0, mad.min()   # JPEG q95, cv2 area vs PIL box (measured <= 2.6)


def test_shard_index_spans_read_back_the_samples_img2dataset_wrote(own_crawl):
  pattern, stats = own_crawl
  ok = {r["key"]: r for r in stats["samples"] if r["status"] == "success"}
  index = shard_index.build_index(wds.expand_shards(pattern), None, threads=2, progress=False)
  assert len(index) == stats["successes"] and index.stats.skipped == 0
  reader = index.reader()
  for i in range(len(index)):
    key, members = reader.read(i)
    assert key == index.key(i) and set(members) == {"jpg", "txt", "json"}
    assert members["txt"].decode() == ok[key]["caption"]
  assert sorted(index.key(i) for i in range(len(index))) == sorted(ok)


def test_clip_benchmark_writer_folder_opens_as_a_suite_task(own_cb_root):
  root, name = own_cb_root, own_data.CB_TASK["name"]
  tf = cb.open_task(os.path.join(root, name))
  assert tf.kind == "zeroshot"
  assert tf.classnames == list(own_data.SHAPES) and tf.templates == list(own_data.CB_TEMPLATES)
  task = tasks_lib.suite_task(root, {"name": name, "folders": (name,)})
  assert isinstance(task, tasks_lib.Task), task
  assert task.classnames == list(own_data.SHAPES) and task.train_pattern is None
  spec = own_data.CB_TASK
  ds = own_data.cb_dataset(per_class=spec["per_class"], seed=spec["seed"])
  n, per_shard = len(ds), spec["per_shard"]
  assert len(wds.expand_shards(task.pattern)) == math.ceil(n / per_shard)
  # the writer's bytes are the ones we gave it, in order, with their labels
  index = shard_index.build_index(wds.expand_shards(task.pattern), None, progress=False)
  assert len(index) == n
  reader = index.reader()
  for i in range(n):
    key, members = reader.read(i)
    assert key == f"s{i:07d}" and members["png"] == ds[i][0]
    assert int(members["cls"]) == ds[i][1]
  # and the evaluation reader yields them as labelled images
  cfg = loader.default_config()
  cfg.resolution, cfg.num_workers = 32, 0
  labels = []
  for b in loader.eval_batches(cfg, None, task.pattern, batch_size=8):
    assert b["valid"][b["index"] >= 0].all()
    labels += b["label"][b["valid"]].tolist()
  assert labels == [ds[i][1] for i in range(n)]


@pytest.mark.parametrize("scheme", ["s3"])
def test_img2dataset_writes_to_an_object_store(tmp_path, scheme):
  """img2dataset's fsspec output on moto's S3 server (from a CSV URL list); our readers
  read it there."""
  from tests.helpers import stores
  with stores.moto_s3("crawl"):
    pattern, stats = own_data.make_img2dataset_shards(
        tmp_path, n=8, per_shard=6, output=f"{scheme}://crawl/shards", url_list="urls.csv")
    assert pattern == f"{scheme}://crawl/shards/{{00000..00001}}.tar"
    read = [s for p in wds.expand_shards(pattern) for s in wds.iter_shard(p)]
    assert len(read) == stats["successes"] == 8
    url_of = {r["key"]: r["url"] for r in stats["samples"]}
    assert all(s["texts"] == [stats["captions"][url_of[s["__key__"]]]] for s in read)
