"""A quiet static HTTP server for a store folder, on a thread (demo, try, golden, benches)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(folder: Path, host: str = "127.0.0.1", port: int = 0
          ) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` on ``host:port`` (0: any free port) until ``.shutdown()``."""
    server = http.server.ThreadingHTTPServer(
        (host, port), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
