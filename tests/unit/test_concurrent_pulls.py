"""Pull sources copied at the same time: the lock does not depend on which copy ends first, and
one image that fails fails the bake in one line with nothing half-stored."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest

from kiln import config as config_mod
from kiln.bake import BakeError, Baker
from kiln.progress import PlainReporter
from kiln.stores.directory import DirectoryStore
from tests.helpers import registry_image, write_tree
from tests.unit.test_copied import UP, FakeUpstream, NoEngine

NAMES = ("alpha", "beta", "gamma")


class OrderedUpstream(FakeUpstream):
    """Copies that end in the order ``finish`` says, whatever order they began in."""

    def __init__(self, finish: tuple[str, ...]) -> None:
        super().__init__()
        self.turns = {f"{UP}-{name}": threading.Event() for name in NAMES}
        self.finish = finish
        self.ended: list[str] = []

    def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                   compression: tuple[str, int] | None = None) -> None:
        assert compression is None  # as served
        repository = ref.split("@")[0]
        position = self.finish.index(repository.rsplit("-", 1)[1])
        if position:
            previous = f"{UP}-{self.finish[position - 1]}"
            assert self.turns[previous].wait(5), "copies did not run at the same time"
        try:
            super().copy_image(ref, layout, cancel)
        finally:
            self.ended.append(repository)
            self.turns[repository].set()


def three_images(folder: Path, upstream: FakeUpstream) -> Path:
    lines = []
    for name in NAMES:
        upstream.push(f"{UP}-{name}:v1", *registry_image(name.encode()))
        lines.append(f"  - {{name: {name}, ref: registry.example.com/foundation/{name}:v1, "
                     f"pull: '{UP}-{name}:v1'}}")
    write_tree(folder, {"images.yaml": "version: 1\nimages:\n" + "\n".join(lines) + """
environments:
  dev:
    registry: registry.example.com
    store: {type: dir, path: store}
"""})
    return folder


def bake(folder: Path, upstream: FakeUpstream) -> bytes:
    cfg = config_mod.load(folder / "images.yaml")
    env = cfg.environment("dev")
    assert isinstance(env.store, config_mod.DirStore)
    Baker(cfg, env, NoEngine(), DirectoryStore(env.store),  # type: ignore[arg-type]
          PlainReporter(io.StringIO()), folder / "dist", jobs=3, upstream=upstream).run()
    return (folder / "dist/dev/images.lock.json").read_bytes()


def test_the_lock_is_the_same_whichever_copy_ends_first(tmp_path: Path) -> None:
    locks = set()
    for order in (NAMES, tuple(reversed(NAMES)), ("beta", "gamma", "alpha")):
        upstream = OrderedUpstream(order)
        locks.add(bake(three_images(tmp_path / "-".join(order), upstream), upstream))
        assert upstream.ended == [f"{UP}-{name}" for name in order]
    assert len(locks) == 1


def test_one_image_that_fails_fails_the_bake_with_nothing_half_stored(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    folder = three_images(tmp_path, upstream)
    upstream.served[f"{UP}-beta:v1"] = b"{not json"  # its registry answers garbage
    with pytest.raises(BakeError) as failed:
        bake(folder, upstream)
    assert str(failed.value).count("\n") == 0 and "image 'beta'" in str(failed.value)
    assert not (folder / "dist/dev/images.lock.json").exists()
    stored = [p for p in (folder / "store").rglob("*") if p.is_file()]
    assert all(not p.name.startswith(".partial-") for p in stored)
    for path in stored:  # what is there is whole: its bytes are its name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
