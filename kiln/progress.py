"""What a long command tells the user while it runs (on stderr; stdout is for --json).

On a terminal: one live line per image (bytes done / total, rate), redrawn at most ten
times a second. Otherwise: one plain line per step. Quiet: failures only.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Reporter(Protocol):
    def step(self, name: str, message: str) -> None: ...

    def progress(self, name: str, done: int, total: int) -> None: ...

    def finish(self, name: str, message: str) -> None: ...

    def fail(self, name: str, message: str) -> None: ...

    def close(self) -> None: ...


class PlainReporter:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.lock = threading.Lock()
        self.start = time.monotonic()

    def _line(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def step(self, name: str, message: str) -> None:
        self._line(f"kiln: {name}: {message}")

    def progress(self, name: str, done: int, total: int) -> None:
        pass

    def finish(self, name: str, message: str) -> None:
        self._line(f"kiln: {name}: {message} ({time.monotonic() - self.start:.1f}s)")

    def fail(self, name: str, message: str) -> None:
        pass  # the command's final error lines name every failed image

    def close(self) -> None:
        pass


class QuietReporter(PlainReporter):
    def step(self, name: str, message: str) -> None:
        pass

    def finish(self, name: str, message: str) -> None:
        pass


class LiveReporter:
    """A block of lines, one per image, redrawn in place with ANSI cursor moves."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.lock = threading.Lock()
        self.lines: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.drawn = 0
        self.last = 0.0

    def _set(self, name: str, text: str, force: bool = True) -> None:
        with self.lock:
            self.lines[name] = text
            now = time.monotonic()
            if force or now - self.last >= 0.1:
                self.last = now
                self._draw()

    def _draw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")
        width = max(len(n) for n in self.lines)
        for name, text in self.lines.items():
            self.out.write(f"\x1b[2K{name.ljust(width)}  {text}\n")
        self.drawn = len(self.lines)
        self.out.flush()

    def step(self, name: str, message: str) -> None:
        self.started.setdefault(name, time.monotonic())
        self._set(name, message)

    def progress(self, name: str, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self.started.setdefault(name, time.monotonic()), 1e-3)
        shown = f"{human(done)} / {human(total)}" if total else human(done)
        self._set(name, f"saving {shown}  {human(done / elapsed)}/s", force=False)

    def finish(self, name: str, message: str) -> None:
        self._set(name, message)

    def fail(self, name: str, message: str) -> None:
        self._set(name, f"FAILED: {message}")

    def close(self) -> None:
        with self.lock:
            if self.lines:
                self._draw()


def reporter_for(quiet: bool, out: TextIO | None = None) -> Reporter:
    stream = out or sys.stderr
    if quiet:
        return QuietReporter(stream)
    if stream.isatty():
        return LiveReporter(stream)
    return PlainReporter(stream)
