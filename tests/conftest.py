"""Test setup: 8 fake CPU devices so sharding tests run on any machine.

Must run before JAX initialises its backends, hence at conftest import time.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# The persistent compilation cache, as launch.py uses it: the many small pipelines of the
# suite compile the same steps (a fresh process compiles once per shape, then reads).
jax.config.update("jax_compilation_cache_dir",
                  os.path.expanduser(os.environ.get("MODE_JAX_CACHE", "~/.cache/mode_jax/xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Session fixtures own_crawl and own_cb_root: a researcher's own crawl (img2dataset) and
# CLIP_benchmark task folder, made by those tools when a test first asks for them.
pytest_plugins = ("tests.helpers.own_data",)

# The suite runs on every core with pytest-xdist (pytest.ini: -n auto --dist loadfile: a
# file's tests stay on one worker, so its module fixtures are built once). Files go out in
# collection order, so the long ones are collected first and the short ones fill in behind
# them; the figures are their seconds in a serial run on 2 cores (the --durations list).
LONG_FILES = {
    "test_pod_rehearsal.py": 346, "test_incremental.py": 230, "test_pipeline.py": 160,
    "test_distributed.py": 120, "test_object_store.py": 110, "test_own_data.py": 70,
    "test_launch.py": 60, "test_models.py": 60,
}


def pytest_collection_modifyitems(session, config, items):
  def long_first(item):
    return -LONG_FILES.get(os.path.basename(str(item.path)), 0)
  items.sort(key=long_first)   # stable: the order within a file is kept
