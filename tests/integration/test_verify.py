"""`kiln verify` against a real containerd: each wrong state is made for real."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from kiln.cli import main
from kiln.localengine import Daemon
from tests.integration.conftest import REG, scratch_context
from tests.integration.nodes import Node, make_node


@pytest.fixture
def imported(baked: Path, tmp_path: Path, fresh_containerd: Daemon) -> Iterator[Node]:
    """A node on which the importer has put both images."""
    for node in make_node(baked, tmp_path, fresh_containerd):
        assert node.run().returncode == 0, node.logs[-1]
        yield node


def verify(node: Node, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    assert node.containerd is not None
    capsys.readouterr()
    code = main(["verify", "--env", "it", "--config", str(node.folder / "images.yaml"),
                 "--dist", str(node.folder / "dist"), "--containerd-address",
                 str(node.containerd.socket), "--json"])
    found = json.loads(capsys.readouterr().out)
    return code, {f["name"]: f["state"] for f in found}


def ctr(node: Node, *args: str, stdin: bytes | None = None) -> None:
    assert node.containerd is not None
    subprocess.run(["ctr", "--address", str(node.containerd.socket), *args], input=stdin,
                   check=True, capture_output=True)


def delete(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    ctr(node, "-n", "k8s.io", "images", "rm", f"{REG}/foundation/small:v1")


def other_image(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    ref = f"{REG}/foundation/small:v1"
    docker_client.images.build(path=str(scratch_context(tmp_path / "other", "other bytes")),
                               tag=ref)
    archive = b"".join(docker_client.api.get_image(ref))
    ctr(node, "-n", "k8s.io", "images", "import", "-", stdin=archive)


def unpin(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    ctr(node, "-n", "k8s.io", "images", "label", f"{REG}/foundation/small:v1",
        "io.cri-containerd.pinned=")


def default_namespace(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    delete(node, docker_client, tmp_path)
    small = next(i for i in node.lock.images if i.name == "small")
    archive = (node.folder / "store" / small.key).read_bytes()
    ctr(node, "-n", "default", "images", "import", "-", stdin=archive)


def drop_digest_name(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    small = next(i for i in node.lock.images if i.name == "small")
    assert small.digest_ref is not None
    ctr(node, "-n", "k8s.io", "images", "rm", small.digest_ref)


def unpin_digest_name(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    small = next(i for i in node.lock.images if i.name == "small")
    assert small.digest_ref is not None
    ctr(node, "-n", "k8s.io", "images", "label", small.digest_ref, "io.cri-containerd.pinned=")


def resaved(node: Node, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    """The same image (config) under another manifest: the engine's `docker save` of it,
    imported by hand (containerd writes its own manifest for such an archive)."""
    small = next(i for i in node.lock.images if i.name == "small")
    docker_client.api.tag(small.image_id, "kiln-test/resaved", "v1")
    archive = b"".join(docker_client.api.get_image("kiln-test/resaved:v1"))
    ctr(node, "-n", "k8s.io", "images", "import", "-", stdin=archive)
    ctr(node, "-n", "k8s.io", "images", "tag", "--force", "docker.io/kiln-test/resaved:v1",
        small.ref)


@pytest.mark.parametrize(("damage", "state"), [
    (delete, "missing"),
    (other_image, "wrong-image-id"),
    (unpin, "not-pinned"),
    (default_namespace, "not-visible-to-cri"),
    (drop_digest_name, "missing-digest-ref"),
    (unpin_digest_name, "not-pinned"),
    (resaved, "wrong-digest"),
])
def test_each_wrong_state_is_reported(
        imported: Node, docker_client: docker.DockerClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        damage: Callable[[Node, docker.DockerClient, Path], None], state: str) -> None:
    assert verify(imported, capsys) == (0, {"small": "present", "big": "present"})
    damage(imported, docker_client, tmp_path)
    assert verify(imported, capsys) == (1, {"small": state, "big": "present"})
