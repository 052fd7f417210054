"""Registries asked once per ref and all at once (kiln/lookups.py), in a bake and alone."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from kiln import config as config_mod
from kiln import lookups
from kiln.bake import Baker
from kiln.errors import KilnError
from kiln.lock import Lock
from kiln.progress import PlainReporter
from kiln.registry import Registry
from kiln.stores.directory import DirectoryStore
from tests.helpers import image_index, registry_image, write_tree
from tests.unit.test_copied import REF, UP, FakeUpstream, NoEngine, digest
from tests.unit.test_rebind import entry


def test_once_asks_each_key_once_even_when_asked_at_the_same_time() -> None:
    asked: list[str] = []
    gate = threading.Event()

    def fetch(key: str) -> str:
        asked.append(key)
        gate.wait(5)
        return key.upper()

    ask = lookups.once(fetch)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(ask("a"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join()
    assert answers == ["A"] * 4 and asked == ["a"]
    assert ask("b") == "B" and asked == ["a", "b"]


def test_once_keeps_no_failure() -> None:
    calls: list[str] = []

    def flaky(key: str) -> str:
        calls.append(key)
        if len(calls) == 1:
            raise KilnError("no answer")
        return "ok"

    ask = lookups.once(flaky)
    with pytest.raises(KilnError):
        ask("a")
    assert ask("a") == "ok" and ask("a") == "ok" and calls == ["a", "a"]


def test_the_rebind_questions_are_asked_at_once_and_only_about_new_refs() -> None:
    previous = Lock("dev", "r.example.com", (entry("a", 1),))
    started: list[str] = []
    all_asked = threading.Barrier(3, timeout=5)  # b, c and the test: all in flight together

    def lookup(ref: str, platform: str) -> str | None:
        started.append(ref)
        all_asked.wait()
        return "sha256:" + "9" * 64 if ref.endswith("/b:v1") else None

    wanted = [(e.ref, e.platform) for e in (entry("a", 1), entry("b", 2), entry("c", 3))]
    answer = lookups.asked_early(previous, wanted, lookup)
    assert answer is not None
    all_asked.wait()  # both questions were asked before anyone needed an answer
    assert sorted(started) == ["r.example.com/f/b:v1", "r.example.com/f/c:v1"]
    assert answer("r.example.com/f/b:v1", "linux/amd64") == "sha256:" + "9" * 64
    assert answer("r.example.com/f/c:v1", "linux/amd64") is None
    assert lookups.asked_early(previous, wanted[:1], lookup) is lookup  # nothing new to ask
    assert lookups.asked_early(None, wanted, None) is None  # offline: nobody is asked


def test_a_registry_that_is_down_is_asked_a_few_times_not_once_per_ref() -> None:
    calls: list[str] = []

    def down(ref: str, platform: str) -> str | None:
        calls.append(ref)
        time.sleep(0.05)
        raise KilnError(f"{ref}: connection refused")

    wanted = [(f"r.example.com/f/i{n:02d}:v1", "linux/amd64") for n in range(20)]
    answer = lookups.asked_early(None, wanted, down)
    assert answer is not None
    for ref, platform in wanted:
        with pytest.raises(KilnError, match="connection refused"):
            answer(ref, platform)
    assert 1 <= len(calls) <= lookups.ASKED_AT_ONCE


def two_platforms(tmp_path: Path, pull: str) -> Path:
    write_tree(tmp_path, {"images.yaml": f"""
        version: 1
        images:
          - {{name: dex, ref: "{REF}", pull: "{pull}",
              platforms: [linux/amd64, linux/arm64]}}
        environments:
          dev:
            registry: registry.example.com
            store: {{type: dir, path: store}}
        """})
    return tmp_path


def test_a_multi_arch_bake_reads_the_upstream_index_once_and_asks_the_registry_early(
        tmp_path: Path) -> None:
    asked = threading.Event()
    copies_saw_it_asked: list[bool] = []
    platforms_asked: list[str] = []

    class Upstream(FakeUpstream):
        def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                       compression: tuple[str, int] | None = None) -> None:
            copies_saw_it_asked.append(asked.wait(5))  # the old order would wait in vain
            super().copy_image(ref, layout, cancel, compression)

    upstream = Upstream()
    amd64, amd64_blobs = registry_image(b"amd64")
    arm64, arm64_blobs = registry_image(b"arm64", arch="arm64")
    upstream.push(f"{UP}:amd64", amd64, amd64_blobs)
    upstream.push(f"{UP}:arm64", arm64, arm64_blobs)
    index_digest = upstream.push(
        f"{UP}:v1", image_index([(arm64, "linux/arm64"), (amd64, "linux/amd64")]), {})
    folder = two_platforms(tmp_path, f"{UP}:v1")

    def lookup(ref: str, platform: str) -> str | None:
        platforms_asked.append(platform)
        asked.set()
        return None

    cfg = config_mod.load(folder / "images.yaml")
    env = cfg.environment("dev")
    assert isinstance(env.store, config_mod.DirStore)
    lock = Baker(cfg, env, NoEngine(), DirectoryStore(env.store),  # type: ignore[arg-type]
                 PlainReporter(io.StringIO()), folder / "dist", upstream=upstream,
                 registry_lookup=lookup).run().lock
    assert {(i.platform, i.manifest_digest, i.index_digest) for i in lock.images} == {
        ("linux/amd64", digest(amd64), index_digest), ("linux/arm64", digest(arm64), index_digest)}
    assert [c for c in upstream.calls if c[0] == "manifest"] == [("manifest", f"{UP}:v1")]
    assert copies_saw_it_asked == [True, True]  # the registry was asked while images copied
    assert sorted(platforms_asked) == ["linux/amd64", "linux/arm64"]  # each bound apart


class CountingRegistry(Registry):
    def __init__(self, served: dict[str, bytes]) -> None:
        super().__init__("registry.example.com", environ={})
        self.documents = served
        self.asked: list[str] = []

    def _inspect(self, ref: str) -> bytes | None:
        self.asked.append(ref)
        return self.documents.get(ref)


def test_the_rebind_lookup_reads_an_index_once_for_every_platform() -> None:
    from kiln.commands.bake import served_by

    amd64, _ = registry_image(b"amd64")
    arm64, _ = registry_image(b"arm64", arch="arm64")
    index = image_index([(arm64, "linux/arm64"), (amd64, "linux/amd64")])
    repo = "registry.example.com/foundation/dex"
    registry = CountingRegistry({f"{repo}:v1": index, f"{repo}@{digest(amd64)}": amd64,
                                 f"{repo}@{digest(arm64)}": arm64})
    try:
        lookup = served_by(registry)
        assert lookup(f"{repo}:v1", "linux/amd64") == digest(amd64)
        assert lookup(f"{repo}:v1", "linux/arm64") == digest(arm64)
        assert lookup(f"{repo}:v2", "linux/amd64") is None
        assert registry.asked == [f"{repo}:v1", f"{repo}@{digest(amd64)}",
                                  f"{repo}@{digest(arm64)}", f"{repo}:v2"]
    finally:
        registry.close()


def test_a_registry_that_hangs_never_holds_a_failed_bake_at_exit() -> None:
    release = threading.Event()

    def hangs(ref: str, platform: str) -> str | None:
        release.wait(5)
        return None

    lookups.asked_early(None, [("r.example.com/f/a:v1", "linux/amd64")], hangs)
    askers = [t for t in threading.enumerate() if t.name.startswith("kiln-registry")]
    assert askers and all(t.daemon for t in askers)
    release.set()
