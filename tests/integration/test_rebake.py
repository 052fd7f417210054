"""A rebake with no change is a no-op, against the real dockerd: shared contexts, --jobs, a
fresh engine; a changed input rebuilds that image only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from kiln import localengine
from kiln.cli import main
from tests.integration.conftest import BUSYBOX

REG = "registry.example.com"
DOCKERFILE = """\
FROM scratch
COPY payload /payload
COPY busybox /bin/busybox
ARG FLAVOUR=plain
COPY marker /marker
LABEL flavour=$FLAVOUR
CMD ["/bin/busybox", "true"]
"""


def shared_context(folder: Path) -> Path:
    """One FROM scratch context that two images build with different args."""
    context = folder / "ctx"
    context.mkdir(parents=True)
    shutil.copy(BUSYBOX, context / "busybox")
    (context / "marker").write_text("shared\n")
    (context / "payload").write_bytes(os.urandom(4 << 20))  # this test's own: no cache hit
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "notes.tmp").write_text("ignored by .dockerignore\n")
    (context / ".dockerignore").write_text("*.tmp\n")
    (folder / "images.yaml").write_text(
        "version: 1\nimages:\n"
        f"  - {{name: one, ref: {REG}/foundation/one:v1,\n"
        "     build: {context: ctx, args: {FLAVOUR: one}}}\n"
        f"  - {{name: two, ref: {REG}/foundation/two:v1,\n"
        "     build: {context: ctx, args: {FLAVOUR: two}}}\n"
        f"environments:\n  it:\n    registry: {REG}\n"
        "    store: {type: dir, path: store}\n")
    return folder / "images.yaml"


REF_ONE, REF_TWO = f"{REG}/foundation/one:v1", f"{REG}/foundation/two:v1"


def bake(config: Path, jobs: int, capsys: pytest.CaptureFixture[str], *rebind: str
         ) -> dict[str, int]:
    """A bake; ``rebind`` names the refs it may move to new content (bake --rebind)."""
    capsys.readouterr()
    code = main(["bake", "--env", "it", "--config", str(config), "--jobs", str(jobs),
                 *(arg for ref in rebind for arg in ("--rebind", ref))])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("kiln: baked it: "), err
    counts: dict[str, int] = json.loads(summary.split(": ", 2)[2].split(" -> ")[0])
    return counts


def lock_bytes(config: Path) -> bytes:
    return (config.parent / "dist/it/images.lock.json").read_bytes()


def entries(config: Path) -> dict[str, dict[str, Any]]:
    lock = json.loads(lock_bytes(config))
    return {e["name"]: e for e in lock["images"]}


def store_files(config: Path) -> set[str]:
    store = config.parent / "store"
    return {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()
            and "locks" not in p.parts}


@pytest.fixture
def fresh_dockerd() -> Iterator[localengine.Daemon]:
    """A second, empty engine (its own containerd and data root): no image, no build cache."""
    base = Path(tempfile.mkdtemp(prefix="kiln-fd-"))
    containerd = localengine.start_containerd(base / "engine")
    try:
        dockerd = localengine.start_dockerd(base / "engine", containerd)
        try:
            yield dockerd
        finally:
            dockerd.stop()
    finally:
        containerd.stop()
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_rebake_of_a_shared_context_with_different_args_changes_nothing(
        tmp_path: Path, dockerd: localengine.Daemon, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], jobs: int) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    config = shared_context(tmp_path)
    assert bake(config, jobs, capsys) == {"uploaded": 2, "unchanged": 0}
    first = lock_bytes(config)
    stored = store_files(config)
    locked = entries(config)
    assert locked["one"]["image_id"] != locked["two"]["image_id"]
    # Someone builds from the same folder without the cache: the engine now holds newer
    # intermediate images with the same steps, and its build cache picks the newest.
    docker_client.images.build(path=str(tmp_path / "ctx"), nocache=True,
                               buildargs={"FLAVOUR": "three"})
    for _ in range(2):
        assert bake(config, jobs, capsys) == {"uploaded": 0, "unchanged": 2}
        assert lock_bytes(config) == first
        assert store_files(config) == stored


def test_a_fresh_engine_keeps_the_lock_and_a_changed_input_rebuilds_that_image_only(
        tmp_path: Path, dockerd: localengine.Daemon, fresh_dockerd: localengine.Daemon,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    config = shared_context(tmp_path)
    bake(config, 2, capsys)
    first = lock_bytes(config)
    stored = store_files(config)

    # A new machine (or a pruned engine): nothing in the engine, the objects in the store.
    monkeypatch.setenv("DOCKER_HOST", fresh_dockerd.address)
    assert bake(config, 2, capsys) == {"uploaded": 0, "unchanged": 2}
    assert lock_bytes(config) == first
    assert store_files(config) == stored

    # A file the engine ignores (.dockerignore) is no input.
    (tmp_path / "ctx/notes.tmp").write_text("changed, still ignored\n")
    assert bake(config, 2, capsys) == {"uploaded": 0, "unchanged": 2}
    assert lock_bytes(config) == first

    # A changed arg rebuilds that image only.
    before = entries(config)
    text = config.read_text()
    config.write_text(text.replace("FLAVOUR: two", "FLAVOUR: deux"))
    assert bake(config, 2, capsys, REF_TWO) == {"uploaded": 1, "unchanged": 1}
    after = entries(config)
    assert after["one"] == before["one"]
    assert after["two"]["image_id"] != before["two"]["image_id"]
    assert after["two"]["inputs"] != before["two"]["inputs"]

    # A changed context file rebuilds both (both COPY it), each to a new image ID.
    (tmp_path / "ctx/marker").write_text("edited\n")
    assert bake(config, 2, capsys, REF_ONE, REF_TWO) == {"uploaded": 2, "unchanged": 0}
    edited = entries(config)
    for name in ("one", "two"):
        assert edited[name]["image_id"] != after[name]["image_id"]
    # and nothing changed since: a no-op again
    second = lock_bytes(config)
    assert bake(config, 2, capsys) == {"uploaded": 0, "unchanged": 2}
    assert lock_bytes(config) == second


def test_a_rebuilt_base_image_rebuilds_what_uses_it(
        tmp_path: Path, dockerd: localengine.Daemon, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    base = f"vendor.example.com/base-{tmp_path.name.lower()}:1"
    (tmp_path / "base").mkdir()
    (tmp_path / "base/file").write_text("base one\n")
    (tmp_path / "base/Dockerfile").write_text("FROM scratch\nCOPY file /file\n")
    docker_client.images.build(path=str(tmp_path / "base"), tag=base)
    (tmp_path / "app").mkdir()
    (tmp_path / "app/app").write_text("app\n")
    (tmp_path / "app/Dockerfile").write_text(f"FROM {base}\nCOPY app /app\n")
    config = tmp_path / "images.yaml"
    config.write_text(
        f"version: 1\nimages:\n  - {{name: app, ref: {REG}/foundation/app:v1, build: app}}\n"
        f"environments:\n  it:\n    registry: {REG}\n    store: {{type: dir, path: store}}\n")
    bake(config, 1, capsys)
    first = entries(config)["app"]
    assert bake(config, 1, capsys) == {"uploaded": 0, "unchanged": 1}
    # the base under that tag is another image now: an input changed
    (tmp_path / "base/file").write_text("base two\n")
    docker_client.images.build(path=str(tmp_path / "base"), tag=base)
    assert bake(config, 1, capsys, f"{REG}/foundation/app:v1") == {"uploaded": 1,
                                                                   "unchanged": 0}
    second = entries(config)["app"]
    assert second["image_id"] != first["image_id"]
    assert second["inputs"] != first["inputs"]
