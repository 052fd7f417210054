"""The stored object: an OCI image-layout archive whose layers are compressed one by one.

`docker save` writes every layer uncompressed. Imported as is, containerd 1.6 copies each
uncompressed layer into its content store (hashing it in ctr and again in containerd) before
unpacking it: on these machines that copy took 70% of `ctr images import`. Here the engine's
archive is rewritten, in one pass, into the layout a registry would serve: each layer
compressed on its own (zstd or gzip, the environment's `compression`), then the config
unchanged (so the image ID stays the config digest), one OCI manifest per image and an
`index.json` naming every image by its fully-qualified ref (`io.containerd.image.name` and
`org.opencontainers.image.ref.name`). containerd stores the compressed layers and unpacks from
them; `skopeo copy oci-archive:FILE:REF docker://REF` pushes the same bytes on day 2. The
archive itself is not compressed again: its layers already are.

Both `docker save` layouts are read: the legacy one (`<id>/layer.tar`, duplicates as
symlinks) and the OCI-shaped one of Docker 25+ (`blobs/sha256/<hex>`). A layer that arrives
already gzip- or zstd-compressed is kept as it is, and decompressed on the way through (a
chunk at a time) to hash it. Every layer's uncompressed sha256 is checked against the
config's `rootfs.diff_ids` before the manifest is written, so a store never holds an archive
that containerd would refuse to unpack.

The tar reader is total: any byte string ends, after a number of steps bounded by its
length, in a conversion or an ArchiveError (strict PAX records, every size checked, extended
headers bounded in size and number, metadata bounded in all).
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import posixpath
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Protocol, cast

import zstandard

from kiln.files import spool
from kiln.manifests import INDEX_TYPES
from kiln.model import Compression
from kiln.tarstream import CHUNK, ArchiveError, TarReader, TarWriter

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_TYPES = {"zstd": LAYER + "+zstd", "gzip": LAYER + "+gzip", "": LAYER}
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
METADATA_LIMIT = 64 << 20  # a JSON file in an engine's archive is never near this big


@dataclass(frozen=True)
class Blob:
    digest: str  # sha256:<hex> of the stored (compressed) bytes
    size: int
    media_type: str
    diff_id: str  # sha256 of the uncompressed layer (decompressed when it came compressed)


@dataclass(frozen=True)
class Converted:
    raw_size: int  # bytes read from the engine's archive (a copied image: bytes copied)
    images: dict[str, str]  # ref -> image ID (config digest)
    manifests: dict[str, str] = field(default_factory=dict)  # ref -> manifest digest


# Images are compressed side by side (bake --jobs), so each stream compresses in its own
# thread; zstandard releases the GIL while it works.
ZSTD_THREADS = 0


class _Compressor(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes: ...

    def flush(self) -> bytes: ...


def compressor(compression: Compression) -> _Compressor:
    if compression.algorithm == "zstd":
        cctx = zstandard.ZstdCompressor(level=compression.level, threads=ZSTD_THREADS,
                                        write_checksum=True)
        return cctx.compressobj()
    # wbits 31: a gzip stream with mtime 0, so equal input gives equal bytes
    return zlib.compressobj(compression.level, zlib.DEFLATED, 31)


def magic_compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``""`` (uncompressed) from a stream's first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return ""


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _is_layer(name: str, head: bytes) -> bool:
    """A layer is a tar (compressed or not); everything else in `docker save` is JSON."""
    return (name.endswith("/layer.tar") or head[257:262] == b"ustar"
            or bool(magic_compression(head)) or (bool(head) and not head.strip(b"\0")))


def _layer(pieces: Iterable[memoryview | bytes], kept: str, compression: Compression,
           out: TarWriter) -> Blob:
    """Compress one layer into a spool, then write it as a blob; return its descriptor.

    A layer that comes compressed (``kept``) is stored as it is, and decompressed on the way
    through (bounded: a chunk at a time) to hash its diff ID, which the config must name
    like any other layer's.
    """
    stored_hash, raw_hash = hashlib.sha256(), hashlib.sha256()
    size = 0
    with spool("kiln-layer-") as buffer:
        if kept:
            def keep(chunk: memoryview | bytes) -> None:
                nonlocal size
                stored_hash.update(chunk)
                buffer.write(chunk)
                size += len(chunk)

            for raw in _inflate(pieces, kept, keep):
                raw_hash.update(raw)
        else:
            comp = compressor(compression)
            for piece in pieces:
                raw_hash.update(piece)
                packed = comp.compress(piece)
                stored_hash.update(packed)
                buffer.write(packed)
                size += len(packed)
            tail = comp.flush()
            stored_hash.update(tail)
            buffer.write(tail)
            size += len(tail)
        digest = "sha256:" + stored_hash.hexdigest()
        buffer.seek(0)
        out.add_file(blob_name(digest), size, buffer)
    media = LAYER_TYPES[kept or compression.algorithm]
    return Blob(digest, size, media, "sha256:" + raw_hash.hexdigest())


class _Tee:
    """A file-like view of ``pieces`` for a decompressor; each piece read is also kept."""

    def __init__(self, pieces: Iterable[memoryview | bytes],
                 keep: Callable[[memoryview | bytes], None]) -> None:
        self.pieces = iter(pieces)
        self.keep = keep
        self.left = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if not self.left:
            piece = next(self.pieces, None)
            if piece is None:
                return b""
            self.keep(piece)
            self.left = memoryview(piece)
        n = len(self.left) if size is None or size < 0 else size
        chunk, self.left = self.left[:n], self.left[n:]
        return bytes(chunk)

    def readinto(self, target: bytearray | memoryview) -> int:
        chunk = self.read(len(target))
        target[:len(chunk)] = chunk
        return len(chunk)


def _inflate(pieces: Iterable[memoryview | bytes], kind: str,
             keep: Callable[[memoryview | bytes], None]) -> Iterator[bytes]:
    """The uncompressed bytes of a gzip or zstd layer, CHUNK at a time; every compressed
    byte passes through ``keep``."""
    tee = cast(IO[bytes], _Tee(pieces, keep))
    reader: _Readable
    try:
        if kind == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(
                tee, read_size=CHUNK, read_across_frames=True)
        else:
            reader = gzip.GzipFile(fileobj=tee, mode="rb")
        while chunk := reader.read(CHUNK):
            yield chunk
        while tee.read(CHUNK):  # nothing may follow the compressed data unread
            raise ArchiveError(f"a {kind} layer has data after its end")
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise ArchiveError(f"a {kind} layer does not decompress: {exc}") from None


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _platform(config: dict[str, Any]) -> dict[str, str]:
    platform = {"os": str(config.get("os", "linux")),
                "architecture": str(config.get("architecture", "amd64"))}
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return platform


def convert(chunks: Iterable[bytes], compression: Compression, sink: Callable[[bytes], None],
            progress: Callable[[int], None] = lambda _: None,
            cancel: threading.Event | None = None) -> Converted:
    """Rewrite a `docker save` stream into an OCI archive on ``sink`` (see the module doc)."""
    reader = TarReader(chunks, progress, cancel)
    out = TarWriter(sink)
    layers: dict[str, Blob] = {}  # member path -> blob
    links: dict[str, str] = {}  # member path -> the path it points at
    metadata: dict[str, bytes] = {}
    kept = 0  # bytes of metadata held in memory
    for member, size in reader.members():
        name = posixpath.normpath(member.name)
        if member.issym() or member.islnk():
            base = posixpath.dirname(name) if member.issym() else ""
            links[name] = posixpath.normpath(posixpath.join(base, member.linkname))
        if not member.isfile():
            reader.skip(size)
            reader.pad(size)
            continue
        head = reader.read(min(size, 1024))
        rest = reader.pieces(size - len(head))
        if _is_layer(name, head):
            layers[name] = _layer(itertools.chain([head], rest),
                                  magic_compression(head), compression, out)
        elif size > METADATA_LIMIT - kept:
            raise ArchiveError(f"{name}: {size} bytes, neither a layer nor metadata (the "
                               f"archive's JSON files may hold {METADATA_LIMIT} bytes in all)")
        else:
            metadata[name] = head + b"".join(rest)
            kept += size
        reader.pad(size)
    reader.drain()
    images, manifests = _finish(metadata, layers, links, out)
    return Converted(reader.total, images, manifests)


Named = tuple[dict[str, str], dict[str, str]]  # ref -> image ID, ref -> manifest digest


def _finish(metadata: dict[str, bytes], layers: dict[str, Blob], links: dict[str, str],
            out: TarWriter) -> Named:
    """Configs, one manifest per image, index.json naming them: the archive's last entries."""
    def resolve(path: str) -> str:
        seen = 0
        while path in links and seen < 40:
            path, seen = links[path], seen + 1
        return path

    if "manifest.json" not in metadata:
        raise ArchiveError("the engine's archive has no manifest.json")
    try:
        return _index(metadata, layers, resolve, out)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ArchiveError(f"the engine's manifest.json is not as `docker save` writes it "
                           f"({type(exc).__name__}: {exc})") from None


def _index(metadata: dict[str, bytes], layers: dict[str, Blob], resolve: Callable[[str], str],
           out: TarWriter) -> Named:
    entries = json.loads(metadata["manifest.json"])
    images: dict[str, str] = {}
    manifests: dict[str, str] = {}
    index: list[dict[str, Any]] = []
    for entry in entries:
        config_path = resolve(posixpath.normpath(entry["Config"]))
        if config_path not in metadata:
            raise ArchiveError(f"the engine's archive lacks the config {entry['Config']}")
        config_bytes = metadata[config_path]
        config = json.loads(config_bytes)
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
        blobs = []
        for path in entry["Layers"]:
            blob = layers.get(resolve(posixpath.normpath(path)))
            if blob is None:
                raise ArchiveError(f"the engine's archive lacks the layer {path}")
            blobs.append(blob)
        if len(blobs) != len(diff_ids):
            raise ArchiveError(f"image {config_digest}: {len(blobs)} layers, but its config "
                               f"lists {len(diff_ids)}")
        for number, (blob, diff_id) in enumerate(zip(blobs, diff_ids, strict=True), 1):
            if blob.diff_id != diff_id:
                raise ArchiveError(f"image {config_digest}: layer {number} is {blob.diff_id}, "
                                   f"its config says {diff_id}")
        out.add_bytes(blob_name(config_digest), config_bytes)
        manifest = _json({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size}
                       for b in blobs],
        })
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        out.add_bytes(blob_name(manifest_digest), manifest)
        tags = entry.get("RepoTags") or []
        if not tags:
            raise ArchiveError(f"image {config_digest} has no name in the engine's archive")
        for ref in tags:
            images[ref], manifests[ref] = config_digest, manifest_digest
            index.append(named_descriptor(MANIFEST, manifest_digest, len(manifest),
                                          _platform(config), ref))
    finish_layout(index, out)
    return images, manifests


def named_descriptor(media_type: str, digest: str, size: int, platform: dict[str, str],
                     ref: str) -> dict[str, Any]:
    """An index.json entry naming a manifest by ``ref``: containerd's import names the image
    after ``io.containerd.image.name``, skopeo finds it by ``org.opencontainers.image.ref.name``."""
    return {"mediaType": media_type, "digest": digest, "size": size, "platform": platform,
            "annotations": {NAME_ANNOTATION: ref, REF_ANNOTATION: ref}}


def finish_layout(index: list[dict[str, Any]], out: TarWriter) -> None:
    """The archive's last entries: oci-layout and index.json (``index``, sorted by name)."""
    index.sort(key=lambda d: d["annotations"][NAME_ANNOTATION])
    out.add_bytes("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    out.add_bytes("index.json", _json({"schemaVersion": 2, "mediaType": INDEX,
                                       "manifests": index}))
    out.close()


@dataclass(frozen=True)
class ArchivedImage:
    ref: str
    image_id: str
    platform: str
    layers: tuple[tuple[str, str, int], ...]  # (media type, digest, size)
    manifest_digest: str = ""


def describe(stream: BinaryIO) -> list[ArchivedImage]:
    """The images a stored archive names, each blob's digest checked (for tests and checks)."""
    blobs: dict[str, bytes] = {}
    index: dict[str, Any] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            data = tar.extractfile(member)
            if data is None:
                continue
            body = data.read()
            if member.name == "index.json":
                index = json.loads(body)
            elif member.name.startswith("blobs/sha256/"):
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                if blob_name(digest) != member.name:
                    raise ArchiveError(f"{member.name}: content is {digest}")
                blobs[digest] = body if len(body) < METADATA_LIMIT else b""
    found = []
    for desc in index.get("manifests", []):
        if desc.get("mediaType") in INDEX_TYPES:
            continue  # the upstream index, named for nodes (kiln/copied.py): not an image
        manifest = json.loads(blobs[desc["digest"]])
        platform = desc.get("platform", {})
        found.append(ArchivedImage(
            desc["annotations"][NAME_ANNOTATION], manifest["config"]["digest"],
            f"{platform.get('os')}/{platform.get('architecture')}",
            tuple((layer["mediaType"], layer["digest"], layer["size"])
                  for layer in manifest["layers"]), desc["digest"]))
        for layer in manifest["layers"]:
            if layer["digest"] not in blobs:
                raise ArchiveError(f"{desc['annotations'][NAME_ANNOTATION]}: layer "
                                   f"{layer['digest']} is not in the archive")
    return found


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
