"""A ref never moves (kiln/rebind.py): the lock's and the registry's bindings, the history."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kiln import lock as lockfile
from kiln import rebind
from kiln.cli import main
from kiln.errors import KilnError
from kiln.lock import Lock, LockedImage, Rebound
from tests.unit.test_bake import FakeEngine, project, run  # noqa: F401  (fixture)


def entry(name: str, n: int, ref: str | None = None) -> LockedImage:
    digest = "sha256:" + f"{n}".rjust(64, "0")
    return LockedImage(name, ref or f"r.example.com/f/{name}:v1", digest, "linux/amd64",
                       "5" * 64, 1, 1, "zstd", 3, "blobs/sha256/" + "5" * 64, (), "build",
                       manifest_digests=(("linux/amd64", digest),))


def test_what_moves_and_what_does_not() -> None:
    old = Lock("dev", "r.example.com", (entry("a", 1), entry("b", 2), entry("c", 3)))
    new = [entry("a", 1), entry("renamed", 2, "r.example.com/f/b:v1"), entry("c", 4),
           entry("d", 5, "r.example.com/f/c:v2")]  # c's next version: a new tag
    assert rebind.rebinds(old, new) == [Rebound("r.example.com/f/c:v1", old.images[2].image_id,
                                                new[2].image_id)]
    assert rebind.rebinds(None, new) == []


def test_the_registry_is_asked_about_new_refs_only() -> None:
    old = Lock("dev", "r.example.com", (entry("a", 1),))
    asked: list[str] = []

    def lookup(ref: str, platform: str) -> str | None:
        asked.append(ref)
        return {"r.example.com/f/b:v1": "sha256:" + "9" * 64}.get(ref)

    new = [entry("a", 7), entry("b", 2), entry("c", 3)]
    found = rebind.served_elsewhere(old, new, lookup)
    assert asked == ["r.example.com/f/b:v1", "r.example.com/f/c:v1"]
    assert [r.ref for r in found] == ["r.example.com/f/b:v1"]
    said: list[str] = []

    def down(ref: str, platform: str) -> str | None:
        raise KilnError("no answer in 60s")

    assert rebind.check(old, [entry("b", 2)], frozenset(), down,
                        lambda who, what: said.append(what)) == []
    assert said and "not asked" in said[0] and "no answer" in said[0]
    with pytest.raises(rebind.RebindRefused, match="by the registry"):
        rebind.check(old, [entry("b", 2)], frozenset(), lookup, lambda *_: None)


def test_history_is_kept_bounded_and_read_back(tmp_path: Path) -> None:
    moves = tuple(Rebound(f"r.example.com/f/a:v{n}", "sha256:" + "1" * 64, "sha256:" + "2" * 64)
                  for n in range(rebind.HISTORY_KEPT + 5))
    lock = Lock("dev", "r.example.com", (entry("a", 1),), history=moves[:-1])
    kept = rebind.history(lock, [moves[-1]])
    assert len(kept) == rebind.HISTORY_KEPT and kept[-1] == moves[-1]
    path = tmp_path / "images.lock.json"
    lockfile.write(path, replace(lock, history=kept))
    assert lockfile.read(path) == replace(lock, history=kept)
    assert '"history"' not in lockfile.to_json(replace(lock, history=()))
    path.write_text(path.read_text().replace('"r.example.com/f/a:v6"', '"x\\ny"'))
    with pytest.raises(KilnError, match="history entry"):
        lockfile.read(path)


def test_rebind_must_name_a_ref_of_the_environment(project: Path,  # noqa: F811
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bake", "--env", "dev", "--config", str(project / "images.yaml"),
                 "--rebind", "registry.example.com/f/nope:v1"]) == 2
    assert "--rebind registry.example.com/f/nope:v1: not a ref of environment dev" in \
        capsys.readouterr().err


def test_each_platform_of_a_ref_is_bound_apart() -> None:
    amd, arm = entry("a", 1), replace(entry("a", 2), platform="linux/arm64")
    old = Lock("dev", "r.example.com", (amd, arm))
    assert rebind.rebinds(old, [amd, arm]) == []  # two manifests under one ref: no move
    moved = replace(entry("a", 3), platform="linux/arm64")
    assert [(r.old, r.new) for r in rebind.rebinds(old, [amd, moved])] == [
        (arm.image_id, moved.image_id)]
