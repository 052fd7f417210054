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


def registry_image(payload: bytes, arch: str = "amd64") -> tuple[bytes, dict[str, bytes]]:
    """An image as a registry serves one that `docker push` sent: a Docker schema 2 manifest
    (indented, as Docker writes it: its bytes are its identity), a config and one gzip layer.
    Returns the manifest's bytes and every blob by digest (the manifest's included)."""
    import gzip
    import hashlib
    import json

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    layer = gzip.compress(layer_tar({"payload": payload}), mtime=0)
    config = image_config([layer], arch)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": digest(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer), "digest": digest(layer)}],
    }, indent=3).encode()
    return manifest, {digest(b): b for b in (layer, config, manifest)}


def image_index(manifests: list[tuple[bytes, str]]) -> bytes:
    """An OCI index listing ``manifests`` (bytes, "os/arch")."""
    import hashlib
    import json

    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [{
                           "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "digest": "sha256:" + hashlib.sha256(m).hexdigest(), "size": len(m),
                           "platform": {"os": p.split("/")[0], "architecture": p.split("/")[1]}}
                           for m, p in manifests]}).encode()


def write_layout(folder: Path, manifest: bytes, blobs: dict[str, bytes]) -> Path:
    """An OCI layout folder holding one image, as `skopeo copy ... oci:FOLDER:image` writes."""
    import hashlib
    import json

    (folder / "blobs/sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (folder / "blobs/sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    media = json.loads(manifest).get("mediaType", "application/vnd.oci.image.manifest.v1+json")
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": media, "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "image"}}]}))
    return folder
