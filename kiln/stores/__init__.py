"""Object stores behind one small interface: content-addressed blobs, streamed in.

A writer receives the compressed stream without knowing its final key (the key is the
stream's sha256, known only at the end); ``commit`` publishes it under that key so that an
object is visible only when complete, and ``abort`` leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from kiln import config
from kiln.errors import KilnError

BLOB_PREFIX = "blobs/sha256/"


class StoreError(KilnError):
    """The store cannot be reached, refuses access, or cannot take the object."""


def blob_key(prefix: str, sha256_hex: str) -> str:
    return f"{prefix}{BLOB_PREFIX}{sha256_hex}"


def lock_key(prefix: str, env: str) -> str:
    return f"{prefix}locks/{env}/images.lock.json"


@dataclass(frozen=True)
class Entry:
    """An object (or an unfinished upload) as the store lists it."""

    size: int
    modified: float  # seconds since the epoch: last written (uploads: when started)


def sha256_of(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    """The hex sha256 of everything ``stream`` yields."""
    digest = hashlib.sha256()
    while block := stream.read(chunk):
        digest.update(block)
    return digest.hexdigest()


class ObjectWriter(Protocol):
    def write(self, chunk: bytes) -> None: ...

    def commit(self, key: str) -> bool:
        """Publish what was written under ``key``; False when an equal object was there."""
        ...

    def abort(self) -> None:
        """Drop everything written; nothing becomes visible."""
        ...


class SourceStream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class Source(Protocol):
    """An object's bytes that can be read again, from any offset: what a store is handed
    instead of a stream when the bytes already lie on disk (kiln/replay.py), so that nothing
    is spooled."""

    size: int

    def open(self, cancel: threading.Event | None = None) -> SourceStream:
        """A stream of the bytes from the first; reading with ``cancel`` set fails."""
        ...

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``; safe from several threads."""
        ...


class Store(Protocol):
    prefix: str

    def describe(self) -> str:
        """Where the store is, for messages (no secrets)."""
        ...

    def check(self) -> None:
        """Raise StoreError when the store cannot be written (unreachable, denied, missing)."""
        ...

    def stat(self, key: str) -> int | None:
        """The size of the object at ``key``, or None when there is none."""
        ...

    def writer(self, size_hint: int, cancel: threading.Event | None = None) -> ObjectWriter:
        """A writer for one object; ``cancel`` set makes a long commit give up cleanly."""
        ...

    def put_source(self, key: str, source: Source, cancel: threading.Event | None = None) -> bool:
        """Store ``source`` under ``key`` (its sha256, known to the caller), visible only once
        complete; False when an equal object was there already."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size."""
        ...

    def entries(self, prefix: str) -> dict[str, Entry]:
        """Every key under ``prefix`` with its size and when it was last written."""
        ...

    def partials(self) -> dict[str, Entry]:
        """Uploads that never finished (a killed bake): an id for each, and when it began."""
        ...

    def drop_partial(self, upload: str) -> None:
        """Remove one unfinished upload named by partials()."""
        ...

    def verify(self, key: str, sha256: str, size: int, deep: bool = False) -> bool | None:
        """Does ``key`` hold exactly these bytes? True / False when the store can tell
        (a local file is hashed; S3 answers from its own SHA-256 checksum when it kept one,
        or with ``deep`` by reading the object), None when only the size matched."""
        ...

    def modified(self, key: str) -> float | None:
        """When ``key`` was last written (seconds since the epoch), None when it is absent."""
        ...

    def touch(self, key: str) -> None:
        """Mark ``key`` as just written, so that a prune running now keeps it (grace)."""
        ...

    def delete(self, key: str) -> None: ...

    def open_read(self, key: str) -> BinaryIO:
        """A stream of the object's bytes (close it when done)."""
        ...

    def facts(self) -> dict[str, str]:
        """Non-secret facts for the lock (type, bucket, endpoint, prefix, url)."""
        ...

    def close(self) -> None:
        """Release threads and connections."""
        ...


def open_store(settings: config.Store) -> Store:
    if isinstance(settings, config.DirStore):
        from kiln.stores.directory import DirectoryStore

        return DirectoryStore(settings)
    from kiln.stores.s3 import S3ObjectStore

    return S3ObjectStore(settings)


def s3_client(settings: config.S3Store) -> Any:
    """A boto3 S3 client for ``settings`` (render presigns with it; no bucket is touched)."""
    from kiln.stores.s3 import S3ObjectStore

    return S3ObjectStore(settings).client
