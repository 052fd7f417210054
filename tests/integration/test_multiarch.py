"""Every platform the fleet runs (issue 13, section 3), with real parts: an upstream
docker-registry (TLS, basic auth) seeded through its API with a two-platform index written in
Python (two `FROM scratch`-style images with different payloads); a bake with no Docker
engine; a fresh containerd fed by the real importer for linux/amd64 (this machine) and, with
KILN_PLATFORM, for linux/arm64."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.cli import main
from kiln.localengine import Daemon
from tests.integration import ocibuild
from tests.integration.conftest import skopeo_home, tls_registry_at
from tests.integration.nodes import make_node

USER, PASSWORD = "upstream", "up-s3cret-multi"
Registry = tuple[str, Path]
AMD, ARM = "linux/amd64", "linux/arm64"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("upstream"), USER, PASSWORD) as served:
        yield served


def call(registry: Registry, method: str, url: str, body: bytes | None = None,
         media_type: str = "") -> tuple[bytes, dict[str, str]]:
    """The registry's HTTP API itself: the body and the headers of the answer."""
    host, ca = registry
    if not url.startswith("https://"):
        url = f"https://{host}/v2/{url}"
    request = urllib.request.Request(url, data=body, method=method)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Accept", f"{ocibuild.INDEX}, {ocibuild.MANIFEST}")
    if media_type:
        request.add_header("Content-Type", media_type)
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:
        return answer.read(), dict(answer.headers)


def put_blob(registry: Registry, repo: str, data: bytes) -> None:
    _, headers = call(registry, "POST", f"{repo}/blobs/uploads/", b"")
    location = urllib.parse.urljoin(f"https://{registry[0]}/", headers["Location"])
    glue = "&" if "?" in location else "?"
    call(registry, "PUT", f"{location}{glue}digest={ocibuild.digest(data)}", data,
         "application/octet-stream")


def put_manifest(registry: Registry, repo: str, reference: str, data: bytes,
                 media_type: str) -> str:
    _, headers = call(registry, "PUT", f"{repo}/manifests/{reference}", data, media_type)
    return headers["Docker-Content-Digest"]


@pytest.fixture
def seeded(upstream: Registry) -> dict[str, Any]:
    """A two-platform index (amd64 and arm64 images with different payloads) under `v1`."""
    return seed(upstream, {AMD: b"amd64 payload\n", ARM: b"arm64 payload, another\n"})


def seed(upstream: Registry, payloads: dict[str, bytes]) -> dict[str, Any]:
    """An index of one image per platform (``payloads``), put through the API under `v1`."""
    repo = f"t{uuid.uuid4().hex[:8]}/app"
    made = ocibuild.image(payloads)
    for platform in made.platforms.values():
        put_blob(upstream, repo, platform.layer)
        put_blob(upstream, repo, platform.config)
        assert put_manifest(upstream, repo, platform.digest, platform.manifest,
                            ocibuild.MANIFEST) == platform.digest
    assert put_manifest(upstream, repo, "v1", made.index, ocibuild.INDEX) == made.index_digest
    served, headers = call(upstream, "GET", f"{repo}/manifests/v1")
    assert (served, headers["Docker-Content-Digest"]) == (made.index, made.index_digest)
    return {"repo": repo, "image": made}


@pytest.fixture
def upstream_home(upstream: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return skopeo_home(tmp_path / "home", *upstream, USER, PASSWORD, monkeypatch)


def kiln(folder: Path, *args: str) -> int:
    return main([*args, "--env", "it", "--config", str(folder / "images.yaml"),
                 "--dist", str(folder / "dist")])


def test_a_two_platform_index_is_baked_per_platform_and_each_node_imports_its_own(
        tmp_path: Path, upstream: Registry, seeded: dict[str, Any], upstream_home: Path,
        fresh_containerd: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    up_host, repo, made = upstream[0], seeded["repo"], seeded["image"]
    amd, arm = made.platforms[AMD], made.platforms[ARM]
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: app, ref: 'registry.example.com/{repo}:v1', "
        f"pull: '{up_host}/{repo}:v1@{made.index_digest}', platforms: [{AMD}, {ARM}]}}\n"
        f"  - {{name: solo, ref: 'registry.example.com/{repo}-solo:v1', "
        f"pull: '{up_host}/{repo}@{amd.digest}'}}\n"
        "environments:\n  it:\n    registry: registry.example.com\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n"
        "    node: {containerd_timeout: 60}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is needed

    assert kiln(folder, "bake", "--quiet") == 0, capsys.readouterr().err
    text = (folder / "dist/it/images.lock.json").read_text()
    lock = json.loads(text)
    assert lock["version"] == 4
    entries = {(i["name"], i["platform"]): i for i in lock["images"]}
    assert sorted(entries) == [("app", AMD), ("app", ARM), ("solo", AMD)]
    for platform, made_one in ((AMD, amd), (ARM, arm)):  # the registry's own digests
        entry = entries[("app", platform)]
        assert entry["manifest_digests"] == {platform: made_one.digest}
        assert entry["image_id"] == made_one.image_id
        assert entry["index_digest"] == made.index_digest
    assert entries[("app", AMD)]["key"] != entries[("app", ARM)]["key"]  # an object each
    assert entries[("solo", AMD)]["index_digest"] is None
    # the same inputs: the same lock, byte for byte (nothing copied again)
    assert kiln(folder, "bake", "--quiet") == 0
    assert (folder / "dist/it/images.lock.json").read_text() == text

    node_dir = tmp_path / "node"
    node_dir.mkdir()
    nodes = make_node(folder, node_dir, fresh_containerd)
    node = next(nodes)
    try:
        data = (node.folder / "dist/it/node/images.data").read_text()
        assert sorted(line.split()[-3] for line in data.splitlines()
                      if line.startswith("image ")) == [AMD, AMD, ARM]

        # this machine: linux/amd64
        done = node.run()
        assert done.returncode == 0, done.stderr
        held = node.ctr.images()
        for ref, digest, image_id in (
                (f"registry.example.com/{repo}", amd.digest, amd.image_id),
                (f"registry.example.com/{repo}-solo", amd.digest, amd.image_id)):
            for name in (f"{ref}:v1", f"{ref}@{digest}"):
                assert held[name].manifest_digest == digest, done.stderr
                assert held[name].labels.get("io.cri-containerd.pinned") == "pinned"
            assert node.ctr.image_id(digest) == image_id
        assert f"registry.example.com/{repo}@{arm.digest}" not in held
        # the upstream index's name too (a chart pinning the index digest resolves to it):
        # the index itself, pinned, complete for this platform, its config the lock's image
        by_index = f"registry.example.com/{repo}@{made.index_digest}"
        assert held[by_index].manifest_digest == made.index_digest, done.stderr
        assert held[by_index].labels.get("io.cri-containerd.pinned") == "pinned"
        checked = node.ctr.run("images", "check", f"name=={by_index}").decode()
        assert "complete" in checked and "incomplete" not in checked, checked
        assert node.ctr.run("content", "get", made.index_digest) == made.index
        assert not any("@" in n and n.endswith(made.index_digest) for n in held
                       if n.startswith(f"registry.example.com/{repo}-solo"))
        assert node.status()["platform"] == AMD and node.status()["missing_platform"] == []
        assert node.run("--check").returncode == 0
        # without it: --check and verify say so, and a run imports the object again
        node.ctr.run("images", "rm", by_index)
        check = node.run("--check")
        assert check.returncode == 1 and "app: missing-index-ref" in check.stderr
        capsys.readouterr()
        assert kiln(node.folder, "verify", "--containerd-address",
                    str(fresh_containerd.socket), "--json") == 1
        states = {f["name"]: (f["state"], f["detail"]) for f in
                  json.loads(capsys.readouterr().out)}
        assert states["app"][0] == "missing-digest-ref" and by_index in states["app"][1]
        done = node.run()
        assert done.returncode == 0, done.stderr
        assert node.ctr.images()[by_index].manifest_digest == made.index_digest
        assert kiln(node.folder, "verify", "--containerd-address",
                    str(fresh_containerd.socket), "--json") == 0  # this machine's platform

        # the same node told it is linux/arm64: the arm64 object; solo has none: one line
        for name in list(held):
            if name.startswith("registry.example.com/"):
                node.ctr.run("images", "rm", name)
        arm_env = {"KILN_PLATFORM": ARM}
        done = node.run(env=arm_env)
        assert done.returncode == 1
        assert (f"solo: the lock has no image for this node's platform {ARM} "
                f"(only {AMD})") in done.stderr
        status = node.status()
        assert status["ok"] is False and status["missing_platform"] == ["solo"]
        assert status["platform"] == ARM
        held = node.ctr.images()
        ours = f"registry.example.com/{repo}"
        for name in (f"{ours}:v1", f"{ours}@{arm.digest}"):
            assert held[name].manifest_digest == arm.digest, done.stderr
            assert held[name].labels.get("io.cri-containerd.pinned") == "pinned"
        assert held[by_index].manifest_digest == made.index_digest
        assert held[by_index].labels.get("io.cri-containerd.pinned") == "pinned"
        assert node.ctr.image_id(arm.digest) == arm.image_id
        assert f"registry.example.com/{repo}-solo:v1" not in held
        check = node.run("--check", env=arm_env)
        assert check.returncode == 1 and "solo: the lock has no image" in check.stderr
        capsys.readouterr()
        assert kiln(node.folder, "verify", "--containerd-address", str(fresh_containerd.socket),
                    "--platform", ARM, "--json") == 1
        states = {f["name"]: f["state"] for f in json.loads(capsys.readouterr().out)}
        assert states == {"app": "present", "solo": "missing-platform"}

        # a platform the lock has nothing for: one line, containerd untouched
        done = node.run(env={"KILN_PLATFORM": "linux/s390x"})
        assert done.returncode == 1
        assert ("the lock has no image for this node's platform linux/s390x"
                in done.stderr.strip().splitlines()[-1])
        assert node.status()["missing_platform"] == ["app", "solo"]
        for hostile in ("linux/amd64;rm -rf /", "linux/amd64\nlinux/arm64", "linux", "LINUX/X"):
            done = node.run(env={"KILN_PLATFORM": hostile})
            assert done.returncode == 1 and "KILN_PLATFORM must be os/arch" in done.stderr
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("internal"), USER, PASSWORD) as served:
        yield served


def test_push_serves_the_upstream_index_when_the_lock_holds_all_it_lists_else_kilns(
        tmp_path: Path, upstream: Registry, internal: Registry, upstream_home: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    up_host, (host, ca) = upstream[0], internal
    both = seed(upstream, {AMD: b"amd64 of both\n", ARM: b"arm64 of both\n"})
    three = seed(upstream, {AMD: b"amd64 of three\n", ARM: b"arm64 of three\n",
                            "linux/s390x": b"s390x of three\n"})
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ca, folder / "ca.pem")
    (folder / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: both, ref: '${{registry}}/team/both:v1', "
        f"pull: '{up_host}/{both['repo']}:v1@{both['image'].index_digest}'}}\n"
        f"  - {{name: part, ref: '${{registry}}/team/part:v1', "
        f"pull: '{up_host}/{three['repo']}:v1@{three['image'].index_digest}'}}\n"
        f"  - {{name: solo, ref: '${{registry}}/team/solo:v1', platforms: [{AMD}], "
        f"pull: '{up_host}/{both['repo']}:v1'}}\n"
        f"environments:\n  it:\n    registry: '{host}'\n    registry_ca: ca.pem\n"
        f"    platforms: [{AMD}, {ARM}]\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is needed
    assert kiln(folder, "bake", "--quiet") == 0, capsys.readouterr().err
    lock = json.loads((folder / "dist/it/images.lock.json").read_text())
    stored = {(i["name"], i["platform"]): i for i in lock["images"]}
    for name, made in (("both", both["image"]), ("part", three["image"])):
        for platform in (AMD, ARM):  # the upstream index as served, in the store
            entry = stored[(name, platform)]
            assert entry["index_digest"] == made.index_digest
            assert (folder / "store" / entry["index_key"]).read_bytes() == made.index
            assert entry["index_size"] == len(made.index)

    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    capsys.readouterr()
    assert kiln(folder, "push") == 0, capsys.readouterr().err
    said = capsys.readouterr().err
    assert ("part: the upstream index " + three["image"].index_digest + " also lists "
            "linux/s390x, which the lock does not hold") in said
    # both: the upstream index byte for byte, and each platform's manifest under it
    served, headers = call(internal, "GET", "team/both/manifests/v1")
    assert (served, headers["Docker-Content-Digest"]) == (both["image"].index,
                                                         both["image"].index_digest)
    for made in (both["image"], three["image"]):
        repo = "team/both" if made is both["image"] else "team/part"
        for platform in (AMD, ARM):
            one = made.platforms[platform]
            served, headers = call(internal, "GET", f"{repo}/manifests/{one.digest}")
            assert (served, headers["Docker-Content-Digest"]) == (one.manifest, one.digest)
    # part: kiln's index of the two platforms it holds (the registry refuses the upstream's)
    served, _ = call(internal, "GET", "team/part/manifests/v1")
    listed = {(m["platform"]["architecture"], m["digest"])
              for m in json.loads(served)["manifests"]}
    assert listed == {(p.split("/")[1], three["image"].platforms[p].digest) for p in (AMD, ARM)}
    # solo: one platform of an index: its manifest under the ref, as before
    served, headers = call(internal, "GET", "team/solo/manifests/v1")
    assert headers["Docker-Content-Digest"] == both["image"].platforms[AMD].digest

    assert kiln(folder, "verify-registry", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["name"], r["platform"], r["state"]) for r in rows} == {
        ("both", AMD, "ok"), ("both", ARM, "ok"), ("part", AMD, "ok"), ("part", ARM, "ok"),
        ("solo", AMD, "ok")}
    assert kiln(folder, "push", "--json") == 0  # again: nothing to do
    assert {r["result"] for r in json.loads(capsys.readouterr().out)} == {"present"}

    # a ref serving one platform's manifest where the lock has two: not-an-index
    arm = both["image"].platforms[ARM]
    put_manifest(internal, "team/both", "v1", arm.manifest, ocibuild.MANIFEST)
    assert kiln(folder, "verify-registry", "--json") == 1
    states = {(r["name"], r["platform"]): r["state"] for r in json.loads(capsys.readouterr().out)}
    assert states[("both", AMD)] == states[("both", ARM)] == "not-an-index"
    assert kiln(folder, "push", "--quiet") == 0, capsys.readouterr().err
    assert call(internal, "GET", "team/both/manifests/v1")[0] == both["image"].index
