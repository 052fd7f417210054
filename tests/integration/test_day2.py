"""Day 2 against a real docker-registry on 127.0.0.1 with TLS (a test CA) and basic auth."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from kiln.cli import main
from kiln.containerd import Ctr
from kiln.localengine import Daemon
from tests.integration.conftest import scratch_context, tls_registry_at

USER, PASSWORD = "kiln", "s3cret-day2"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """docker-registry serving TLS with a test CA, behind htpasswd basic auth."""
    with tls_registry_at(tmp_path_factory.mktemp("tls-registry"), USER, PASSWORD) as served:
        yield served


@pytest.fixture
def project(tmp_path: Path, tls_registry: tuple[str, Path], dockerd: Daemon,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two images baked with refs on the test registry; its credentials in the environment."""
    host, ca = tls_registry
    scratch_context(tmp_path / "small", "day2 small")
    scratch_context(tmp_path / "big", "day2 big", 200 << 10)
    shutil.copy(ca, tmp_path / "ca.pem")
    team = f"t{uuid.uuid4().hex[:8]}"  # the registry outlives a test: a namespace each
    (tmp_path / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: small, ref: '${{registry}}/{team}/small:v1', build: small}}\n"
        f"  - {{name: big, ref: '${{registry}}/{team}/big:v1', build: big}}\n"
        f"environments:\n  it:\n    registry: '{host}'\n    registry_ca: ca.pem\n"
        "    store: {type: dir, path: store}\n")
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    assert main(["bake", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                 "--quiet"]) == 0
    return tmp_path


def run(project: Path, *args: str) -> int:
    return main([*args, "--env", "it", "--config", str(project / "images.yaml")])


def test_push_then_verify_then_a_moved_tag(project: Path, tls_registry: tuple[str, Path],
                                           docker_client: docker.DockerClient,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _host, ca = tls_registry
    assert run(project, "push", "--json") == 0
    assert {r["result"] for r in json.loads(capsys.readouterr().out)} == {"pushed"}
    assert run(project, "push", "--json") == 0  # idempotent: nothing sent again
    assert {r["result"] for r in json.loads(capsys.readouterr().out)} == {"present"}
    assert run(project, "verify-registry", "--json") == 0
    found = json.loads(capsys.readouterr().out)
    assert {r["state"] for r in found} == {"ok"}
    lock = json.loads((project / "dist/it/images.lock.json").read_text())
    assert {r["served_digest"] for r in found} == {
        i["manifest_digests"]["linux/amd64"] for i in lock["images"]}
    certs = project / "certs"
    certs.mkdir()
    shutil.copy(ca, certs / "ca.crt")

    def push_engine_copy(ref: str) -> None:
        """The engine's `docker save` of what it has under ``ref``, pushed by skopeo (which
        gzips its layers): another manifest than kiln's."""
        archive = project / "engine.tar"
        archive.write_bytes(b"".join(docker_client.api.get_image(ref)))
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-cert-dir", str(certs),
                        "--dest-creds", f"{USER}:{PASSWORD}", f"docker-archive:{archive}",
                        f"docker://{ref}"], check=True)

    # the same image pushed another way: same image ID, another manifest digest (a pull of
    # ref@<the lock's digest> would fail): reported, and push puts the lock's manifest back
    small = next(i["ref"] for i in lock["images"] if i["name"] == "small")
    push_engine_copy(small)
    assert run(project, "verify-registry", "--json") == 1
    found = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["state"] for r in found} == {"small": "wrong-digest", "big": "ok"}
    assert len({r["served"] for r in found if r["name"] == "small"} |
               {i["image_id"] for i in lock["images"] if i["name"] == "small"}) == 1
    assert run(project, "push", "--json") == 0
    assert {r["name"]: r["result"] for r in json.loads(capsys.readouterr().out)} == {
        "small": "pushed", "big": "present"}
    assert run(project, "verify-registry", "--json") == 0
    capsys.readouterr()

    # someone pushes another image under the same tag: the `latest` trap in a new form
    docker_client.images.build(path=str(scratch_context(project / "other", "moved")), tag=small)
    push_engine_copy(small)
    assert run(project, "verify-registry", "--json") == 1
    states = {r["name"]: r["state"] for r in json.loads(capsys.readouterr().out)}
    assert states == {"small": "tag-moved", "big": "ok"}


def test_missing_and_bad_credentials(project: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(project, "verify-registry", "--json") == 1
    assert {r["state"] for r in json.loads(capsys.readouterr().out)} == {"missing"}
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", "wrong")
    assert run(project, "push", "--quiet") == 1
    err = capsys.readouterr().err
    assert "unauthorized" in err.lower() and "wrong" not in err


def test_a_fresh_node_pulls_the_same_image_id_from_the_registry(
        project: Path, tls_registry: tuple[str, Path], fresh_containerd: Daemon,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, ca = tls_registry
    assert run(project, "push", "--quiet") == 0
    lock = json.loads((project / "dist/it/images.lock.json").read_text())
    node = Ctr(str(fresh_containerd.socket))
    # the node's registry config, as on a real node: ctr would try plain HTTP on 127.0.0.1
    host = lock["registry"]
    hosts = project / "certs.d" / host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "https://{host}"\n\n[host."https://{host}"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{ca}"\n')
    for image in lock["images"]:
        digest = image["manifest_digests"]["linux/amd64"]
        by_digest = f"{image['ref'].rsplit(':', 1)[0]}@{digest}"
        for wanted in (image["ref"], by_digest):
            done = subprocess.run(["ctr", "--address", str(fresh_containerd.socket), "-n",
                                   "k8s.io", "images", "pull", "--user", f"{USER}:{PASSWORD}",
                                   "--hosts-dir", str(project / "certs.d"), wanted],
                                  capture_output=True, text=True, check=False,
                                  env={**os.environ})
            assert done.returncode == 0, done.stderr
            pulled = node.images()[wanted]
            # day 2 yields the very image day 1 side-loaded: the same manifest, so the same
            # digest (a digest-pinned chart pulls it too) and config digest
            assert pulled.manifest_digest == digest
            assert node.image_id(pulled.manifest_digest) == image["image_id"]


def test_sigterm_during_push_leaves_no_credentials_behind(project: Path,
                                                          tmp_path_factory: pytest.TempPathFactory
                                                          ) -> None:
    """A push killed with SIGTERM while skopeo copies: exit 143, one line, and the 0600
    registry auth file (and every temp folder) gone. (Fails on main: SIGTERM ended Python
    without running the finally that removes the auth file.)"""
    import signal
    import sys

    scratch = tmp_path_factory.mktemp("push-tmp")
    fake = tmp_path_factory.mktemp("fake-bin")
    started = fake / "copy-started"
    real = shutil.which("skopeo")
    (fake / "skopeo").write_text(
        "#!/bin/sh\n"
        f'case "$1" in copy) : > "{started}"; exec sleep 60 ;; esac\n'
        f'exec "{real}" "$@"\n')
    (fake / "skopeo").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "TMPDIR": str(scratch),
           "KILN_REGISTRY_USERNAME": USER, "KILN_REGISTRY_PASSWORD": PASSWORD}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, str(root / "bake.py"), "push", "--env", "it",
                             "--config", str(project / "images.yaml")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "skopeo copy never started"
        time.sleep(0.1)
    [auth] = list(scratch.glob("kiln-registry-*/auth.json"))  # the credentials, mid-push
    assert auth.stat().st_mode & 0o777 == 0o600
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "kiln: terminated" in err
    assert list(scratch.iterdir()) == []
