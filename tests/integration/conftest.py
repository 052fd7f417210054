"""Real engines for the integration tier: a private containerd and dockerd, and S3 over HTTP.

Everything lives under a fresh temp folder (short path: unix sockets are limited to 108
bytes) and is stopped by PID at the end of the session. These fixtures need root and the
packages .ci/run installs; without them they fail with what is missing rather than skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from kiln import localengine
from kiln.containerd import Ctr


def _require(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the integration tests start containerd and dockerd: run them as root "
                    "(`make unit` runs the fast tier alone)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run .ci/run, or apt-get install them")


@pytest.fixture(scope="session")
def engine_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kiln-it-"))
    yield root
    subprocess.run(["umount", "-R", "-l", str(root)], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def containerd(engine_root: Path) -> Iterator[localengine.Daemon]:
    _require("containerd", "ctr")
    daemon = localengine.start_containerd(engine_root / "engine")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def dockerd(engine_root: Path, containerd: localengine.Daemon) -> Iterator[localengine.Daemon]:
    _require("dockerd")
    daemon = localengine.start_dockerd(engine_root / "engine", containerd)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def docker_client(dockerd: localengine.Daemon) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=dockerd.address, timeout=300)
    yield client
    client.close()


@pytest.fixture
def ctr(containerd: localengine.Daemon) -> Ctr:
    return Ctr(str(containerd.socket))


@pytest.fixture
def fresh_containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localengine.Daemon]:
    """A containerd of the test's own, empty, for tests that check what was imported."""
    _require("containerd", "ctr")
    base = Path(tempfile.mkdtemp(prefix="kiln-ctd-"))
    daemon = localengine.start_containerd(base)
    yield daemon
    daemon.stop()
    subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(engine_root: Path) -> Iterator[str]:
    """moto's S3 API as a separate process over real HTTP on loopback."""
    port = free_port()
    log = (engine_root / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start: see {engine_root / 'moto.log'}")
            time.sleep(0.2)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


BUSYBOX = Path(shutil.which("busybox") or "/bin/busybox")


def scratch_context(folder: Path, marker: str, size: int = 0) -> Path:
    """A FROM scratch build context: busybox plus a marker file (and ``size`` extra bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, folder / "busybox")
    (folder / "marker").write_text(marker)
    extra = ""
    if size:
        (folder / "payload").write_bytes(os.urandom(size))
        extra = "COPY payload /payload\n"
    (folder / "Dockerfile").write_text(
        f"FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\n{extra}"
        'CMD ["/bin/busybox", "true"]\n'
    )
    return folder
