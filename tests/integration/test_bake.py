"""bake against the real dockerd/containerd, a real registry and S3 over HTTP."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import docker
import pytest

from kiln import cephdev
from kiln.cli import main
from kiln.containerd import Ctr
from kiln.localengine import Daemon
from kiln.ociarchive import describe
from tests.integration.conftest import scratch_context

REPO = Path(__file__).resolve().parents[2]
REG = "registry.example.com"


def write_config(folder: Path, images: str, store: str, extra: str = "") -> Path:
    path = folder / "images.yaml"
    path.write_text(
        "version: 1\nimages:\n" + images
        + f"environments:\n  it:\n    registry: {REG}\n    store: {store}\n" + extra
    )
    return path


def extract(archive: Path, member: str) -> bytes:
    with tarfile.open(archive) as tar:
        found = tar.extractfile(member)
        assert found is not None
        return found.read()


def s3_store(endpoint: str, bucket: str) -> str:
    return f"{{type: s3, endpoint: '{endpoint}', bucket: {bucket}, prefix: kiln/}}"


def bake(config: Path, *extra: str) -> int:
    return main(["bake", "--env", "it", "--config", str(config), "--jobs", "2", *extra])


def read_lock(config: Path) -> dict[str, Any]:
    return json.loads((config.parent / "dist/it/images.lock.json").read_text())


def objects(endpoint: str, bucket: str) -> dict[str, int]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o["Size"] for o in listed}


@pytest.fixture
def engine_env(dockerd: Daemon, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    return dockerd.address


@pytest.fixture
def upstream_config(registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """skopeo's standard per-user configuration (HOME): the plain-HTTP test registry is
    marked insecure in ~/.config/containers/registries.conf, as a user would."""
    home = tmp_path / "home"
    (home / ".config/containers").mkdir(parents=True)
    (home / ".config/containers/registries.conf").write_text(
        f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
    monkeypatch.setenv("HOME", str(home))
    return home


def push_upstream(client: docker.DockerClient, registry: str, folder: Path, name: str) -> str:
    """Build an image, push it to the test registry, drop it locally; return name@digest."""
    ref = f"{registry}/upstream/{name}:v1"
    client.images.build(path=str(scratch_context(folder, f"upstream {name}")), tag=ref)
    digest = None
    for line in client.images.push(ref, stream=True, decode=True):
        assert "error" not in line, line
        digest = line.get("aux", {}).get("Digest", digest)
    assert digest
    client.images.remove(ref, force=True)
    return f"{ref}@{digest}"


def test_every_source_kind_reaches_containerd_under_its_fq_ref(
        tmp_path: Path, engine_env: str, docker_client: docker.DockerClient, registry: str,
        upstream_config: Path, s3_endpoint: str, bucket: str, fresh_containerd: Daemon,
        capsys: pytest.CaptureFixture[str]) -> None:
    pinned = push_upstream(docker_client, registry, tmp_path / "up", "pulled")
    # archives: a docker-save one, and an OCI one written by skopeo
    for kind, name in (("docker", "saved"), ("oci", "oci")):
        tag = f"vendor.example.com/{name}:1.0"
        docker_client.images.build(path=str(scratch_context(tmp_path / name, name)), tag=tag)
        archive = tmp_path / f"{name}.tar"
        if kind == "docker":
            with archive.open("wb") as out:
                for chunk in docker_client.api.get_image(tag):
                    out.write(chunk)
        else:
            subprocess.run(["skopeo", "copy", "--quiet", "--src-daemon-host", engine_env,
                            f"docker-daemon:{tag}", f"oci-archive:{archive}"], check=True)
        docker_client.images.remove(tag, force=True)
    scratch_context(tmp_path / "built", "built")
    config = write_config(tmp_path, f"""\
  - {{name: built, ref: {REG}/foundation/built:v1, build: built}}
  - {{name: pulled, ref: {REG}/foundation/pulled:v1, pull: "{pinned}"}}
  - {{name: saved, ref: {REG}/foundation/saved:v1, archive: saved.tar}}
  - {{name: oci, ref: {REG}/foundation/oci:v1, archive: oci.tar}}
""", s3_store(s3_endpoint, bucket))

    assert bake(config) == 0, capsys.readouterr().err
    lock = read_lock(config)
    assert [i["name"] for i in lock["images"]] == ["built", "oci", "pulled", "saved"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    ctr = Ctr(str(fresh_containerd.socket))
    oci_manifest = json.loads(extract(tmp_path / "oci.tar", "index.json"))["manifests"][0]
    layers = {  # kiln's zstd for what the engine exported; as served for what was copied
        "built": "application/vnd.oci.image.layer.v1.tar+zstd",
        "saved": "application/vnd.oci.image.layer.v1.tar+zstd",
        "pulled": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "oci": "application/vnd.oci.image.layer.v1.tar+gzip"}  # as skopeo wrote the archive
    for entry in lock["images"]:
        body = s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
        assert entry["key"] == "kiln/blobs/sha256/" + entry["sha256"]
        assert len(body) == entry["size"]
        # An OCI archive naming exactly the FQ ref (the upstream name never reaches it), its
        # config the source's (same image ID), its layers compressed one by one.
        (archived,) = describe(io.BytesIO(body))
        digest = entry["manifest_digests"]["linux/amd64"]
        assert (archived.ref, archived.image_id, archived.manifest_digest) == (
            entry["ref"], entry["image_id"], digest)
        assert {m for m, _, _ in archived.layers} == {layers[entry["name"]]}
        ctr.import_stream([body])
        imported = ctr.images()
        assert imported[entry["ref"]].manifest_digest == digest  # what containerd records
        assert ctr.image_id(digest) == entry["image_id"]
    by_name = {e["name"]: e for e in lock["images"]}
    # copied as served: the upstream's manifest digest, the OCI archive's own
    assert by_name["pulled"]["upstream"] == pinned
    assert by_name["pulled"]["manifest_digests"]["linux/amd64"] == pinned.rsplit("@", 1)[1]
    assert by_name["oci"]["manifest_digests"]["linux/amd64"] == oci_manifest["digest"]
    assert {e["name"]: e["compression"] for e in lock["images"]} == {
        "built": "zstd", "saved": "zstd", "pulled": "gzip", "oci": "gzip"}
    assert set(ctr.images()) >= {e["ref"] for e in lock["images"]}

    # A second bake uploads nothing and rewrites the lock byte for byte.
    before = (tmp_path / "dist/it/images.lock.json").read_bytes()
    stored = objects(s3_endpoint, bucket)
    capsys.readouterr()
    assert bake(config) == 0
    assert '"uploaded": 0, "unchanged": 4' in capsys.readouterr().err
    assert (tmp_path / "dist/it/images.lock.json").read_bytes() == before
    assert objects(s3_endpoint, bucket) == stored
    assert s3.get_object(Bucket=bucket, Key="kiln/locks/it/images.lock.json")[
        "Body"].read() == before


# -- failures: one line naming the image and the cause, exit 1, nothing partial ---------------


def assert_nothing_published(config: Path, store: Path | None = None) -> None:
    assert not (config.parent / "dist/it/images.lock.json").exists()
    if store is not None and store.exists():
        assert [p.name for p in store.rglob("*") if p.is_file()] == []


def test_engine_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    scratch_context(tmp_path / "ctx", "x")
    config = write_config(tmp_path, f"  - {{name: x, ref: {REG}/f/x:v1, build: ctx}}\n",
                          "{type: dir, path: store}")
    assert bake(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kiln: error: image 'x': cannot reach the Docker engine at unix://")
    assert_nothing_published(config, tmp_path / "store")


def test_build_failure_keeps_the_previous_lock(tmp_path: Path, engine_env: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    scratch_context(tmp_path / "good", "good")
    config = write_config(tmp_path, f"  - {{name: good, ref: {REG}/f/good:v1, build: good}}\n",
                          "{type: dir, path: store}")
    assert bake(config) == 0
    before = (tmp_path / "dist/it/images.lock.json").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text("FROM scratch\nCOPY missing-file /\n")
    config.write_text(config.read_text().replace(
        "images:\n", f"images:\n  - {{name: bad, ref: {REG}/f/bad:v1, build: bad}}\n"))
    capsys.readouterr()
    assert bake(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kiln: error: image 'bad': build failed:")
    assert "missing-file" in err[-1]
    assert (tmp_path / "dist/it/images.lock.json").read_bytes() == before


def test_pull_of_a_wrong_digest(tmp_path: Path, engine_env: str,
                                docker_client: docker.DockerClient, registry: str,
                                upstream_config: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    pinned = push_upstream(docker_client, registry, tmp_path / "up", "wrong")
    wrong = pinned.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
    config = write_config(tmp_path, f"  - {{name: w, ref: {REG}/f/w:v1, pull: '{wrong}'}}\n",
                          "{type: dir, path: store}")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none needed
    assert bake(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    repository = pinned.rsplit(":", 2)[0]
    assert err[-1].startswith(f"kiln: error: image 'w': cannot read {repository}@sha256:"
                              f"{'0' * 64}: ")
    assert "manifest unknown" in err[-1]
    assert_nothing_published(config, tmp_path / "store")


def test_store_unreachable(tmp_path: Path, engine_env: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    scratch_context(tmp_path / "ctx", "x")
    from tests.integration.conftest import free_port

    config = write_config(tmp_path, f"  - {{name: x, ref: {REG}/f/x:v1, build: ctx}}\n",
                          s3_store(f"http://127.0.0.1:{free_port()}", "nowhere"))
    assert bake(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kiln: error: bucket 'nowhere' at http://127.0.0.1:")
    assert "unreachable" in err[-1]
    assert_nothing_published(config)


@pytest.mark.parametrize("keys", ["nodes' read-only keys", "wrong secret", "unknown key"])
def test_store_access_denied(tmp_path: Path, engine_env: str, ceph: cephdev.Cluster,
                             bucket: str, keys: str, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    access, secret = {
        "nodes' read-only keys": (ceph.reader.access_key, ceph.reader.secret_key),
        "wrong secret": (ceph.writer.access_key, "W" * 40),
        "unknown key": ("NOSUCHKEY0000000000X", ceph.writer.secret_key)}[keys]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    scratch_context(tmp_path / "ctx", "x")
    config = write_config(tmp_path, f"  - {{name: x, ref: {REG}/f/x:v1, build: ctx}}\n",
                          s3_store(ceph.endpoint, bucket))
    assert bake(config) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"kiln: error: bucket '{bucket}' at {ceph.endpoint}: access denied")
    assert_nothing_published(config)
    assert ceph.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_disk_full_leaves_no_partial_object(tmp_path: Path, engine_env: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(store)], check=True)
    try:
        scratch_context(tmp_path / "big", "big", 2 << 20)  # random: does not compress
        config = write_config(tmp_path, f"  - {{name: big, ref: {REG}/f/big:v1, build: big}}\n",
                              "{type: dir, path: store}")
        assert bake(config) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("kiln: error: image 'big': disk full while writing")
        assert_nothing_published(config, store)
    finally:
        subprocess.run(["umount", str(store)], check=True)


@pytest.mark.parametrize(("sig", "code", "said"), [(signal.SIGINT, 130, b"interrupted"),
                                                  (signal.SIGTERM, 143, b"terminated")])
def test_interrupt_mid_upload_leaves_the_store_as_it_was(
        tmp_path: Path, engine_env: str, s3_endpoint: str, bucket: str, sig: int, code: int,
        said: bytes) -> None:
    scratch_context(tmp_path / "big", "big", 160 << 20)  # 20 parts of 8 MiB, incompressible
    config = write_config(tmp_path, f"  - {{name: big, ref: {REG}/f/big:v1, build: big}}\n",
                          s3_store(s3_endpoint, bucket))
    proc = subprocess.Popen([sys.executable, str(REPO / "bake.py"), "bake", "--env", "it",
                             "--config", str(config)], stderr=subprocess.PIPE,
                            env={**os.environ, "DOCKER_HOST": engine_env,
                                 "KILN_MULTIPART_THRESHOLD": str(16 << 20)},
                            # a shell starting the tests in the background (`make test &`)
                            # ignores SIGINT, and so would the bake: the Ctrl-C a user's
                            # terminal sends is what is tested
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    deadline = time.monotonic() + 120
    while not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert proc.poll() is None, "bake ended before its upload started"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert said in err and b"Traceback" not in err
    assert objects(s3_endpoint, bucket) == {}
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not (tmp_path / "dist/it/images.lock.json").exists()
