"""Object stores on localhost for tests: a GCS emulator and moto's S3 server.

Each context manager starts the server from the PyPI package in a child
process, points this process's clients at it through their environment
variables (and yields them, for child processes), and stops it on exit.
"""

import contextlib
import copy
import os
import subprocess
import sys
import time
import urllib.request

import portpicker

HERE = os.path.dirname(os.path.abspath(__file__))


def _wait_http(url: str, what: str):
  for _ in range(150):
    try:
      urllib.request.urlopen(url, timeout=1)
      return
    except urllib.error.HTTPError:
      return          # it answers
    except OSError:
      time.sleep(0.2)
  raise RuntimeError(f"{what} did not start at {url}")


@contextlib.contextmanager
def _environ(env: dict):
  """env in os.environ, and in fsspec's config if fsspec already read the environment."""
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  config = sys.modules.get("fsspec.config")
  saved = copy.deepcopy(config.conf) if config else None
  if config:
    config.set_conf_env(config.conf)
  try:
    yield env
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    if config:
      config.conf.clear()
      config.conf.update(saved)


@contextlib.contextmanager
def gcs_emulator(bucket: str, patched: bool = True, deny: str = ""):
  """gcp-storage-emulator (tests/helpers/gcs_emulator.py) with one bucket.

  patched=False: downloads and preconditions as the released emulator serves
  them, without the generation headers TensorStore needs (Orbax saves fail).
  deny: uploads of objects under this prefix are refused (403).
  """
  port = portpicker.pick_unused_port()
  url = f"http://127.0.0.1:{port}"
  flags = ([] if patched else ["--unpatched"]) + (["--deny", deny] if deny else [])
  server = subprocess.Popen([sys.executable, os.path.join(HERE, "gcs_emulator.py"), str(port),
                             bucket, *flags], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  # gcsfs: STORAGE_EMULATOR_HOST (and no gRPC bucket probe); TensorStore (Orbax):
  # TENSORSTORE_GCS_HTTP_URL and a fixed token instead of credentials.
  env = dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
             GOOGLE_AUTH_TOKEN_FOR_TESTING="test", GOOGLE_CLOUD_PROJECT="test",
             GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
  try:
    _wait_http(f"{url}/storage/v1/b/{bucket}", "the GCS emulator")
    with _environ(env):
      yield env
  finally:
    server.terminate()
    server.wait(timeout=30)


@contextlib.contextmanager
def moto_s3(bucket: str):
  """moto_server (S3 API) with one bucket; s3fs reads FSSPEC_S3_ENDPOINT_URL."""
  exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
  port = portpicker.pick_unused_port()
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  env = dict(FSSPEC_S3_ENDPOINT_URL=url, AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="test",
             AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
  try:
    _wait_http(url, "moto_server")
    with _environ(env):
      import s3fs
      s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
      yield env
  finally:
    server.terminate()
    server.wait(timeout=30)
