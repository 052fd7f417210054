#!/usr/bin/env python3
"""The store behind bench/fleet.py's proxy: which one is a backend, chosen in one place.

A backend holds the run's objects (a kiln store folder with the lock's keys under it) and
gives the URL its objects are read from, in the machine's own network namespace (the proxy
reaches it there):

- ``dir`` (the default): the folder served over HTTP on 127.0.0.1 by this file (`serve`):
  GET and HEAD with byte ranges (curl resumes with `Range: bytes=N-`), sendfile, and
  `Cache-Control: public, max-age=31536000, immutable` (objects are content-addressed);
- ``url``: objects already served at ``--store-url`` under the same keys (a radosgw or MinIO
  bucket with anonymous read, nginx, a cache in front of a store): nothing is started.

- ``radosgw``: a real S3 server (kiln/cephdev.py: a single-node Ceph, objects in the OSD's
  memory) started under the run's folder; the objects are uploaded to a bucket whose policy
  lets anyone GET them (nodes in `url_mode: plain` against a public-read bucket, a real
  deployment's choice for content-addressed objects), and the proxy forwards to radosgw.

    fleetstore.py serve FOLDER [--port 0] [--host 127.0.0.1]    # prints "listening PORT"
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol


class Backend(Protocol):
    def start(self, folder: Path, log: Path) -> str:
        """Serve the objects under ``folder``; the base URL their keys are appended to."""
        ...

    def pid(self) -> int | None:
        """The process serving them, when this backend started one (for its CPU time)."""
        ...

    def stop(self) -> None: ...


class DirBackend:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def start(self, folder: Path, log: Path) -> str:
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "serve", str(folder)], stdout=subprocess.PIPE,
                stderr=err, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "listening":
            self.stop()
            raise RuntimeError(f"the store server did not start: see {log}")
        return f"http://127.0.0.1:{line[1]}/"

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class UrlBackend:
    def __init__(self, url: str) -> None:
        self.url = url if url.endswith("/") else url + "/"

    def start(self, folder: Path, log: Path) -> str:
        return self.url

    def pid(self) -> int | None:
        return None

    def stop(self) -> None:
        pass


class RadosgwBackend:
    BUCKET = "fleet"

    def __init__(self) -> None:
        self.base: Path | None = None

    def start(self, folder: Path, log: Path) -> str:
        from kiln import cephdev

        self.base = folder.parent / "ceph"
        cluster = cephdev.start(self.base, memory=1 << 30)
        client = cluster.client()
        client.create_bucket(Bucket=self.BUCKET)
        client.put_bucket_policy(Bucket=self.BUCKET, Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Sid": "anyone-reads", "Effect": "Allow", "Principal": "*",
                "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{self.BUCKET}/*"]}]}))
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), self.BUCKET, path.relative_to(folder).as_posix())
        log.write_text(f"radosgw {cluster.endpoint}, bucket {self.BUCKET}\n")
        return f"{cluster.endpoint}/{self.BUCKET}/"

    def pid(self) -> int | None:
        from kiln import cephdev

        return cephdev.pids(self.base).get("rgw") if self.base else None

    def stop(self) -> None:
        from kiln import cephdev

        if self.base is not None:
            cephdev.stop(self.base)


def backend(name: str, url: str | None) -> Backend:
    """The one place a store backend is chosen."""
    if url:
        return UrlBackend(url)
    if name == "dir":
        return DirBackend()
    if name == "radosgw":
        return RadosgwBackend()
    raise SystemExit(f"fleet: unknown store backend {name!r} (dir, radosgw, or --store-url URL)")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = Path(".")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        path = (self.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-") and ranged[6:-1].isdigit():
            start = int(ranged[6:-1])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.end_headers()
        if body:
            self.wfile.flush()
            with path.open("rb") as src:
                offset = start
                while offset < size:
                    sent = os.sendfile(self.connection.fileno(), src.fileno(), offset,
                                       size - offset)
                    if sent == 0:
                        break
                    offset += sent


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # the listen backlog: a rack connects at once


def serve(folder: Path, port: int, host: str = "127.0.0.1") -> None:
    RangeHandler.root = folder.resolve()
    server = Server((host, port), RangeHandler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("serve",))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.folder, args.port, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
