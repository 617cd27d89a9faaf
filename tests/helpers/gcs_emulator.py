"""gcp-storage-emulator (PyPI) patched to answer as GCS does where TensorStore looks.

Where the released emulator differs from GCS, and what that did to Orbax:

- Downloads carry no `x-goog-generation` / `x-goog-metageneration` headers.
  TensorStore's GCS driver (kvstore/gcs_http) reads an object's generation
  from them (`SetObjectMetadataFromHeaders`: 0 when absent) and rejects
  generation 0 when it next reads the object conditionally
  (`IsValidStorageGeneration`: "Malformed StorageGeneration"). OCDBT reads its
  manifest back that way during a save of tens of arrays, so such saves fail
  in Orbax's background thread; on a pod the other hosts then poll for files
  the primary never writes (10 minutes).
- Generation preconditions are ignored. TensorStore writes a manifest with
  ifGenerationMatch (0: only if absent) and re-reads it with
  ifGenerationNotMatch; GCS answers 412 and 304 (no body, so no headers
  needed), and so does this server. Two writers of one manifest then fail
  here as on GCS instead of silently overwriting each other.
- The server answers one request at a time on http.server.HTTPServer, whose
  listen backlog is socketserver's default of 5. TensorStore opens dozens of
  connections at once while two hosts also read shards; connections past the
  backlog are dropped and retried with exponential backoff, and a multi-host
  save then stalls for minutes. A deeper backlog keeps the one-at-a-time
  server and loses nothing.

`--unpatched` keeps the first two as released (tests show the failure).
`--deny PREFIX` answers 403 to every upload of an object under PREFIX: a save
that fails the same way on every run, whatever the load on the machine.

  python tests/helpers/gcs_emulator.py PORT BUCKET [--unpatched] [--deny PREFIX]
"""

import logging
import os
import sys
from http import HTTPStatus, server

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


class _DeepBacklogServer(server.HTTPServer):
  request_queue_size = 1024


def _generation(storage, bucket: str, name: str):
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return None


def _object_name(request):
  return request.params.get("object_id") or (request.query.get("name") or [None])[0]


def _failed_precondition(request, storage, read: bool):
  """GCS's answer to ifGenerationMatch / ifGenerationNotMatch, or None to go on."""
  name = _object_name(request)
  if name is None:
    return None
  current = _generation(storage, request.params["bucket_name"], name)
  if "ifGenerationMatch" in request.query:
    if (current or 0) != int(request.query["ifGenerationMatch"][0]):
      return HTTPStatus.PRECONDITION_FAILED
  if read and "ifGenerationNotMatch" in request.query and current is not None:
    if current == int(request.query["ifGenerationNotMatch"][0]):
      return HTTPStatus.NOT_MODIFIED
  return None


def _with_preconditions(handler, read: bool):
  def checked(request, response, storage, *args, **kwargs):
    status = _failed_precondition(request, storage, read)
    if status is not None:
      response.status = status
      return None
    return handler(request, response, storage, *args, **kwargs)
  return checked


def _with_generation_headers(download):
  """Downloads with the object's generation headers, as GCS sends them."""
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      # One request at a time: the object is still the one just served.
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])
  return handler


def _replace(name: str, wrap):
  """objects.<name> and every route to it (routes hold the function itself)."""
  original = getattr(objects, name)
  patched = wrap(original)
  setattr(objects, name, patched)   # module-level calls (objects.get -> download)
  for _, methods in emulator_server.HANDLERS:
    for method, fn in methods.items():
      if fn is original:
        methods[method] = patched


def _denied_under(prefix: str):
  """Uploads under `prefix` refused as GCS refuses a write without permission (403)."""
  def wrap(insert):
    def handler(request, response, storage, *args, **kwargs):
      name = _object_name(request) or ""
      if name.startswith(prefix):
        response.status = HTTPStatus.FORBIDDEN
        return None
      return insert(request, response, storage, *args, **kwargs)
    return handler
  return wrap


def patch():
  """GCS's generation headers on downloads and its generation preconditions."""
  _replace("download", _with_generation_headers)
  _replace("download", lambda f: _with_preconditions(f, read=True))
  _replace("get", lambda f: _with_preconditions(f, read=True))
  _replace("insert", lambda f: _with_preconditions(f, read=False))
  _replace("delete", lambda f: _with_preconditions(f, read=False))


def main(port: int, bucket: str, patched: bool = True, deny: str = ""):
  if os.environ.get("GCS_EMULATOR_LOG"):   # every request, for debugging
    logging.basicConfig(level=logging.INFO, filename=os.environ["GCS_EMULATOR_LOG"])
  emulator_server.server.HTTPServer = _DeepBacklogServer   # the module APIThread builds on
  if patched:
    patch()
  if deny:
    _replace("insert", _denied_under(deny))
  emulator_server.create_server("127.0.0.1", port, in_memory=True,
                                default_bucket=bucket).run()


if __name__ == "__main__":
  flags = sys.argv[3:]
  main(int(sys.argv[1]), sys.argv[2], patched="--unpatched" not in flags,
       deny=flags[flags.index("--deny") + 1] if "--deny" in flags else "")
