"""`kiln diff`: changes against the lock; unreferenced objects, pruned only with --yes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from tests.unit.test_bake import FakeEngine, project, run  # noqa: F401  (fixture)


def diff(project: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
         *args: str) -> dict[str, object]:
    assert main(["diff", "--env", "dev", "--config", str(project / "images.yaml"), "--json",
                 *args]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_changes_against_the_lock(project: Path,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert [c["kind"] for c in diff(project, capsys)["changes"]] == ["added"] * 3  # no lock
    run(project, FakeEngine())
    assert diff(project, capsys)["changes"] == []
    text = (project / "images.yaml").read_text()
    text = text.replace('"${registry}/f/a:v1"', '"${registry}/f/a:v2"')
    text = text.replace("  - {name: c,", "  - {name: d,")
    text = text.replace("bundles: [worker]", "compression: {algorithm: gzip}")
    (project / "images.yaml").write_text(text)
    changes = {(c["kind"], c["name"]) for c in diff(project, capsys)["changes"]}
    assert changes == {("retagged", "a"), ("added", "d"), ("removed", "c"),
                       ("recompressed", "b")}


def test_prune_needs_yes_and_spares_what_a_lock_names(project: Path,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    run(project, FakeEngine())
    stray = project / "store/blobs/sha256" / ("f" * 64)
    stray.write_bytes(b"left over")
    found = diff(project, capsys, "--prune")
    assert found["unreferenced"] == {f"blobs/sha256/{'f' * 64}": 9}
    assert stray.exists() and found["deleted"] == []
    found = diff(project, capsys, "--prune", "--yes")
    assert found["deleted"] == [f"blobs/sha256/{'f' * 64}"]
    assert not stray.exists()
    lock = json.loads((project / "dist/dev/images.lock.json").read_text())
    for image in lock["images"]:
        assert (project / "store" / image["key"]).exists()
    with pytest.raises(SystemExit):
        main(["diff", "--env", "dev", "--config", str(project / "images.yaml"), "--yes",
              "--bogus"])
    assert main(["diff", "--env", "dev", "--config", str(project / "images.yaml"),
                 "--yes"]) == 2


def test_objects_an_older_kiln_lock_names_are_spared(project: Path,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run(project, FakeEngine())
    old_key = f"blobs/sha256/{'e' * 64}"
    (project / "store" / old_key).write_bytes(b"a v1 object")
    old_lock = json.dumps({"version": 1, "environment": "old", "registry": "r.example",
                           "images": [{"name": "x", "key": old_key}], "bundles": []})
    (project / "store/locks/old").mkdir(parents=True)
    (project / "store/locks/old/images.lock.json").write_text(old_lock)
    local = project / "dist/dev/images.lock.json"
    local.write_text(local.read_text().replace('"version": 2', '"version": 1'))
    found = diff(project, capsys, "--prune", "--yes")
    assert found["deleted"] == [] and (project / "store" / old_key).exists()
    assert [c["kind"] for c in found["changes"]] == ["added"] * 3  # all stored again
