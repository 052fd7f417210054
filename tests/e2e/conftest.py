"""The boot tier: real VMs under qemu (TCG), cloud-init and containerd inside the guest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.localengine import Daemon
from tests.e2e.baseimage import BaseImage, build
from tests.integration.conftest import (  # noqa: F401  (the engine fixtures, shared)
    containerd,
    docker_client,
    dockerd,
    engine_root,
)

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture
def dev_project(tmp_path: Path, dockerd: Daemon,  # noqa: F811
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped dev environment, baked."""
    for name in ("images.yaml", "images", "deploy", "packer"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        elif source.exists():
            shutil.copy(source, tmp_path / name)
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    assert main(["bake", "--env", "dev", "--config", str(tmp_path / "images.yaml"),
                 "--quiet"]) == 0
    return tmp_path


@pytest.fixture(scope="session")
def base_image() -> BaseImage:
    if os.geteuid() != 0:
        pytest.fail("the boot tests build a disk image with debootstrap: run them as root")
    missing = [t for t in ("debootstrap", "qemu-system-x86_64", "qemu-img", "cloud-localds",
                           "mkfs.ext4") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run .ci/run (debootstrap, qemu-system-x86, "
                    "qemu-utils, cloud-image-utils)")
    return build()
