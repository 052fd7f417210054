"""A copied image's archive is hashed once and read again from the copy for the store
(kiln/replay.py): the same bytes, nothing spooled, and nothing sent that was not hashed."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from kiln import config as config_mod
from kiln import copied, replay
from kiln.errors import Cancelled
from kiln.publish import publish_copy
from kiln.stores import blob_key
from kiln.stores.directory import DirectoryStore
from kiln.stores.s3 import S3ObjectStore
from kiln.tarstream import ArchiveError
from tests.helpers import registry_image, write_layout
from tests.unit.test_bake import FakeS3

REF = "registry.example.com/foundation/dex:v1"


def layout_of(folder: Path, payload: bytes = b"layer") -> Path:
    return write_layout(folder / "layout", *registry_image(payload))


def recorded(layout: Path) -> tuple[bytes, replay.Replay]:
    """The archive as written (kept whole here, for comparison) and as recorded."""
    written = bytearray()
    recorder = replay.Recorder(layout)

    def sink(data: bytes) -> None:
        written.extend(data)
        recorder(data)

    copied.write_archive(layout, REF, "linux/amd64", sink)
    return bytes(written), recorder.finish()


def test_the_archive_is_read_again_from_the_layout_byte_for_byte(tmp_path: Path) -> None:
    layout = layout_of(tmp_path, random.Random(1).randbytes(3 << 20))
    written, archive = recorded(layout)
    assert archive.size == len(written)
    kept = sum(len(p) for p in archive.parts if isinstance(p, bytes))
    assert kept < 64 << 10  # headers and index.json: the blobs stay in the layout
    reader = archive.open()
    assert b"".join(iter(lambda: reader.read(16 << 10), b"")) == written  # as HTTP sends it
    assert reader.seek(0) == 0 and reader.read() == written  # a retried request
    assert reader.seek(-10, os.SEEK_END) == len(written) - 10 and reader.read(99) == written[-10:]
    assert reader.read(5) == b"" and reader.tell() == len(written)
    rng = random.Random(2)
    for _ in range(50):  # parts of a multipart upload
        offset = rng.randrange(len(written))
        size = rng.randrange(1, 1 << 20)
        assert archive.read_at(offset, size) == written[offset:offset + size]
    with tarfile.open(fileobj=io.BytesIO(archive.open().read())) as tar:
        assert "index.json" in tar.getnames()
    reader.close()


def test_a_layout_file_changed_after_it_was_hashed_is_never_sent(tmp_path: Path) -> None:
    layout = layout_of(tmp_path)
    _, archive = recorded(layout)
    blob = max((p for p in archive.parts if isinstance(p, replay._File)),
               key=lambda p: p.identity[1])  # the layer
    blob.path.unlink()
    blob.path.write_bytes(bytes(blob.identity[1]))  # same name and size, other bytes
    with pytest.raises(ArchiveError, match="changed while it was stored"):
        archive.open().read()
    with pytest.raises(ArchiveError, match="changed while it was stored"):
        archive.read_at(0, archive.size)


def test_a_stream_that_is_not_the_layout_is_refused(tmp_path: Path) -> None:
    layout = layout_of(tmp_path)
    written, _ = recorded(layout)
    biggest = max((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    at = written.index(biggest.read_bytes())
    other = written[:at] + bytes(biggest.stat().st_size) + written[at + biggest.stat().st_size:]
    recorder = replay.Recorder(layout)
    with pytest.raises(ArchiveError, match="does not hold the copy's bytes"):
        for start in range(0, len(other), 1000):  # any chunking
            recorder(other[start:start + 1000])
    recorder.close()
    cut = replay.Recorder(layout)
    cut(written[:-2000])
    with pytest.raises(ArchiveError, match="ends in the middle"):
        cut.finish()


def test_a_cancelled_upload_stops_reading(tmp_path: Path) -> None:
    _, archive = recorded(layout_of(tmp_path))
    cancel = threading.Event()
    reader = archive.open(cancel)
    assert reader.read(100)
    cancel.set()
    with pytest.raises(Cancelled):
        reader.read(100)


class ReadingS3(FakeS3):
    """Reads each body as botocore would (whole, while the call lasts)."""

    def __getattr__(self, name: str) -> Any:
        call = super().__getattr__(name)

        def read_body(**kwargs: Any) -> Any:
            body = kwargs.get("Body")
            if body is not None and not isinstance(body, bytes):
                kwargs["Body"] = body.read()
            return call(**kwargs)
        return read_body


@pytest.mark.parametrize("threshold", [None, 8 << 20])
def test_a_copied_image_goes_to_s3_from_the_layout_without_a_spool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: int | None) -> None:
    layout = layout_of(tmp_path, random.Random(3).randbytes(12 << 20))
    written, _ = recorded(layout)
    if threshold:
        monkeypatch.setenv("KILN_MULTIPART_THRESHOLD", str(threshold))

    def no_spool(*_: Any) -> Any:
        raise AssertionError("a copied image was spooled")

    monkeypatch.setattr("kiln.stores.s3.spool", no_spool)
    client = ReadingS3()
    store = S3ObjectStore(config_mod.S3Store(bucket="b", prefix="p/"), client=client)
    published, _ = publish_copy(layout, REF, "linux/amd64", store, 0)
    assert published.key == blob_key("p/", hashlib.sha256(written).hexdigest())
    assert (published.size, published.uploaded) == (len(written), True)
    if threshold:
        parts = sorted((k["PartNumber"], k["Body"]) for c, k in client.calls
                       if c == "upload_part")
        assert len(parts) == 2 and b"".join(b for _, b in parts) == written
    else:
        assert client.objects == {published.key: written}


def test_a_copied_image_goes_to_a_folder_once(tmp_path: Path) -> None:
    layout = layout_of(tmp_path)
    written, _ = recorded(layout)
    store = DirectoryStore(config_mod.DirStore(tmp_path / "store"))
    first, _ = publish_copy(layout, REF, "linux/amd64", store, 0)
    again, _ = publish_copy(layout, REF, "linux/amd64", store, 0)
    assert (tmp_path / "store" / first.key).read_bytes() == written
    assert (first.uploaded, again.uploaded, again.key) == (True, False, first.key)
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == [first.sha256]

