"""Small helpers shared by the test tiers."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Create ``files`` (path -> text, dedented) below ``root``; return root."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer: a tar of ``files`` (path -> content)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def uncompressed(layer: bytes) -> bytes:
    """A layer's tar: gzip and zstd layers decompressed (a diff ID is of these bytes)."""
    import gzip

    import zstandard

    try:
        if layer.startswith(b"\x1f\x8b"):
            return gzip.decompress(layer)
        if layer.startswith(b"\x28\xb5\x2f\xfd"):
            return zstandard.ZstdDecompressor().decompressobj().decompress(layer)
    except (OSError, EOFError, zstandard.ZstdError):
        pass  # a broken layer, on purpose: its config names its bytes
    return layer


def image_config(layers: list[bytes], arch: str = "amd64") -> bytes:
    """A Docker image config for ``layers``; its sha256 is the image ID."""
    import hashlib
    import json

    diff_ids = ["sha256:" + hashlib.sha256(uncompressed(layer)).hexdigest() for layer in layers]
    return json.dumps({"architecture": arch, "os": "linux", "config": {},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def docker_save(images: list[tuple[str, list[bytes]]], oci_shaped: bool = False) -> bytes:
    """What `docker save REF...` writes for ``images`` (ref, layers): the legacy layout, a
    repeated layer as a symlink as Docker does, or (``oci_shaped``) Docker 25's blobs/ layout."""
    import hashlib
    import io
    import json
    import tarfile

    out = io.BytesIO()
    seen: dict[str, str] = {}
    entries = []
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for ref, layers in images:
            paths = []
            for layer in layers:
                hexdigest = hashlib.sha256(layer).hexdigest()
                path = f"blobs/sha256/{hexdigest}" if oci_shaped else f"{hexdigest}/layer.tar"
                if hexdigest not in seen:
                    put(path, layer)
                elif not oci_shaped:
                    path = f"{hexdigest[::-1]}/layer.tar"
                    link = tarfile.TarInfo(path)
                    link.type, link.linkname = tarfile.SYMTYPE, f"../{seen[hexdigest]}"
                    tar.addfile(link)
                seen.setdefault(hexdigest, path)
                paths.append(path)
            config = image_config(layers)
            config_hex = hashlib.sha256(config).hexdigest()
            config_path = f"blobs/sha256/{config_hex}" if oci_shaped else f"{config_hex}.json"
            put(config_path, config)
            entries.append({"Config": config_path, "RepoTags": [ref], "Layers": paths})
        put("manifest.json", json.dumps(entries).encode())
        put("repositories", b"{}")
    return out.getvalue()


# A real self-signed certificate (EC P-256, CN=kiln-test-ca): CA bundles are parsed strictly.
TEST_CA = """-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIUZfD8OxmobLeCuUaHkpexNEoD7UowCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMa2lsbi10ZXN0LWNhMCAXDTI2MTEyODE0MTYzNVoYDzIxMjYx
MTA0MTQxNjM1WjAXMRUwEwYDVQQDDAxraWxuLXRlc3QtY2EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAARq3B0SoGHbEn6/gpl33uZV29WRoXkZwE72BKI4xRxIjRuY
MFB7fRLM8e79tsfq93SpGTIVGbLBnjg81KoWvpabo1MwUTAdBgNVHQ4EFgQUUJ+p
kCRN9a2QDm6K9kb5oSt/IwkwHwYDVR0jBBgwFoAUUJ+pkCRN9a2QDm6K9kb5oSt/
IwkwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiAOgXkdrRONAEmS
XEC1R3OQ59FnL1vYfdz/g4OBdOaKiQIhAProsrR5fbYu7BqTmT+qVAYFM0eCktcg
sWLCMeqNDrpa
-----END CERTIFICATE-----
"""
