"""Export stream -> compress -> sha256 -> store, as one pass over the bytes.

Nothing uncompressed touches the disk and memory stays bounded by the store writer's
in-flight parts. The object's key is its sha256, known only at the end, so the writer
publishes on commit; any failure or cancellation aborts it and nothing becomes visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import zlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import zstandard

from kiln.config import Compression
from kiln.errors import Cancelled, KilnError
from kiln.stores import Store, blob_key

# Images are compressed side by side (bake --jobs), so each stream compresses in its own
# thread; zstandard releases the GIL while it works.
ZSTD_THREADS = 0


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


def compressor(compression: Compression) -> _Compressor:
    if compression.algorithm == "zstd":
        cctx = zstandard.ZstdCompressor(level=compression.level, threads=ZSTD_THREADS,
                                        write_checksum=True)
        return cctx.compressobj()
    # wbits 31: a gzip stream with mtime 0, so equal input gives equal bytes
    return zlib.compressobj(compression.level, zlib.DEFLATED, 31)


def decompress(data: bytes, algorithm: str) -> bytes:
    """The inverse, for tests and checks (the node side decompresses in a pipe)."""
    if algorithm == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return zlib.decompress(data, 31)


def unpack_to(stream: BinaryIO, algorithm: str, expected_sha256: str, dest: Path) -> None:
    """Decompress a stored object into ``dest``, checking its sha256 on the way (streaming)."""
    digest = hashlib.sha256()
    decomp: Any = (zstandard.ZstdDecompressor().decompressobj() if algorithm == "zstd"
                   else zlib.decompressobj(31))
    with dest.open("wb") as out:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            out.write(decomp.decompress(chunk))
        if algorithm != "zstd":
            out.write(decomp.flush())
    if digest.hexdigest() != expected_sha256:
        dest.unlink(missing_ok=True)
        raise KilnError(f"stored object is not what the lock says: sha256 {digest.hexdigest()}, "
                        f"expected {expected_sha256}")


@dataclass(frozen=True)
class Published:
    key: str
    sha256: str
    size: int
    uncompressed_size: int
    uploaded: bool  # False when an equal object was already in the store


def publish(
    chunks: Iterable[bytes],
    store: Store,
    compression: Compression,
    size_hint: int,
    progress: Callable[[int], None] = lambda _: None,
    cancel: threading.Event | None = None,
    cpu_slot: AbstractContextManager[object] | None = None,
) -> Published:
    """Compress ``chunks`` into the store under ``<prefix>blobs/sha256/<hex>``.

    ``cpu_slot`` is held while exporting and compressing, and released for the upload, so
    that a bake can compress the next image while this one is still on the wire.
    """
    writer = store.writer(size_hint, cancel)
    digest = hashlib.sha256()
    raw = stored = 0
    try:
        with cpu_slot or contextlib.nullcontext():
            comp = compressor(compression)
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("interrupted")
                raw += len(chunk)
                out = comp.compress(chunk)
                if out:
                    digest.update(out)
                    writer.write(out)
                    stored += len(out)
                progress(raw)
            out = comp.flush()
            digest.update(out)
            writer.write(out)
            stored += len(out)
        key = blob_key(store.prefix, digest.hexdigest())
        uploaded = writer.commit(key)
    except BaseException:
        writer.abort()
        raise
    return Published(key, digest.hexdigest(), stored, raw, uploaded)
