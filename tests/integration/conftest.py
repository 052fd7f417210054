"""Real engines for the integration tier: a private containerd and dockerd, a Ceph radosgw
(real S3 over HTTP) and a docker-registry.

Everything lives under a fresh temp folder (short path: unix sockets are limited to 108
bytes) and is stopped by PID at the end of the session. These fixtures need root and the
packages .ci/run installs; without them they fail with what is missing rather than skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from kiln import cephdev, localengine
from kiln.cli import main
from kiln.containerd import Ctr

REG = "registry.example.com"


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


free_port = cephdev.free_port


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start: see {log}")
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ceph(engine_root: Path) -> Iterator[cephdev.Cluster]:
    """A real S3 server: one single-node Ceph with radosgw for the session (kiln.cephdev),
    over HTTP and HTTPS. boto3's chain (what bake, diff and presigning use) gets the writer's
    keys."""
    _require(*cephdev.TOOLS, "openssl")
    began = time.monotonic()
    cluster = cephdev.start(engine_root / "ceph", tls=True)
    sys.stderr.write(f"\nceph: radosgw at {cluster.endpoint} in "
                     f"{time.monotonic() - began:.1f}s\n")
    os.environ.update({"AWS_ACCESS_KEY_ID": cluster.writer.access_key,
                       "AWS_SECRET_ACCESS_KEY": cluster.writer.secret_key,
                       "AWS_DEFAULT_REGION": cluster.region})
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def s3_endpoint(ceph: cephdev.Cluster) -> str:
    return ceph.endpoint


@pytest.fixture
def bucket(ceph: cephdev.Cluster) -> str:
    """A new, empty bucket for one test; the reader's keys may GET its objects."""
    name = f"kiln-{uuid.uuid4().hex[:12]}"
    ceph.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def registry(engine_root: Path) -> Iterator[str]:
    """A plain-HTTP docker-registry (distribution) on 127.0.0.1: dockerd trusts 127/8."""
    _require("docker-registry")
    port = free_port()
    folder = engine_root / "registry"
    folder.mkdir()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
        "log: {level: warn}\n"
    )
    log = folder / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/", proc, "docker-registry", log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def tls_registry_at(folder: Path, user: str, password: str) -> Iterator[tuple[str, Path]]:
    """docker-registry on 127.0.0.1 serving TLS with a test CA (its certificate in
    ``folder``/ca.pem), behind htpasswd basic auth; yields its host:port and the CA."""
    import ssl

    import bcrypt

    port = free_port()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=kiln test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext")
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    (folder / "htpasswd").write_text(f"{user}:{digest}\n")
    (folder / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', tls: {{certificate: {folder / 'server.crt'}, "
        f"key: {folder / 'server.key'}}}}}\n"
        f"auth: {{htpasswd: {{realm: kiln, path: {folder / 'htpasswd'}}}}}\n")
    with (folder / "registry.log").open("wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(folder / "config.yml")],
                                stdout=log, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/", timeout=1,
                                       context=context)
            except urllib.error.HTTPError:
                break  # 401: it answers, over TLS
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    (folder / "registry.log").read_text())
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", folder / "ca.pem"
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def baked(tmp_path_factory: pytest.TempPathFactory, dockerd: localengine.Daemon,
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


def skopeo_home(home: Path, host: str, ca: Path, user: str, password: str,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry's credentials and CA where skopeo looks by default (never images.yaml):
    ~/.docker/config.json (what `docker login` writes) and ~/.config/containers/certs.d;
    HOME points there for the test."""
    import base64
    import json

    (home / ".docker").mkdir(parents=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / ".docker/config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    certs = home / ".config/containers/certs.d" / host
    certs.mkdir(parents=True)
    shutil.copy(ca, certs / "ca.crt")
    monkeypatch.setenv("HOME", str(home))
    return home
