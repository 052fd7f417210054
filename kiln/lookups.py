"""What registries serve, asked once per reference and all at once (core: the asking itself
is a function handed in; here only when, how often and how many at a time).

A bake asks two registries: the upstream, for the document a pull source resolves to (an
index serves every platform: asked once per ref, not once per platform, so that the
platforms of one image also resolve against the same index), and the environment's registry,
for the rebind check ("a ref never moves", kiln/rebind.py). That check needs only the refs, not
the bake's results: its questions are asked when the bake starts, a few at a time beside the
copies, instead of one after another once every image is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from kiln.errors import KilnError
from kiln.lock import Lock
from kiln.ports import Upstream
from kiln.rebind import RegistryLookup

T = TypeVar("T")
ASKED_AT_ONCE = 4  # registry questions in flight beside the bake (each one a skopeo process)


def once(fetch: Callable[[str], T]) -> Callable[[str], T]:
    """``fetch`` asked at most once per key; callers asking meanwhile wait for that answer.
    A failure is not kept: the next caller asks again."""
    answers: dict[str, T] = {}
    locks: dict[str, threading.Lock] = {}
    guard = threading.Lock()

    def ask(key: str) -> T:
        with guard:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            if key not in answers:
                answers[key] = fetch(key)
            return answers[key]

    return ask


class ManifestsOnce:
    """An upstream whose manifests (indexes) are fetched once per reference; copies as is."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._manifest = once(upstream.manifest)

    def manifest(self, ref: str) -> bytes:
        return self._manifest(ref)

    def config(self, ref: str) -> bytes:
        return self.upstream.config(ref)

    def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                   compression: tuple[str, int] | None = None) -> None:
        self.upstream.copy_image(ref, layout, cancel, compression)

    def copy_archive(self, archive: Path, layout: Path, cancel: threading.Event | None = None,
                     platform: str | None = None) -> None:
        self.upstream.copy_archive(archive, layout, cancel, platform)

    def copy_signature(self, repository: str, tag: str, layout: Path,
                       cancel: threading.Event | None = None) -> bool:
        return self.upstream.copy_signature(repository, tag, layout, cancel)


def manifests_once(upstream: Upstream | None) -> Upstream | None:
    return None if upstream is None else ManifestsOnce(upstream)


def asked_early(previous: Lock | None, wanted: Iterable[tuple[str, str]],
                lookup: RegistryLookup | None) -> RegistryLookup | None:
    """``lookup`` for the rebind check, its answers for the (ref, platform) pairs ``wanted``
    that ``previous`` does not bind (the only ones the check asks about) already on the way.

    A failure is the answer to every question not yet asked (the check reports the registry
    as not asked, whichever ref failed): a registry that is down costs a few failed requests,
    not one per image."""
    known = {(i.ref, i.platform) for i in previous.images} if previous else set()
    keys = sorted(set(wanted) - known)
    if lookup is None or not keys:
        return lookup
    failed: list[KilnError] = []

    def ask(ref: str, platform: str) -> str | None:
        if failed:
            raise failed[0]
        try:
            return lookup(ref, platform)
        except KilnError as exc:
            failed.append(exc)
            raise

    futures: dict[tuple[str, str], Future[str | None]] = {key: Future() for key in keys}
    queue = list(keys)
    taking = threading.Lock()

    def work() -> None:
        while True:
            with taking:
                if not queue:
                    return
                key = queue.pop(0)
            future = futures[key]
            try:
                future.set_result(ask(*key))
            except BaseException as exc:  # handed to whoever reads the answer
                future.set_exception(exc)

    # daemons: a bake that fails meanwhile exits without waiting for a registry's timeout
    for n in range(min(ASKED_AT_ONCE, len(keys))):
        threading.Thread(target=work, name=f"kiln-registry-{n}", daemon=True).start()

    def answer(ref: str, platform: str) -> str | None:
        future = futures.get((ref, platform))
        return lookup(ref, platform) if future is None else future.result()

    return answer
