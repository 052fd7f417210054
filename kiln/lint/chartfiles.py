"""A chart's files as lint needs them: from a folder, or from a packaged chart.

``helm dependency build`` leaves subcharts in ``charts/`` as ``.tgz`` packages, and vendored
charts are kept that way; lint reads their ``Chart.yaml`` and ``values.yaml`` from inside the
archive (findings name them ``charts/NAME-VERSION.tgz/NAME/values.yaml``). Only those files
and nested ``charts/`` are read, and archives are bounded in members and bytes.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.errors import ConfigError, Problem

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")
MAX_ARCHIVE_BYTES = 64 << 20  # of the members lint reads, per archive
MAX_ARCHIVE_MEMBERS = 20_000
_WANTED = ("Chart.yaml", "values.yaml")


@dataclass(frozen=True)
class ChartFiles:
    """``Chart.yaml``, ``values.yaml`` and everything below ``charts/``, by relative path."""

    shown: str  # how findings name the chart's root
    files: dict[str, bytes]

    def read(self, name: str) -> bytes | None:
        return self.files.get(name)

    def display(self, name: str) -> str:
        return f"{self.shown}/{name}"

    def subcharts(self) -> list[ChartFiles]:
        """The charts below ``charts/``: folders with a Chart.yaml and packaged charts."""
        out = []
        for name in sorted(self.files):
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "charts" and parts[2] == "Chart.yaml":
                prefix = f"charts/{parts[1]}/"
                out.append(ChartFiles(self.display(f"charts/{parts[1]}"), {
                    k[len(prefix):]: v for k, v in self.files.items() if k.startswith(prefix)}))
            elif len(parts) == 2 and parts[0] == "charts" and name.endswith(ARCHIVE_SUFFIXES):
                out.append(from_archive(self.files[name], self.display(name)))
        return out


def _wanted(relative: str) -> bool:
    parts = relative.split("/")
    if len(parts) == 1:
        return relative in _WANTED
    if parts[0] != "charts":
        return False
    if len(parts) == 2:
        return relative.endswith(ARCHIVE_SUFFIXES)
    return _wanted("/".join(parts[2:]))


def from_folder(folder: Path, shown: str) -> ChartFiles:
    """A chart folder's files lint reads (templates and everything else left alone)."""
    files: dict[str, bytes] = {}
    for name in _WANTED:
        _read_into(files, name, folder / name, shown)
    charts = folder / "charts"
    seen: set[str] = set()  # a subchart may be a symlink (as Helm follows it); never a loop
    for here, dirs, names in os.walk(charts, followlinks=True):
        seen.add(os.path.realpath(here))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "templates"
                         and os.path.realpath(os.path.join(here, d)) not in seen)
        for name in sorted(names):
            relative = (Path(here) / name).relative_to(folder).as_posix()
            if _wanted(relative):
                _read_into(files, relative, Path(here) / name, shown)
    return ChartFiles(shown, files)


def _read_into(files: dict[str, bytes], relative: str, path: Path, shown: str) -> None:
    if not path.is_file():
        return
    try:
        files[relative] = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(f"{shown}/{relative}", 1, 1,
                                   f"cannot read: {exc.strerror or exc}")]) from None


def from_archive(data: bytes, shown: str) -> ChartFiles:
    """A packaged chart (a gzip tar with one top folder, the chart's name)."""
    try:
        members = _members(data, shown)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ConfigError([Problem(shown, 1, 1, f"not a readable chart archive: {exc}")]
                          ) from None
    tops = sorted({name.split("/", 1)[0] for name in members if name.endswith("/Chart.yaml")
                   and name.count("/") == 1})
    if not tops:
        raise ConfigError([Problem(shown, 1, 1, "chart archive without a top-level Chart.yaml")])
    top = tops[0]
    return ChartFiles(f"{shown}/{top}", {name[len(top) + 1:]: body for name, body in
                                         members.items() if name.startswith(top + "/")})


def _members(data: bytes, shown: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        for count, member in enumerate(archive):
            if count >= MAX_ARCHIVE_MEMBERS:
                raise ConfigError([Problem(shown, 1, 1, "chart archive has too many members")])
            name = PurePosixPath(member.name).as_posix().lstrip("/")
            if (not member.isfile() or ".." in name.split("/") or "/" not in name
                    or not _wanted(name.split("/", 1)[1])):
                continue
            total += member.size
            if total > MAX_ARCHIVE_BYTES:
                raise ConfigError([Problem(shown, 1, 1, "chart archive is too large to lint")])
            body = archive.extractfile(member)
            if body is not None:
                out[name] = body.read()
    return out
