"""Files that are never seen half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SPOOL_MEMORY = 8 << 20  # a spooled stream up to this size never touches the disk
SPOOL_DIR_ENV = "KILN_SPOOL_DIR"


def spool_dir() -> str:
    """Where compressed bytes wait (layers, uploads): $KILN_SPOOL_DIR, else the temp folder."""
    return os.environ.get(SPOOL_DIR_ENV) or tempfile.gettempdir()


def spool(prefix: str = "kiln-spool-") -> tempfile.SpooledTemporaryFile[bytes]:
    """A temp file that stays in memory up to SPOOL_MEMORY bytes; gone when closed."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix=prefix, dir=spool_dir())


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
