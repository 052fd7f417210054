"""Tar, read and written without copies: members straight off an engine's chunks (zero-copy
slices), and entries with fixed owner, mode and time (equal input, equal bytes).

The reader is total: any byte string ends, after a number of steps bounded by its length, in
the members or an ArchiveError (strict PAX records, every size checked, extended headers
bounded in size and number).
"""

from __future__ import annotations

import re
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from kiln.errors import Cancelled, KilnError

CHUNK = 1 << 20
_ZEROS = bytes(1024)


class ArchiveError(KilnError):
    pass


class TarReader:
    """Tar members straight off the engine's chunks: data comes as zero-copy slices of them.

    tarfile's stream mode copies every block through small reads (a third of the CPU a
    conversion took); here only headers are parsed (by ``tarfile.TarInfo.frombuf``), with the
    PAX and GNU long-name records Go's archive/tar may write.
    """

    def __init__(self, chunks: Iterable[bytes], progress: Callable[[int], None],
                 cancel: threading.Event | None) -> None:
        self.chunks: Iterator[bytes] = iter(chunks)
        self.buf = memoryview(b"")
        self.total = 0
        self.progress = progress
        self.cancel = cancel

    def _fill(self) -> bool:
        while not self.buf:
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("interrupted")
            chunk = next(self.chunks, None)
            if chunk is None:
                return False
            self.buf = memoryview(chunk)
            self.total += len(chunk)
            self.progress(self.total)
        return True

    def pieces(self, size: int) -> Iterator[memoryview]:
        while size > 0:
            if not self._fill():
                raise ArchiveError("the engine's archive ends in the middle of a member")
            piece = self.buf[:size]
            self.buf = self.buf[len(piece):]
            size -= len(piece)
            yield piece

    def read(self, size: int) -> bytes:
        return b"".join(self.pieces(size))

    def skip(self, size: int) -> None:
        for _ in self.pieces(size):
            pass

    def at_end(self) -> bool:
        return not self._fill()

    def drain(self) -> None:
        while self._fill():
            self.buf = memoryview(b"")

    def members(self) -> Iterator[tuple[tarfile.TarInfo, int]]:
        """(header, data size) per member; the caller consumes exactly the data, then pad().

        Total: every header field is checked, an extended header (PAX, GNU long name) is
        bounded in size and in number before its member, and each loop consumes at least one
        block, so any byte string ends in a member, the end marker or an ArchiveError.
        """
        extended: dict[str, str] = {}
        chained = 0
        while not self.at_end():
            block = self.read(512)
            if not block.strip(b"\0"):
                break  # end-of-archive marker
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ArchiveError(f"the engine's archive is not a readable tar: {exc}") from None
            size = _member_size(info.size, "header")
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                             tarfile.GNUTYPE_LONGLINK):
                chained += 1
                if size > EXTENDED_LIMIT or chained > EXTENDED_CHAIN:
                    raise ArchiveError("the engine's archive has an oversized extended header "
                                       f"({size} bytes, {chained} in a row)")
                data = self.read(size)
                self.pad(size)
                if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                    extended.update(_pax_records(data))
                elif info.type == tarfile.GNUTYPE_LONGNAME:
                    extended["path"] = _long_name(data)
                else:
                    extended["linkpath"] = _long_name(data)
                continue
            chained = 0
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise ArchiveError(f"{info.name}: a sparse member; `docker save` writes none")
            info.name = extended.get("path", info.name)
            info.linkname = extended.get("linkpath", info.linkname)
            if "size" in extended:
                size = _member_size(extended["size"], "PAX size")
            extended = {}
            if not info.isreg() and info.type in tarfile.SUPPORTED_TYPES:
                size = 0  # links, folders, devices carry no data (as tarfile reads them)
            yield info, size

    def pad(self, size: int) -> None:
        self.skip(-size % 512)


EXTENDED_LIMIT = 1 << 20  # a PAX header or GNU long name: a path is never near this long
EXTENDED_CHAIN = 8  # extended headers in a row before one member (Go writes at most two)
MEMBER_LIMIT = 1 << 46  # 64 TiB: no layer is bigger
_DECIMAL = re.compile(rb"[0-9]{1,20}")


def _member_size(value: int | str, where: str) -> int:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value.encode("utf-8", "surrogateescape")):
            raise ArchiveError(f"the engine's archive has a {where} that is not a decimal "
                               f"number: {value[:40]!r}")
        value = int(value)
    if not 0 <= value <= MEMBER_LIMIT:
        raise ArchiveError(f"the engine's archive has a {where} of {value} bytes")
    return value


def _long_name(data: bytes) -> str:
    name = data.split(b"\0", 1)[0]
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError("the engine's archive has a long name that is not UTF-8") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """``LENGTH KEY=VALUE\\n`` records of a PAX extended header, strictly: LENGTH is decimal
    and counts the whole record (itself, the space, the newline) within the data; each
    record has a key, an ``=`` and a newline; keys and values are UTF-8."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            if data[pos:].strip(b"\0"):
                raise ArchiveError("the engine's archive has data after NULs in a PAX header")
            break  # NUL padding after the last record
        space = data.find(b" ", pos, pos + 21)
        field = data[pos:space] if space > pos else b""
        if not _DECIMAL.fullmatch(field):
            raise ArchiveError("the engine's archive has a PAX record without a decimal length")
        length = int(field)
        end = pos + length
        if length <= len(field) + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise ArchiveError(f"the engine's archive has a PAX record of bad length {length}")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise ArchiveError("the engine's archive has a PAX record without KEY=VALUE")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError("the engine's archive has a PAX record that is not UTF-8"
                               ) from None
        pos = end
    return records


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class TarWriter:
    """Tar entries onto ``sink``: fixed owner, mode and time, so equal input gives equal bytes."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.written: set[str] = set()

    def header(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self.sink(info.tobuf(format=tarfile.USTAR_FORMAT))

    def pad(self, size: int) -> None:
        if size % 512:
            self.sink(bytes(512 - size % 512))

    def add_bytes(self, name: str, data: bytes) -> None:
        if name in self.written:
            return
        self.written.add(name)
        self.header(name, len(data))
        self.sink(data)
        self.pad(len(data))

    def add_file(self, name: str, size: int, stream: Readable) -> None:
        if name in self.written:
            return
        self.written.add(name)
        self.header(name, size)
        while chunk := stream.read(CHUNK):
            self.sink(chunk)
        self.pad(size)

    def close(self) -> None:
        self.sink(_ZEROS)
