"""gcp-storage-emulator (PyPI) with a listen backlog deep enough for TensorStore.

The emulator serves requests one at a time on http.server.HTTPServer, whose
listen backlog is socketserver's default of 5. TensorStore (under Orbax) opens
dozens of connections at once while two hosts also read shards; connections
past the backlog are dropped and retried with exponential backoff, and a
multi-host checkpoint save then stalls for minutes. A deeper backlog keeps
the one-at-a-time server and loses nothing.

  python tests/helpers/gcs_emulator.py PORT BUCKET
"""

import logging
import os
import sys
from http import server

from gcp_storage_emulator import server as emulator_server


class _DeepBacklogServer(server.HTTPServer):
  request_queue_size = 1024


def main(port: int, bucket: str):
  if os.environ.get("GCS_EMULATOR_LOG"):   # every request, for debugging
    logging.basicConfig(level=logging.INFO, filename=os.environ["GCS_EMULATOR_LOG"])
  emulator_server.server.HTTPServer = _DeepBacklogServer   # the module APIThread builds on
  emulator_server.create_server("127.0.0.1", port, in_memory=True,
                                default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
