"""An archive made of an OCI layout's files, written once to be hashed and then read again
from those files to be stored: nothing is spooled (core).

The archive of an image copied as served (kiln/copied.py) is a tar of the layout's blobs, byte
for byte, with a few small entries of kiln's around them. Its key, the sha256 of the whole
archive, is known only once it is written; a store that must know the key before it can take
the bytes (S3) got them from a spool, i.e. every byte written to disk a second time and read
back. Here the archive's stream is recorded as it is hashed instead: small entries as bytes,
every member that is a file of the layout as a reference to that file, once its bytes were
checked equal to the file's. The store then reads the archive again from the layout, from any
offset (a retried request, parallel parts), and the layout's files must be the very files
recorded (same inode, size and modification time), or the read fails.
"""

from __future__ import annotations

import bisect
import os
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kiln.errors import Cancelled
from kiln.tarstream import ArchiveError

BLOCK = 512
READ_AHEAD = 1 << 20


@dataclass(frozen=True)
class _File:
    path: Path
    identity: tuple[int, int, int]  # inode, size, modification time (ns)


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class Recorder:
    """A sink for a tar stream of ``layout``'s files: call it with each chunk, then finish()."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.size = 0
        self.starts: list[int] = []  # offset of each part
        self.parts: list[bytearray | _File] = []
        self._header = bytearray()  # a header being received
        self._left = 0  # bytes of the current member still to come
        self._pad = 0  # its padding still to come
        self._stream: BinaryIO | None = None  # the current member's layout file, when it is one
        self._ended = False  # the end-of-archive blocks were seen

    def __call__(self, data: bytes) -> None:
        at = 0
        while at < len(data):
            if self._left:
                count = min(self._left, len(data) - at)
                self._left -= count
                self._member(data if count == len(data) else data[at:at + count])
            elif self._pad or self._ended:
                count = min(self._pad, len(data) - at) if self._pad else len(data) - at
                self._pad -= count if self._pad else 0
                self._bytes(data[at:at + count])
            else:
                count = min(BLOCK - len(self._header), len(data) - at)
                self._header += data[at:at + count]
                if len(self._header) == BLOCK:
                    self._start_member(bytes(self._header))
                    self._header.clear()
            at += count

    def _start_member(self, header: bytes) -> None:
        self._bytes(header)
        if not header.strip(b"\0"):
            self._ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ArchiveError(f"the archive being stored is not a tar: {exc}") from None
        self._left, self._pad = info.size, -info.size % BLOCK
        path = self.layout / info.name
        try:
            stat = path.stat() if info.name.startswith("blobs/") and info.isreg() else None
        except OSError:
            stat = None
        if stat is not None and stat.st_size == info.size and info.size:
            self._stream = path.open("rb")
            self.starts.append(self.size)
            self.parts.append(_File(path, _identity(os.fstat(self._stream.fileno()))))

    def _member(self, data: bytes) -> None:
        if self._stream is None:
            self._bytes(data)
        else:
            if self._stream.read(len(data)) != data:
                raise ArchiveError(f"{Path(self._stream.name).name}: the archive does not "
                                   "hold the copy's bytes")
            self.size += len(data)
        if not self._left:
            self.close()

    def _bytes(self, data: bytes) -> None:
        if not self.parts or not isinstance(self.parts[-1], bytearray):
            self.starts.append(self.size)
            self.parts.append(bytearray())
        last = self.parts[-1]
        assert isinstance(last, bytearray)
        last += data
        self.size += len(data)

    def finish(self) -> Replay:
        """The archive recorded; an ArchiveError when it was not a whole tar."""
        if self._left or self._pad or self._header or not self._ended:
            self.close()
            raise ArchiveError("the archive being stored ends in the middle of a member")
        return Replay(self.size, tuple(self.starts), tuple(
            bytes(p) if isinstance(p, bytearray) else p for p in self.parts))

    def close(self) -> None:
        """Release the file being compared (also after a failure)."""
        if self._stream is not None:
            self._stream.close()
        self._stream = None


class Replay:
    """The recorded archive: ``size`` bytes, read again from the layout's files."""

    def __init__(self, size: int, starts: tuple[int, ...],
                 parts: tuple[bytes | _File, ...]) -> None:
        self.size = size
        self.starts = starts
        self.parts = parts

    def length(self, index: int) -> int:
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.size
        return end - self.starts[index]

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end); safe from several threads."""
        pieces = []
        end = min(self.size, offset + size)
        while offset < end:
            index = bisect.bisect_right(self.starts, offset) - 1
            part, within = self.parts[index], offset - self.starts[index]
            count = min(end - offset, self.length(index) - within)
            pieces.append(part[within:within + count] if isinstance(part, bytes)
                          else _pread(part, within, count))
            offset += count
        return b"".join(pieces)

    def open(self, cancel: threading.Event | None = None) -> ReplayReader:
        """A seekable stream of the archive from its start."""
        return ReplayReader(self, cancel)


def _pread(part: _File, offset: int, count: int) -> bytes:
    fd = os.open(part.path, os.O_RDONLY)
    try:
        _check(part, os.fstat(fd))
        data = os.pread(fd, count, offset)
    finally:
        os.close(fd)
    if len(data) != count:
        raise ArchiveError(f"{part.path.name} changed while it was stored")
    return data


def _check(part: _File, stat: os.stat_result) -> None:
    if _identity(stat) != part.identity:
        raise ArchiveError(f"{part.path.name} changed while it was stored")


class ReplayReader:
    """A file object over a Replay: read, seek, tell (what an HTTP client sends a body from).
    One layout file is open at a time, checked to be the recorded one when it is opened."""

    def __init__(self, replay: Replay, cancel: threading.Event | None) -> None:
        self.replay = replay
        self.cancel = cancel
        self.position = 0
        self._open: tuple[_File, int] | None = None
        self._ahead_at, self._ahead = 0, b""  # bytes read ahead, from this offset

    def read(self, size: int = -1, /) -> bytes:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("interrupted")
        if size is None or size < 0:
            size = self.replay.size - self.position
        at = self.position - self._ahead_at  # an HTTP client asks 16 KiB at a time
        if 0 <= at <= len(self._ahead) - size:
            data = self._ahead[at:at + size]
        elif size >= READ_AHEAD:
            data = self._read(self.position, size)
        else:
            self._ahead_at, self._ahead = self.position, self._read(self.position, READ_AHEAD)
            data = self._ahead[:size]
        self.position += len(data)
        return data

    def _read(self, position: int, size: int) -> bytes:
        replay = self.replay
        end = min(replay.size, position + size)
        pieces = []
        while position < end:
            index = bisect.bisect_right(replay.starts, position) - 1
            part, within = replay.parts[index], position - replay.starts[index]
            count = min(end - position, replay.length(index) - within)
            if isinstance(part, bytes):
                pieces.append(part[within:within + count])
            else:
                pieces.append(os.pread(self._fd(part), count, within))
                if len(pieces[-1]) != count:
                    raise ArchiveError(f"{part.path.name} changed while it was stored")
            position += count
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _fd(self, part: _File) -> int:
        if self._open is not None and self._open[0] is part:
            return self._open[1]
        self.close()
        fd = os.open(part.path, os.O_RDONLY)
        self._open = (part, fd)
        _check(part, os.fstat(fd))
        return fd

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.replay.size}
        self.position = max(0, base[whence] + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._open is not None:
            os.close(self._open[1])
        self._open = None
