"""Images copied as they are served: the stored archive holds their bytes, digests kept.

A `pull:` source (and an `archive:` in OCI layout) is copied by skopeo (`copy
--preserve-digests`, kiln/upstream.py) into an OCI layout folder, and written from there into
the stored OCI archive **byte for byte**: the manifest, the config and the compressed layers
as the registry served them, so the image ID (config digest) and the manifest digest are the
upstream's, and upstream signatures still name what the nodes hold. Only the index.json around
them is kiln's: it names the image by its ref, as for what kiln builds (kiln/ociarchive.py),
which is how `ctr import` names it. Nothing is recompressed: the environment's `compression`
applies to what kiln builds or converts, and the lock records the layers' own (unless a pull
source opts in to recompression: kiln/recompressed.py).

Each blob is hashed on the way into the archive and must be the digest and size its manifest
names; the config must be of the platform images.yaml asks for.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kiln import grammar, refs
from kiln.errors import Cancelled
from kiln.manifests import is_index, platform_manifest
from kiln.ociarchive import (
    INDEX,
    MANIFEST,
    METADATA_LIMIT,
    NAME_ANNOTATION,
    blob_name,
    finish_layout,
    named_descriptor,
)
from kiln.tarstream import CHUNK, ArchiveError, TarWriter


@dataclass(frozen=True)
class Served:
    """What a registry serves for a reference, for one platform."""

    manifest_digest: str  # the platform's manifest: what is copied and what nodes hold
    index_digest: str | None  # the index the reference resolves to, when it is one


@dataclass(frozen=True)
class Copied:
    image_id: str  # the config digest, as served
    manifest_digest: str  # as served
    platform: str  # os/arch[/variant] of the config
    compression: str  # of the layers: gzip | zstd | none | mixed
    size: int  # bytes read from the copy


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_digest(manifest: bytes) -> str:
    """The config digest (image ID) an image manifest names."""
    try:
        found = json.loads(manifest)["config"]["digest"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"not an image manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(found, str) or not grammar.matches(grammar.DIGEST, found):
        raise ArchiveError(f"not an image manifest (config digest {str(found)[:80]!r})")
    return found


def lookup(ref: str) -> str:
    """What to ask the registry for ``ref``: a pinned reference by its digest alone (its tag
    is informative only; registries and skopeo take no tag and digest together)."""
    parsed = refs.parse(ref)
    return f"{parsed.repository}@{parsed.digest}" if parsed.digest else ref


def served(raw: bytes, ref: str, platform: str) -> Served:
    """The manifest ``ref`` serves for ``platform``, from the top-level document's bytes as
    served (an index or a manifest). A ``ref`` pinned by digest must be exactly these bytes."""
    digest = digest_of(raw)
    pinned = refs.parse(ref).digest
    if pinned is not None and pinned != digest:
        raise ArchiveError(f"{ref}: the registry served {digest}, not the pinned {pinned}")
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise ArchiveError(f"{ref}: the registry served no manifest ({exc})") from None
    if not is_index(doc):
        return Served(digest, None)
    chosen = platform_manifest(doc, platform)
    if chosen is None or not grammar.matches(grammar.DIGEST, chosen):
        listed = sorted({f"{p.get('os')}/{p.get('architecture')}"
                         for p in (m.get("platform") or {} for m in doc.get("manifests", []))})
        raise ArchiveError(f"{ref}: its index {digest} has no {platform} image (it lists "
                           f"{', '.join(listed) or 'none'})")
    return Served(chosen, digest)


def index_to_name(raw: bytes, served: Served, platforms: tuple[str, ...]) -> bytes | None:
    """The upstream index ``raw`` when nodes may hold its name ``repo@<its digest>``: the
    image is baked for several platforms and they are every one the index lists, so `push`
    serves this very index under the ref (kiln/indexes.py) and a chart pinning its digest is
    served on day 2 as from the node cache on day 1. Else None: nodes hold no index name."""
    if served.index_digest is None or len(platforms) < 2:
        return None
    doc = json.loads(raw)
    listed = {m.get("digest") for m in doc.get("manifests", []) if isinstance(m, dict)}
    held = {platform_manifest(doc, platform) for platform in platforms}
    return raw if held == listed and len(listed) == len(doc["manifests"]) else None


def platform_of(config: dict[str, Any]) -> str:
    found = f"{config.get('os')}/{config.get('architecture')}"
    return f"{found}/{config['variant']}" if config.get("variant") else found


def same_platform(wanted: str, found: str) -> bool:
    """os and architecture equal; the variant too when images.yaml names one."""
    want = wanted.split("/")
    return found.split("/")[:len(want)] == want


def layers_compression(media_types: list[str]) -> str:
    kinds = {"gzip" if m.endswith("gzip") else "zstd" if m.endswith("zstd") else "none"
             for m in media_types}
    return kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "none"


class _Blobs:
    """The blobs of an OCI layout folder, each read only after its digest was checked."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout

    def path(self, desc: dict[str, Any]) -> tuple[Path, int]:
        digest, size = desc.get("digest"), desc.get("size")
        if not grammar.matches(grammar.DIGEST, digest):
            raise ArchiveError(f"the copy names a blob {str(digest)[:80]!r}: not a sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ArchiveError(f"blob {digest}: size {size!r}")
        path = self.layout / blob_name(str(digest))
        try:
            found = path.stat().st_size
        except OSError:
            raise ArchiveError(f"blob {digest} is not in the copy (a foreign layer?)") from None
        if found != size:
            raise ArchiveError(f"blob {digest}: {found} bytes, its descriptor says {size}")
        return path, size

    def small(self, desc: dict[str, Any]) -> bytes:
        """A manifest or config: read whole, its digest checked."""
        path, size = self.path(desc)
        if size > METADATA_LIMIT:
            raise ArchiveError(f"blob {desc['digest']}: {size} bytes, too big for a manifest")
        data = path.read_bytes()
        if digest_of(data) != desc["digest"]:
            raise ArchiveError(f"blob {desc['digest']} holds {digest_of(data)}")
        return data


def archive_kind(path: Path) -> str:
    """``docker`` for a docker-save archive (manifest.json), ``oci`` for an OCI layout."""
    try:
        with tarfile.open(path) as tar:
            names = set()
            for member in tar:
                names.add(member.name.removeprefix("./"))
                if "manifest.json" in names:
                    return "docker"
            if "index.json" in names and "oci-layout" in names:
                return "oci"
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"archive {path} is not a readable tar file: {exc}") from None
    raise ArchiveError(f"archive {path} is neither a docker-save nor an OCI archive")


def layout_digest(layout: Path) -> str:
    """The manifest digest of the image in the OCI layout folder ``layout``."""
    digest = _top(layout).get("digest")
    if not grammar.matches(grammar.DIGEST, digest):
        raise ArchiveError(f"the copy names a manifest {str(digest)[:80]!r}: not a sha256")
    return str(digest)


def _top(layout: Path) -> dict[str, Any]:
    """The one manifest descriptor skopeo's index.json lists."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        (desc,) = index["manifests"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"the copy's index.json does not list one image ({exc})") from None
    if not isinstance(desc, dict):
        raise ArchiveError("the copy's index.json does not list one image")
    return desc


def write_archive(layout: Path, ref: str, platform: str, sink: Callable[[bytes], None],
                  progress: Callable[[int], None] = lambda _: None,
                  cancel: threading.Event | None = None, index: bytes | None = None) -> Copied:
    """The image of the OCI layout folder ``layout`` as the stored archive on ``sink``, named
    ``ref``: its blobs byte for byte (see the module doc). With ``index`` (the upstream index
    it was picked from, as served), the archive holds that index too, named
    ``repo@<its digest>``: `ctr import` gives nodes that name (the CRI resolves a chart's
    index-digest pin against it); its other platforms' manifests are not in the archive."""
    blobs = _Blobs(layout)
    top = _top(layout)
    manifest_bytes = blobs.small(top)
    try:
        manifest = json.loads(manifest_bytes)
        if is_index(manifest):
            raise ArchiveError(f"the copy of {ref} is an index, not one platform's manifest")
        config_desc, layer_descs = manifest["config"], list(manifest["layers"])
        config = json.loads(blobs.small(config_desc))
        found = platform_of(config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"the copy of {ref} is not an image manifest ({exc})") from None
    if not same_platform(platform, found):
        raise ArchiveError(f"the copy of {ref} is a {found} image; images.yaml asks for "
                           f"{platform}")
    out = TarWriter(sink)
    read = _Reader(progress, cancel)
    for desc in layer_descs:
        path, size = blobs.path(desc)
        with path.open("rb") as stream:
            read.start(stream)
            out.add_file(blob_name(desc["digest"]), size, read)
        if read.digest() != desc["digest"]:
            raise ArchiveError(f"layer {desc['digest']} of {ref} holds {read.digest()}")
    out.add_bytes(blob_name(config_desc["digest"]), blobs.small(config_desc))
    out.add_bytes(blob_name(top["digest"]), manifest_bytes)
    media = str(manifest.get("mediaType") or top.get("mediaType") or MANIFEST)
    platform_desc = {"os": str(config.get("os")), "architecture": str(config.get("architecture"))}
    if config.get("variant"):
        platform_desc["variant"] = str(config["variant"])
    named = [named_descriptor(media, top["digest"], len(manifest_bytes), platform_desc, ref)]
    if index is not None:
        named.append(_index_descriptor(index, top["digest"], ref))
        out.add_bytes(blob_name(named[-1]["digest"]), index)
    finish_layout(named, out)
    compression = layers_compression([str(d.get("mediaType", "")) for d in layer_descs])
    return Copied(str(config_desc["digest"]), str(top["digest"]), found, compression,
                  read.total + len(manifest_bytes) + int(config_desc["size"]))


def _index_descriptor(index: bytes, manifest_digest: str, ref: str) -> dict[str, Any]:
    """The index.json entry naming the upstream ``index`` ``repo@<digest>``: it must list the
    manifest copied (else it is not the index that manifest was picked from)."""
    try:
        doc = json.loads(index)
        listed = {m.get("digest") for m in doc["manifests"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"the upstream index of {ref} is not an index ({exc})") from None
    if not is_index(doc) or manifest_digest not in listed:
        raise ArchiveError(f"the upstream index of {ref} does not list {manifest_digest}")
    digest = digest_of(index)
    return {"mediaType": str(doc.get("mediaType") or INDEX), "digest": digest,
            "size": len(index),
            "annotations": {NAME_ANNOTATION: f"{refs.parse(ref).repository}@{digest}"}}


class _Reader:
    """A layer's file for the tar writer: hashed, counted and cancellable on the way."""

    def __init__(self, progress: Callable[[int], None], cancel: threading.Event | None) -> None:
        self.progress = progress
        self.cancel = cancel
        self.total = 0
        self.stream: BinaryIO | None = None
        self.hash = hashlib.sha256()

    def start(self, stream: BinaryIO) -> None:
        self.stream, self.hash = stream, hashlib.sha256()

    def read(self, size: int = CHUNK, /) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        assert self.stream is not None
        chunk = self.stream.read(size)
        self.hash.update(chunk)
        self.total += len(chunk)
        self.progress(self.total)
        return chunk

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()
