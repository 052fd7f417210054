"""Platforms: the node's, from its machine name (as `uname -m` prints it), and the lock's
entries a node of one platform imports. Core: the importer (templates/import-images.sh) keeps
the same table in sh."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from kiln.lock import LockedImage


class _Entry(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def platform(self) -> str: ...


MACHINES = {
    "x86_64": "linux/amd64", "amd64": "linux/amd64",
    "aarch64": "linux/arm64", "arm64": "linux/arm64",
    "armv7l": "linux/arm/v7", "armv6l": "linux/arm/v6",
    "ppc64le": "linux/ppc64le", "s390x": "linux/s390x", "riscv64": "linux/riscv64",
    "i386": "linux/386", "i686": "linux/386",
}


def of_machine(machine: str) -> str | None:
    """The platform of a machine named as `uname -m` names it (None: unknown)."""
    return MACHINES.get(machine)


def serves(locked: str, node: str) -> bool:
    """Does an entry locked for ``locked`` serve a node of ``node`` (linux/arm: arm/v7 too)?"""
    return locked == node or node.startswith(locked + "/")


def for_platform(images: Iterable[LockedImage], platform: str | None
                 ) -> tuple[list[LockedImage], list[str]]:
    """The entries a node of ``platform`` imports (None: every entry), and the names of the
    images the lock has for other platforms only: each is missing on such a node."""
    images = list(images)
    if platform is None:
        return images, []
    ours = [i for i in images if serves(i.platform, platform)]
    names = {i.name for i in ours}
    lacking = sorted({i.name for i in images if i.name not in names})
    return ours, lacking



def several(*groups: Iterable[_Entry]) -> set[str]:
    """The names that either group (the lock's entries, images.yaml's per platform) has for
    more than one platform."""
    return {name for group in groups
            for name, n in Counter(e.name for e in group).items() if n > 1}


def label(entry: _Entry, multi: set[str]) -> str:
    """What diff and release notes call an entry: its name, with its platform
    (``app (linux/arm64)``) when the image has several (``multi``, from several())."""
    return f"{entry.name} ({entry.platform})" if entry.name in multi else entry.name
