"""Charts may pin digests: `ref@sha256:…` and `repo@sha256:…` name the image nodes hold (they
hold `repo@sha256:<manifest digest>` beside `ref`); with a lock, a digest that is not the
lock's is chart-digest-mismatch at the digest's place."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln import config, lint
from kiln import lock as lockfile
from kiln.lock import Lock, LockedImage
from tests.helpers import write_tree

REF = "registry.example.com/foundation/dex:v2.41.1"
REPO = "registry.example.com/foundation/dex"
HELD = "sha256:" + "3" * 64
OTHER = "sha256:" + "4" * 64


def run(root: Path, manifest: str, with_lock: bool = True, index: str | None = None,
        named: bool | None = None) -> list[tuple[int, int, str, str]]:
    write_tree(root, {"images.yaml": f"""
        version: 1
        images: [{{name: dex, ref: {REF}, build: ctx}}]
        environments:
          dev: {{registry: registry.example.com, store: {{type: dir, path: s}}, charts: [m.yaml]}}
        """, "m.yaml": manifest, "c/Chart.yaml": "name: c\n"})
    image = LockedImage("dex", REF, "sha256:" + "1" * 64, "linux/amd64", "2" * 64, 1, 1, "zstd",
                        1, "blobs/sha256/" + "2" * 64, (), "build",
                        manifest_digests=(("linux/amd64", HELD),), index_digest=index,
                        index_named=named)
    lock = Lock("dev", "registry.example.com", images=(image,))
    lockfile.write(root / "l.json", lock)
    cfg = config.load(Path("images.yaml"), "images.yaml")
    found = lint.run(cfg, cfg.environment("dev"), lockfile.read(root / "l.json")
                     if with_lock else None)
    return [(f.line, f.column, f.level, f.rule) for f in found if f.rule != "chart-source"]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("pinned", [f"{REF}@{HELD}", f"{REPO}@{HELD}"])
def test_the_locks_digest_is_the_one_string(tmp_path: Path, pinned: str) -> None:
    assert run(tmp_path, f"image: {pinned}\n") == []


def test_another_digest_is_refused_with_a_lock(tmp_path: Path) -> None:
    assert run(tmp_path, f"image: {REF}@{OTHER}\n") == [(1, 8, "error", "chart-digest-mismatch")]
    assert run(tmp_path, f"image: {REPO}@{OTHER}\n") == [(1, 8, "error", "chart-digest-mismatch")]
    # without a lock, the digest cannot be known yet: the ref part is what lint checks
    assert run(tmp_path, f"image: {REF}@{OTHER}\n", with_lock=False) == []
    assert run(tmp_path, f"image: {REPO}:v2.41.2@{OTHER}\n", with_lock=False) == [
        (1, 8, "error", "chart-mismatch")]


def test_the_upstream_index_digest_is_held_when_the_object_names_it(tmp_path: Path) -> None:
    """Nodes hold repo@<index digest> when the stored object names the upstream index (kiln's
    objects do since it was added); an older kiln's object does not: the pin misses."""
    index = "sha256:" + "5" * 64
    for pinned in (f"{REF}@{index}", f"{REPO}@{index}"):
        assert run(tmp_path, f"image: {pinned}\n", index=index, named=True) == []
        assert run(tmp_path, f"image: {pinned}\n", index=index, named=None) == [
            (1, 8, "error", "chart-digest-mismatch")]
    assert run(tmp_path, f"image: {REF}@{HELD}\n", index=index, named=True) == []
    assert run(tmp_path, f"image: {REF}@{OTHER}\n", index=index, named=True) == [
        (1, 8, "error", "chart-digest-mismatch")]


def test_a_digest_set_in_values_is_pointed_at(tmp_path: Path) -> None:
    values = f"image:\n  repository: {REPO}\n  tag: v2.41.1\n"
    write_tree(tmp_path, {"c/Chart.yaml": "name: c\n", "c/values.yaml": values +
                                           f"  digest: {OTHER}\n"})
    text = (f"version: 1\nimages: [{{name: dex, ref: {REF}, build: ctx}}]\nenvironments:\n"
            "  dev: {registry: registry.example.com, store: {type: dir, path: s},\n"
            "        charts: [{chart: c}]}\n")
    (tmp_path / "images.yaml").write_text(text)
    image = LockedImage("dex", REF, "sha256:" + "1" * 64, "linux/amd64", "2" * 64, 1, 1, "zstd",
                        1, "blobs/sha256/" + "2" * 64, (), "build",
                        manifest_digests=(("linux/amd64", HELD),))
    cfg = config.load(Path("images.yaml"), "images.yaml")
    found = [f for f in lint.run(cfg, cfg.environment("dev"),
                                 Lock("dev", "registry.example.com", images=(image,)))
             if f.rule == "chart-digest-mismatch"]
    assert [(f.file, f.line, f.column) for f in found] == [("c/values.yaml", 4, 11)]
    assert HELD in found[0].message
