"""The manifest digest is part of the one string, end to end (issue 13, first slice, one
platform), with real parts: an upstream docker-registry (TLS, basic auth) seeded with an image
pushed by skopeo and an index put through the registry API; a bake with no Docker engine; a
fresh containerd fed by the real importer; `kiln verify`; `push` to a second registry."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import tarfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import zstandard

from kiln.cli import main
from kiln.localengine import Daemon
from tests.integration.conftest import scratch_context, skopeo_home, tls_registry_at
from tests.integration.nodes import assert_imported, make_node

UP_USER, UP_PASSWORD = "upstream", "up-s3cret"
USER, PASSWORD = "kiln", "s3cret-digests"
ACCEPT = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])
Registry = tuple[str, Path]  # host:port, its CA


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("upstream"), UP_USER, UP_PASSWORD) as served:
        yield served


@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("internal"), USER, PASSWORD) as served:
        yield served


def api(registry: Registry, user: str, password: str, path: str, body: bytes | None = None,
        media_type: str = "") -> tuple[bytes, str]:
    """The registry's HTTP API itself (no skopeo): the body and Docker-Content-Digest."""
    host, ca = registry
    request = urllib.request.Request(f"https://{host}/v2/{path}", data=body,
                                     method="PUT" if body is not None else "GET")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Accept", ACCEPT)
    if media_type:
        request.add_header("Content-Type", media_type)
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:
        return answer.read(), answer.headers["Docker-Content-Digest"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def seeded(upstream: Registry, docker_client: docker.DockerClient, tmp_path: Path
           ) -> dict[str, Any]:
    """A FROM scratch image built by the test's engine, pushed to the upstream registry by
    skopeo (gzip layers, a Docker manifest), and an OCI index naming it put through the API."""
    host, ca = upstream
    team = f"t{uuid.uuid4().hex[:8]}"
    local = f"kiln-test/{team}:v1"
    docker_client.images.build(path=str(scratch_context(tmp_path / "up", f"upstream {team}")),
                               tag=local)
    archive = tmp_path / "up.tar"
    archive.write_bytes(b"".join(docker_client.api.get_image(local)))
    certs = tmp_path / "up-certs"
    certs.mkdir()
    shutil.copy(ca, certs / "ca.crt")
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-cert-dir", str(certs), "--dest-creds",
                    f"{UP_USER}:{UP_PASSWORD}", f"docker-archive:{archive}",
                    f"docker://{host}/{team}/app:v1"], check=True)
    manifest, digest = api(upstream, UP_USER, UP_PASSWORD, f"{team}/app/manifests/v1")
    assert sha256(manifest) == digest  # the registry serves what its digest names
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": json.loads(manifest)["mediaType"], "digest": digest,
                       "size": len(manifest), "platform": {"os": "linux",
                                                           "architecture": "amd64"}}]}).encode()
    _, index_digest = api(upstream, UP_USER, UP_PASSWORD, f"{team}/app/manifests/multi", index,
                          "application/vnd.oci.image.index.v1+json")
    assert index_digest == sha256(index)
    return {"team": team, "manifest": manifest, "digest": digest, "index_digest": index_digest,
            "image_id": json.loads(manifest)["config"]["digest"],
            "layers": {layer["mediaType"] for layer in json.loads(manifest)["layers"]}}


@pytest.fixture
def upstream_home(upstream: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return skopeo_home(tmp_path / "home", *upstream, UP_USER, UP_PASSWORD, monkeypatch)


def kiln(folder: Path, *args: str) -> int:
    return main([*args, "--env", "it", "--config", str(folder / "images.yaml"),
                 "--dist", str(folder / "dist")])


def test_the_upstream_digest_reaches_the_lock_the_node_and_the_registry(
        tmp_path: Path, upstream: Registry, internal: Registry, seeded: dict[str, Any],
        upstream_home: Path, fresh_containerd: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    up_host, team = upstream[0], seeded["team"]
    host, ca = internal
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ca, folder / "ca.pem")
    (folder / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: app, ref: '${{registry}}/{team}/app:v1', "
        f"pull: '{up_host}/{team}/app:v1@{seeded['digest']}'}}\n"
        f"  - {{name: multi, ref: '${{registry}}/{team}/multi:v1', "
        f"pull: '{up_host}/{team}/app:multi@{seeded['index_digest']}'}}\n"
        f"environments:\n  it:\n    registry: '{host}'\n    registry_ca: ca.pem\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n"
        "    node: {containerd_timeout: 60}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is needed

    assert kiln(folder, "bake", "--quiet") == 0, capsys.readouterr().err
    lock = json.loads((folder / "dist/it/images.lock.json").read_text())
    assert lock["version"] == 4
    app, multi = sorted(lock["images"], key=lambda i: str(i["name"]))
    for entry in (app, multi):  # the registry's digest, asked of the registry itself
        assert entry["manifest_digests"] == {"linux/amd64": seeded["digest"]}
        assert entry["image_id"] == seeded["image_id"]
        assert entry["compression"] == "gzip" and seeded["layers"] == {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    assert (app["index_digest"], multi["index_digest"]) == (None, seeded["index_digest"])

    # a fresh node: the real importer, fed over HTTP
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    shutil.copy(ca, node_dir / "ca.pem")
    nodes = make_node(folder, node_dir, fresh_containerd)
    node = next(nodes)
    try:
        done = node.run()
        assert done.returncode == 0, done.stderr
        assert_imported(node, {"app", "multi"})  # ref and repo@<digest>, pinned
        held = node.ctr.images()
        by_digest = held[f"{host}/{team}/app@{seeded['digest']}"]
        assert by_digest.manifest_digest == seeded["digest"]
        assert node.ctr.image_id(seeded["digest"]) == seeded["image_id"]

        assert kiln(node.folder, "verify", "--containerd-address",
                    str(fresh_containerd.socket), "--json") == 0
        assert {f["state"] for f in json.loads(capsys.readouterr().out)} == {"present"}
        node.ctr.run("images", "rm", f"{host}/{team}/app@{seeded['digest']}")
        assert kiln(node.folder, "verify", "--containerd-address",
                    str(fresh_containerd.socket), "--json") == 1
        states = {f["name"]: f["state"] for f in json.loads(capsys.readouterr().out)}
        assert states == {"app": "missing-digest-ref", "multi": "present"}
    finally:
        nodes.close()

    # day 2: the internal registry serves the very manifest the node holds
    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    assert kiln(folder, "push", "--quiet") == 0, capsys.readouterr().err
    for name in ("app", "multi"):
        served, digest = api(internal, USER, PASSWORD, f"{team}/{name}/manifests/v1")
        assert (digest, served) == (seeded["digest"], seeded["manifest"])  # byte for byte
    assert kiln(folder, "verify-registry", "--json") == 0
    assert {r["state"] for r in json.loads(capsys.readouterr().out)} == {"ok"}



def test_a_recompressed_pull_takes_kiln_s_manifest_with_the_upstream_s_layers(
        tmp_path: Path, upstream: Registry, seeded: dict[str, Any], upstream_home: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The opt-in with the real skopeo: zstd -5 layers instead of the upstream's gzip. Of an
    OCI manifest the image ID stays the upstream's; a Docker one is converted to OCI (zstd
    exists only there) and skopeo rewrites its config: the layers are still the upstream's."""
    up_host, team = upstream[0], seeded["team"]
    subprocess.run(["skopeo", "copy", "--quiet", "--format", "oci",  # the same image as OCI
                    f"docker://{up_host}/{team}/app:v1", f"docker://{up_host}/{team}/app:oci"],
                   check=True)
    oci, oci_digest = api(upstream, UP_USER, UP_PASSWORD, f"{team}/app/manifests/oci")
    assert json.loads(oci)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: oci, ref: 'registry.example.com/{team}/oci:v1', recompress: true, "
        f"pull: '{up_host}/{team}/app:oci@{oci_digest}'}}\n"
        f"  - {{name: docker, ref: 'registry.example.com/{team}/docker:v1', "
        f"pull: '{up_host}/{team}/app:multi@{seeded['index_digest']}'}}\n"
        "environments:\n  it:\n    registry: registry.example.com\n"
        "    store: {type: dir, path: store}\n"
        "    compression: {algorithm: zstd, level: 5, pulls: recompress}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is needed

    assert kiln(folder, "bake", "--quiet") == 0, capsys.readouterr().err
    lock_text = (folder / "dist/it/images.lock.json").read_text()
    docker_entry, oci_entry = sorted(json.loads(lock_text)["images"], key=lambda i: i["name"])
    assert oci_entry["image_id"] == json.loads(oci)["config"]["digest"]  # the upstream's
    assert docker_entry["image_id"] != seeded["image_id"]  # skopeo's OCI config
    assert (oci_entry["inputs"], docker_entry["inputs"]) == (oci_digest, seeded["digest"])
    for entry, upstream_digest in ((oci_entry, oci_digest), (docker_entry, seeded["digest"])):
        manifest_digest = entry["manifest_digests"]["linux/amd64"]
        assert manifest_digest != upstream_digest  # kiln's manifest
        assert (entry["compression"], entry["compression_level"]) == ("zstd", 5)
        assert entry.get("index_digest") is None and entry.get("signed_by") is None
        with tarfile.open(folder / "store" / entry["key"]) as tar:
            def blob(digest: str) -> bytes:
                found = tar.extractfile(f"blobs/sha256/{digest[7:]}")
                assert found is not None
                return found.read()
            manifest = json.loads(blob(manifest_digest))
            config = json.loads(blob(manifest["config"]["digest"]))
            layers = [blob(d["digest"]) for d in manifest["layers"]]
        assert manifest["config"]["digest"] == entry["image_id"]
        assert {d["mediaType"] for d in manifest["layers"]} == {
            "application/vnd.oci.image.layer.v1.tar+zstd"}
        assert all(layer.startswith(b"\x28\xb5\x2f\xfd") for layer in layers)  # zstd frames
        assert [hashlib.sha256(zstandard.ZstdDecompressor().decompressobj().decompress(layer))
                .hexdigest() for layer in layers] == [
            d[7:] for d in config["rootfs"]["diff_ids"]]  # the upstream's layers uncompressed

    # the same images.yaml: the same lock, nothing copied again
    assert kiln(folder, "bake") == 0
    assert '"unchanged": 2}' in capsys.readouterr().err  # both, no copy
    assert (folder / "dist/it/images.lock.json").read_text() == lock_text
    assert main(["lint", "--env", "it", "--config", str(folder / "images.yaml")]) == 0
    assert capsys.readouterr().out.count("recompressed-upstream") == 2
