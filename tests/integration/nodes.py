"""Helpers for node-side tests: a store served over HTTP (with faults), a rendered importer."""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.containerd import Ctr
from kiln.localengine import Daemon
from kiln.render import PlainLocator, render

REG = "registry.example.com"


STALL_LIMIT = 90  # a stalled answer ends after this many seconds (or at teardown)


class FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder with byte ranges. Faults, one per request, in order, per object key:
    "500"; "503" / "503:N" / "429:N" (with Retry-After: N); "reset" (half the body, then a TCP
    reset); "stall" / "stall:N" (headers and the first KiB or N bytes, then nothing); "silent"
    (no answer at all)."""

    server: FaultyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        self.server.requests.append(path)
        self.server.times.setdefault(path, []).append(time.monotonic())
        self.server.ranges.setdefault(path, []).append(self.headers.get("Range"))
        faults = self.server.faults.get(path, [])
        fault = faults.pop(0) if faults else None
        target = Path(self.directory) / path
        if fault == "500":
            self.send_error(500, "injected")
            return
        if fault and fault.split(":")[0] in ("503", "429"):
            code, _, after = fault.partition(":")
            self.send_response(int(code))
            if after:
                self.send_header("Retry-After", after)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")
            return
        if fault == "silent":
            self.server.release.wait(STALL_LIMIT)
            self.close_connection = True
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
        if fault and fault.split(":")[0] == "stall":  # headers and some body, then nothing
            self.wfile.write(body[:int(fault.partition(":")[2] or 1024)])
            self.wfile.flush()
            self.server.release.wait(STALL_LIMIT)
            self.close_connection = True
            return
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
    def __init__(self, folder: Path, port: int = 0) -> None:
        self.faults: dict[str, list[str]] = {}
        self.requests: list[str] = []
        self.times: dict[str, list[float]] = {}  # when each request for a key arrived
        self.ranges: dict[str, list[str | None]] = {}  # each request's Range header
        self.release = threading.Event()  # ends every stalled answer
        super().__init__(("127.0.0.1", port),
                         lambda *a: FaultyHandler(*a, directory=str(folder)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def start(self) -> FaultyServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def gaps(self, key: str) -> list[float]:
        """Seconds between the requests for ``key``, as the server saw them."""
        times = self.times.get(key, [])
        return [b - a for a, b in itertools.pairwise(times)]


@dataclass
class Node:
    """A baked store served over HTTP, the rendered importer, and a fresh containerd."""

    folder: Path
    lock: lockfile.Lock
    server: FaultyServer
    containerd: Daemon | None
    env: config_mod.Environment | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def ctr(self) -> Ctr:
        assert self.containerd is not None
        return Ctr(str(self.containerd.socket))

    def argv(self, *args: str) -> list[str]:
        """The rendered importer's command line, with its status file and ``args``."""
        return ["sh", str(self.folder / "dist/it/node/import-images"),
                "--status", str(self.folder / "status.json"), *args]

    def run(self, *args: str, env: dict[str, str] | None = None,
            address: str | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args), env=self.environ(env, address), capture_output=True, text=True,
            timeout=timeout, check=False)
        self.logs.append(done.stderr)
        return done

    def environ(self, env: dict[str, str] | None = None, address: str | None = None
                ) -> dict[str, str]:
        sock = address or (str(self.containerd.socket) if self.containerd else "")
        return {**os.environ, "CONTAINERD_ADDRESS": sock, **(env or {})}

    def render(self, base_url: str | None = None, **node: Any) -> None:
        """Render the node files again: another store URL, other node settings."""
        assert self.env is not None
        env = replace(self.env, node=replace(self.env.node, **node))
        render(env, self.lock, self.folder / "dist", PlainLocator(base_url or self.server.url))

    def status(self) -> dict[str, object]:
        return dict(json.loads((self.folder / "status.json").read_text()))


def make_node(baked: Path, tmp_path: Path, containerd: Daemon | None) -> Iterator[Node]:
    shutil.copytree(baked / "store", tmp_path / "store")
    shutil.copy(baked / "images.yaml", tmp_path / "images.yaml")
    cfg = config_mod.load(tmp_path / "images.yaml")
    env = cfg.environment("it")
    lock = lockfile.read(baked / "dist/it/images.lock.json")
    assert lock is not None
    server = FaultyServer(tmp_path / "store").start()
    render(env, lock, tmp_path / "dist", PlainLocator(server.url))
    shutil.copy(baked / "dist/it/images.lock.json", tmp_path / "dist/it/images.lock.json")
    try:
        yield Node(tmp_path, lock, server, containerd, env)
    finally:
        server.stop()


def curl_spy(folder: Path) -> tuple[dict[str, str], Path]:
    """PATH with a `curl` that appends its arguments to a file, then runs the real curl (stdin
    and all): what `ps` would have shown of each download."""
    bin_dir = folder / "curl-spy"
    bin_dir.mkdir(exist_ok=True)
    argv_log = folder / "curl-argv.log"
    real = shutil.which("curl")
    assert real is not None
    (bin_dir / "curl").write_text(
        f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> "{argv_log}"\nexec "{real}" "$@"\n')
    (bin_dir / "curl").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, argv_log


def assert_imported(node: Node, names: set[str]) -> None:
    """Each image of ``names`` is in containerd under its ref and under repo@<digest>, both
    on the lock's manifest (whose config is the lock's image ID) and pinned; the others are
    under neither name."""
    images = node.ctr.images()
    for entry in node.lock.images:
        assert entry.digest_ref is not None
        if entry.name in names:
            for name in (entry.ref, entry.digest_ref):
                assert name in images, node.logs[-1]
                found = images[name]
                assert found.manifest_digest == entry.manifest_digest
                assert node.ctr.image_id(found.manifest_digest) == entry.image_id
                assert found.labels.get("io.cri-containerd.pinned") == "pinned"
        else:
            assert entry.ref not in images and entry.digest_ref not in images
