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
