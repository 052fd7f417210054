"""Image indexes (OCI index, Docker manifest list): which manifest serves a platform.

Read the same way wherever an index turns up: in containerd's content store (`kiln verify`)
and in a registry (`kiln verify-registry`).
"""

from __future__ import annotations

from typing import Any

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


def is_index(doc: dict[str, Any]) -> bool:
    """Is this manifest document an index (a list of per-platform manifests)?"""
    return doc.get("mediaType") in INDEX_TYPES or "manifests" in doc


def platform_manifest(index: dict[str, Any], platform: str) -> str | None:
    """The digest of the manifest for ``platform`` ("os/arch[/variant]"; os and architecture
    compared) in an index, or None when it lists none."""
    os_name, _, arch = platform.partition("/")
    arch = arch.split("/")[0]
    for entry in index.get("manifests", []):
        plat = entry.get("platform", {})
        if plat.get("os") == os_name and plat.get("architecture") == arch:
            return str(entry["digest"])
    return None
