"""A quiet static HTTP server for a store folder, on a thread (demo, try, golden, benches)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Any


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """The body by sendfile(2): the kernel copies it, this process does not (a bench's
        store would otherwise spend the node's CPU, here on the same cores)."""
        if outputfile is self.wfile and hasattr(source, "fileno"):
            self.connection.sendfile(source)
        else:
            super().copyfile(source, outputfile)


def serve(folder: Path, host: str = "127.0.0.1", port: int = 0
          ) -> http.server.ThreadingHTTPServer:
    """Serve ``folder`` on ``host:port`` (0: any free port) until ``.shutdown()``."""
    server = http.server.ThreadingHTTPServer(
        (host, port), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
