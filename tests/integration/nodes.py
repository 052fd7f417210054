"""Helpers for node-side tests: a store served over HTTP (with faults), a rendered importer."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.containerd import Ctr
from kiln.localengine import Daemon
from kiln.render import PlainLocator, render

REG = "registry.example.com"


class FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with byte ranges; can answer 500 or reset the connection first."""

    server: FaultyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        self.server.requests.append(path)
        faults = self.server.faults.get(path, [])
        fault = faults.pop(0) if faults else None
        target = Path(self.directory) / path
        if fault == "500":
            self.send_error(500, "injected")
            return
        if not target.is_file():
            self.send_error(404)
            return
        data = target.read_bytes()
        start = 0
        header = self.headers.get("Range", "")
        if header.startswith("bytes=") and header.endswith("-"):
            start = int(header[6:-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "reset":  # half the body, then a TCP reset
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(body)


class FaultyServer(http.server.ThreadingHTTPServer):
    def __init__(self, folder: Path) -> None:
        self.faults: dict[str, list[str]] = {}
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0),
                         lambda *a: FaultyHandler(*a, directory=str(folder)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@dataclass
class Node:
    """A baked store served over HTTP, the rendered importer, and a fresh containerd."""

    folder: Path
    lock: lockfile.Lock
    server: FaultyServer
    containerd: Daemon | None
    logs: list[str] = field(default_factory=list)

    @property
    def ctr(self) -> Ctr:
        assert self.containerd is not None
        return Ctr(str(self.containerd.socket))

    def run(self, *args: str, env: dict[str, str] | None = None,
            address: str | None = None) -> subprocess.CompletedProcess[str]:
        sock = address or (str(self.containerd.socket) if self.containerd else "")
        environ = {**os.environ, "CONTAINERD_ADDRESS": sock, **(env or {})}
        done = subprocess.run(
            ["sh", str(self.folder / "dist/it/node/import-images"),
             "--status", str(self.folder / "status.json"), *args],
            env=environ, capture_output=True, text=True, timeout=300, check=False)
        self.logs.append(done.stderr)
        return done

    def status(self) -> dict[str, object]:
        return dict(json.loads((self.folder / "status.json").read_text()))


def make_node(baked: Path, tmp_path: Path, containerd: Daemon | None) -> Iterator[Node]:
    shutil.copytree(baked / "store", tmp_path / "store")
    shutil.copy(baked / "images.yaml", tmp_path / "images.yaml")
    cfg = config_mod.load(tmp_path / "images.yaml")
    env = cfg.environment("it")
    lock = lockfile.read(baked / "dist/it/images.lock.json")
    assert lock is not None
    server = FaultyServer(tmp_path / "store")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    render(env, lock, tmp_path / "dist", PlainLocator(server.url))
    shutil.copy(baked / "dist/it/images.lock.json", tmp_path / "dist/it/images.lock.json")
    try:
        yield Node(tmp_path, lock, server, containerd)
    finally:
        server.shutdown()


def assert_imported(node: Node, names: set[str]) -> None:
    images = node.ctr.images()
    for entry in node.lock.images:
        if entry.name in names:
            assert entry.ref in images, node.logs[-1]
            found = images[entry.ref]
            assert node.ctr.image_id(found.manifest_digest) == entry.image_id
            assert found.labels.get("io.cri-containerd.pinned") == "pinned"
        else:
            assert entry.ref not in images
