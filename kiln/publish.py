"""Export stream -> OCI archive with compressed layers -> sha256 -> store, in one pass; or a
copy of an image as served (kiln/copied.py) -> OCI archive, byte for byte -> sha256, then the
store reads the archive again from the copy's files (kiln/replay.py).

Nothing uncompressed touches the disk (a layer waits, compressed, in a spool until its size
and digest are known) and memory stays bounded. The object's key is its sha256, known only at
the end, so the writer publishes on commit; any failure or cancellation aborts it and nothing
becomes visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kiln import copied, ociarchive, replay
from kiln.errors import KilnError
from kiln.model import Compression
from kiln.stores import Store, blob_key


def fetch_to(stream: BinaryIO, expected_sha256: str, dest: Path) -> None:
    """Copy a stored object into ``dest``, checking its sha256 on the way (streaming)."""
    digest = hashlib.sha256()
    with dest.open("wb") as out:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
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
    images: dict[str, str] = field(default_factory=dict)  # ref -> image ID in the archive
    manifests: dict[str, str] = field(default_factory=dict)  # ref -> manifest digest


def _names(images: dict[str, str]) -> str:
    return ", ".join(f"{ref} as {iid}" for ref, iid in sorted(images.items())) or "nothing"


def publish(
    chunks: Iterable[bytes],
    store: Store,
    compression: Compression,
    size_hint: int,
    progress: Callable[[int], None] = lambda _: None,
    cancel: threading.Event | None = None,
    cpu_slot: AbstractContextManager[object] | None = None,
    expect: dict[str, str] | None = None,
) -> Published:
    """Rewrite the `docker save` ``chunks`` into the store under ``<prefix>blobs/sha256/<hex>``.

    ``cpu_slot`` is held while exporting and compressing, and released for the upload, so
    that a bake can compress the next image while this one is still on the wire. ``expect``
    (ref -> image ID): the archive must name exactly these, or nothing is stored.
    """
    def write(sink: Callable[[bytes], None]) -> ociarchive.Converted:
        with cpu_slot or contextlib.nullcontext():
            converted = ociarchive.convert(chunks, compression, sink, progress, cancel)
        if expect is not None and converted.images != expect:
            raise KilnError(f"the engine's archive names {_names(converted.images)}; "
                            f"expected {_names(expect)}")
        return converted

    return _store(write, store, size_hint, cancel)


def publish_copy(layout: Path, ref: str, platform: str, store: Store, size_hint: int,
                 progress: Callable[[int], None] = lambda _: None,
                 cancel: threading.Event | None = None, index: bytes | None = None
                 ) -> tuple[Published, copied.Copied]:
    """The image copied as served into the OCI layout folder ``layout``, stored as an archive
    naming it ``ref``: its blobs byte for byte (kiln/copied.py). The archive is written once
    to be checked and hashed, then the store reads it again from the layout (kiln/replay.py):
    no spool."""
    recorder = replay.Recorder(layout)
    digest = hashlib.sha256()

    def sink(data: bytes) -> None:
        digest.update(data)
        recorder(data)

    try:
        found = copied.write_archive(layout, ref, platform, sink, progress, cancel, index)
        archive = recorder.finish()
    finally:
        recorder.close()
    key = blob_key(store.prefix, digest.hexdigest())
    uploaded = store.put_source(key, archive, cancel)
    return Published(key, digest.hexdigest(), archive.size, found.size, uploaded,
                     {ref: found.image_id}, {ref: found.manifest_digest}), found


def _store(write: Callable[[Callable[[bytes], None]], ociarchive.Converted], store: Store,
           size_hint: int, cancel: threading.Event | None) -> Published:
    """One object: what ``write`` puts on its sink, hashed, committed under its sha256."""
    writer = store.writer(size_hint, cancel)
    digest = hashlib.sha256()
    stored = 0

    def sink(data: bytes) -> None:
        nonlocal stored
        digest.update(data)
        writer.write(data)
        stored += len(data)

    try:
        converted = write(sink)
        key = blob_key(store.prefix, digest.hexdigest())
        uploaded = writer.commit(key)
    except BaseException:
        writer.abort()
        raise
    return Published(key, digest.hexdigest(), stored, converted.raw_size, uploaded,
                     converted.images, converted.manifests)
