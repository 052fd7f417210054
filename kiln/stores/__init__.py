"""Object stores behind one small interface: content-addressed blobs, streamed in.

A writer receives the compressed stream without knowing its final key (the key is the
stream's sha256, known only at the end); ``commit`` publishes it under that key so that an
object is visible only when complete, and ``abort`` leaves the store as it was.
"""

from __future__ import annotations

import threading
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


class ObjectWriter(Protocol):
    def write(self, chunk: bytes) -> None: ...

    def commit(self, key: str) -> bool:
        """Publish what was written under ``key``; False when an equal object was there."""
        ...

    def abort(self) -> None:
        """Drop everything written; nothing becomes visible."""
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

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size."""
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
