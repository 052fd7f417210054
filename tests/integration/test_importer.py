"""The node importer against a real containerd, fed by a real HTTP server (with faults)."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.cli import main
from kiln.containerd import Ctr
from kiln.localengine import Daemon, start_containerd
from kiln.render import PlainLocator, render
from tests.integration.conftest import scratch_context

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


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory, dockerd: Daemon,
          docker_client: docker.DockerClient) -> Path:
    """Two images (one with 300 KiB of random bytes) baked into a dir store, once."""
    folder = tmp_path_factory.mktemp("baked")
    scratch_context(folder / "small", "small")
    scratch_context(folder / "big", "big", 300 << 10)
    (folder / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: small, ref: {REG}/foundation/small:v1, build: small}}\n"
        f"  - {{name: big, ref: {REG}/foundation/big:v1, build: big}}\n"
        f"environments:\n  it:\n    registry: {REG}\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n"
        "    node: {parallel: 2, containerd_timeout: 60}\n")
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = dockerd.address
    try:
        assert main(["bake", "--env", "it", "--config", str(folder / "images.yaml"),
                     "--quiet"]) == 0
    finally:
        if old is None:
            os.environ.pop("DOCKER_HOST")
        else:
            os.environ["DOCKER_HOST"] = old
    return folder


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
    try:
        yield Node(tmp_path, lock, server, containerd)
    finally:
        server.shutdown()


@pytest.fixture
def node(baked: Path, tmp_path: Path, fresh_containerd: Daemon) -> Iterator[Node]:
    yield from make_node(baked, tmp_path, fresh_containerd)


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


def test_imports_every_image_under_its_ref_and_a_rerun_is_a_no_op(node: Node) -> None:
    done = node.run()
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    status = node.status()
    assert status["ok"] is True
    assert {i["state"] for i in status["images"]} == {"imported"}  # type: ignore[union-attr]
    assert "verified sha256" in done.stderr
    requests = len(node.server.requests)

    again = node.run()
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert len(node.server.requests) == requests  # nothing downloaded
    check = node.run("--check")
    assert check.returncode == 0 and "all 2 images present" in check.stderr


def test_a_corrupted_object_is_never_imported(node: Node) -> None:
    big = next(i for i in node.lock.images if i.name == "big")
    blob = node.folder / "store" / big.key
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    done = node.run()
    assert done.returncode == 1
    assert "big: FAILED: sha256 mismatch" in done.stderr
    assert_imported(node, {"small"})
    assert node.status()["ok"] is False
    check = node.run("--check")
    assert check.returncode == 1 and "missing" in check.stderr


def test_server_errors_and_resets_are_retried(node: Node) -> None:
    for image in node.lock.images:
        node.server.faults[image.key] = ["500", "reset", "500"]
    done = node.run()
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    for image in node.lock.images:
        assert node.server.requests.count(image.key) >= 4


def test_gives_up_after_its_retries(node: Node) -> None:
    small = next(i for i in node.lock.images if i.name == "small")
    node.server.faults[small.key] = ["500"] * 20
    done = node.run(env={"KILN_RETRIES": "3"})
    assert done.returncode == 1
    assert "small: FAILED: download failed after 3 tries" in done.stderr
    assert node.server.requests.count(small.key) == 3
    assert_imported(node, {"big"})


def test_waits_for_containerd(baked: Path, tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="kiln-late-"))
    nodes = make_node(baked, tmp_path, None)
    node = next(nodes)
    started: list[Daemon] = []

    def late() -> None:
        time.sleep(10)
        started.append(start_containerd(base))

    thread = threading.Thread(target=late)
    thread.start()
    try:
        t0 = time.monotonic()
        done = node.run(address=str(base / "containerd.sock"))
        thread.join()
        assert done.returncode == 0, done.stderr
        assert "waiting for containerd" in done.stderr
        assert time.monotonic() - t0 >= 10
        node.containerd = started[0]
        assert_imported(node, {"small", "big"})
    finally:
        thread.join()
        for daemon in started:
            daemon.stop()
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
        nodes.close()


def test_too_little_space_fails_cleanly(node: Node) -> None:
    small_fs = node.folder / "tiny"
    small_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small_fs)],
                   check=True)
    try:
        done = node.run(env={"TMPDIR": str(small_fs)})
        assert done.returncode == 1
        assert "not enough space" in done.stderr
        assert list(small_fs.iterdir()) == []  # nothing partial left
        assert_imported(node, set())
    finally:
        subprocess.run(["umount", str(small_fs)], check=True)


def test_rendered_user_data_passes_cloud_init_schema(node: Node) -> None:
    for path in (node.folder / "dist/it/cloud-init/user-data",):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # over the size limit: cloud-init takes it gzipped
            data = gzip.decompress(data)
        plain = node.folder / "user-data.txt"
        plain.write_bytes(data)
        done = subprocess.run(["cloud-init", "schema", "--config-file", str(plain)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Valid cloud-config" in done.stdout


def test_importer_is_shellcheck_clean() -> None:
    importer = Path(__file__).parents[2] / "templates/import-images.sh"
    done = subprocess.run(["shellcheck", "-s", "sh", str(importer)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout
