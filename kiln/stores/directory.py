"""A local folder as the store (the dev default): serve it with any HTTP server."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from kiln import config
from kiln.files import write_atomic
from kiln.stores import Entry, Source, StoreError, sha256_of

PARTIAL = ".partial-"  # a writer's temp file; left behind only by a killed bake
CHUNK = 1 << 20


def _os_error(action: str, path: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while {action} {path}")
    return StoreError(f"cannot {action} {path}: {exc.strerror or exc}")


class DirectoryWriter:
    """Writes to a temp name in the blob folder; commit fsyncs and renames into place."""

    def __init__(self, root: Path, folder: Path) -> None:
        self.root = root
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=PARTIAL, dir=folder)
        except OSError as exc:
            raise _os_error("writing to", folder, exc) from None
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self.file.write(chunk)
        except OSError as exc:
            raise _os_error("writing", self.tmp, exc) from None
        self.size += len(chunk)

    def commit(self, key: str) -> bool:
        final = self.root / key
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if final.exists() and final.stat().st_size == self.size and _holds(final, key):
                self.tmp.unlink()
                os.utime(final)  # reused now: a prune's grace period starts again
                return False
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.abort()
            raise _os_error("writing", final, exc) from None
        return True

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def _holds(path: Path, key: str) -> bool:
    """True when the file's sha256 is the one its content-addressed key names."""
    want = key.rsplit("/", 1)[-1]
    with path.open("rb") as stream:
        return sha256_of(stream) == want


class DirectoryStore:
    def __init__(self, settings: config.DirStore) -> None:
        self.root = settings.path
        self.url = settings.url
        self.prefix = ""

    def describe(self) -> str:
        return f"folder {self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error("create", self.root, exc) from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"cannot write to {self.root}: permission denied")

    def stat(self, key: str) -> int | None:
        try:
            return (self.root / key).stat().st_size
        except FileNotFoundError:
            return None

    def writer(self, size_hint: int, cancel: threading.Event | None = None) -> DirectoryWriter:
        return DirectoryWriter(self.root, self.root / "blobs" / "sha256")

    def put_source(self, key: str, source: Source, cancel: threading.Event | None = None) -> bool:
        writer = self.writer(source.size, cancel)
        try:
            stream = source.open(cancel)
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            write_atomic(self.root / key, data)
        except OSError as exc:
            raise _os_error("writing", self.root / key, exc) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except OSError as exc:
            raise _os_error("reading", self.root / key, exc) from None

    def list(self, prefix: str) -> dict[str, int]:
        base = self.root / prefix
        if not base.is_dir():
            return {}
        return {str(p.relative_to(self.root)): p.stat().st_size for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".")}

    def entries(self, prefix: str) -> dict[str, Entry]:
        base = self.root / prefix
        if not base.is_dir():
            return {}
        out = {}
        for path in base.rglob("*"):
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):  # a prune or bake beside us
                info = path.stat()
                if path.is_file():
                    out[str(path.relative_to(self.root))] = Entry(info.st_size, info.st_mtime)
        return out

    def partials(self) -> dict[str, Entry]:
        out = {}
        for path in (self.root / "blobs").rglob(f"{PARTIAL}*"):
            with contextlib.suppress(FileNotFoundError):
                info = path.stat()
                out[str(path.relative_to(self.root))] = Entry(info.st_size, info.st_mtime)
        return out

    def drop_partial(self, upload: str) -> None:
        if not Path(upload).name.startswith(PARTIAL):
            raise StoreError(f"{upload} is not an unfinished upload")
        self.delete(upload)

    def verify(self, key: str, sha256: str, size: int, deep: bool = False) -> bool | None:
        path = self.root / key
        try:
            if path.stat().st_size != size:
                return False
            with path.open("rb") as stream:
                return sha256_of(stream) == sha256
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error("reading", path, exc) from None

    def modified(self, key: str) -> float | None:
        try:
            return (self.root / key).stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error("reading", self.root / key, exc) from None

    def touch(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.root / key)

    def delete(self, key: str) -> None:
        try:
            (self.root / key).unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error("deleting", self.root / key, exc) from None

    def open_read(self, key: str) -> BinaryIO:
        try:
            return (self.root / key).open("rb")
        except OSError as exc:
            raise _os_error("reading", self.root / key, exc) from None

    def close(self) -> None:
        pass

    def facts(self) -> dict[str, str]:
        facts = {"type": "dir"}
        if self.url:
            facts["url"] = self.url
        return facts
