"""The boot tier: real VMs under qemu (TCG), cloud-init and containerd inside the guest."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.e2e.baseimage import BaseImage, build
from tests.integration.conftest import (  # noqa: F401  (the engine fixtures, shared)
    containerd,
    docker_client,
    dockerd,
    engine_root,
)


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
