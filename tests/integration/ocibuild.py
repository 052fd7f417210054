"""Multi-platform OCI images written in Python (no engine): `FROM scratch`-style images of one
gzip layer each, their manifests, and an index naming them, as blobs by digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(payload: bytes) -> tuple[bytes, bytes]:
    """A tar holding /payload, gzip-compressed (deterministic): (compressed, uncompressed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("payload")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), plain


@dataclass
class Platform:
    platform: str
    config: bytes
    manifest: bytes
    layer: bytes

    @property
    def digest(self) -> str:
        return digest(self.manifest)

    @property
    def image_id(self) -> str:
        return digest(self.config)


@dataclass
class MultiImage:
    platforms: dict[str, Platform] = field(default_factory=dict)
    index: bytes = b""

    @property
    def index_digest(self) -> str:
        return digest(self.index)

    def blobs(self, only: str | None = None) -> dict[str, bytes]:
        """Every blob (or only one platform's, with the index), by digest."""
        out = {self.index_digest: self.index}
        for name, p in self.platforms.items():
            if only is None or name == only:
                out.update({p.digest: p.manifest, p.image_id: p.config, digest(p.layer): p.layer})
        return out


def image(payloads: dict[str, bytes]) -> MultiImage:
    """An index of one image per platform (``linux/amd64``: payload), each of one layer."""
    made = MultiImage()
    entries = []
    for platform, payload in payloads.items():
        os_, arch, *variant = platform.split("/")
        layer, plain = _layer(payload)
        config = json.dumps({
            "architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {}),
            "config": {"Cmd": ["/payload"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(plain)]}}, sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": digest(layer), "size": len(layer)}]},
            sort_keys=True).encode()
        made.platforms[platform] = Platform(platform, config, manifest, layer)
        entries.append({"mediaType": MANIFEST, "digest": digest(manifest), "size": len(manifest),
                        "platform": {"os": os_, "architecture": arch,
                                     **({"variant": variant[0]} if variant else {})}})
    made.index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries},
                            sort_keys=True).encode()
    return made


def oci_archive(blobs: dict[str, bytes], top: list[dict[str, object]]) -> bytes:
    """An OCI layout tar of ``blobs`` whose index.json lists the descriptors ``top``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
                 "index.json": json.dumps({"schemaVersion": 2, "manifests": top}).encode(),
                 **{f"blobs/sha256/{d[7:]}": b for d, b in sorted(blobs.items())}}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
