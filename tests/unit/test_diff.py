"""`kiln diff`: changes against the lock; unreferenced objects, pruned only with --yes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kiln import lock as lockfile
from kiln.cli import main
from kiln.errors import UsageError
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
    text = text.replace("path: store}\n", "path: store}\n    compression: {algorithm: gzip}\n")
    (project / "images.yaml").write_text(text)
    changes = {(c["kind"], c["name"]) for c in diff(project, capsys)["changes"]}
    # b's layers recompressed: the same image ID under another manifest digest, so its
    # ref would move (a's moved to a new tag: not a rebind)
    assert changes == {("retagged", "a"), ("added", "d"), ("removed", "c"),
                       ("recompressed", "b"), ("rebind", "b")}


def test_prune_needs_yes_and_spares_what_a_lock_names(project: Path,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    run(project, FakeEngine())
    stray = project / "store/blobs/sha256" / ("f" * 64)
    stray.write_bytes(b"left over")
    os.utime(stray, (time.time() - 2 * 86400,) * 2)  # older than the prune grace
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
    local.write_text(local.read_text().replace('"version": 4', '"version": 1'))
    found = diff(project, capsys, "--prune", "--yes")
    assert found["deleted"] == [] and (project / "store" / old_key).exists()
    assert [c["kind"] for c in found["changes"]] == ["added"] * 3  # all stored again


def test_a_lock_with_bundles_still_reads_and_its_bundle_object_is_spared(
        project: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """A v2 lock from a kiln that still baked bundles: read as before (the list ignored), and
    the bundle's object kept by a prune while a lock names it."""
    _, result = run(project, FakeEngine())
    bundle_key = f"blobs/sha256/{'b' * 64}"
    (project / "store" / bundle_key).write_bytes(b"a bundle")
    os.utime(project / "store" / bundle_key, (time.time() - 2 * 86400,) * 2)
    data = json.loads(lockfile.to_json(result.lock))
    data["bundles"] = [{"role": "worker", "refs": [], "image_ids": [], "sha256": "b" * 64,
                        "size": 8, "uncompressed_size": 8, "compression": "zstd",
                        "compression_level": 3, "key": bundle_key}]
    for path in (project / "dist/dev/images.lock.json",
                 project / "store/locks/dev/images.lock.json"):
        path.write_text(json.dumps(data))
        assert lockfile.read(path) == result.lock
    assert lockfile.object_names(json.dumps(data))[bundle_key] == "bundle worker"
    found = diff(project, capsys, "--prune", "--yes", "--grace", "0")
    assert found["changes"] == [] and found["deleted"] == []
    assert (project / "store" / bundle_key).exists()


def aged(path: Path, days: float = 2) -> None:
    os.utime(path, (time.time() - days * 86400,) * 2)


def test_an_object_a_bake_is_storing_survives_a_prune(project: Path,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """A prune running while a bake uploads: the bake's object is written, its lock not yet.
    (Fails on main: the object was deleted and the lock written after it named nothing.)"""
    run(project, FakeEngine())
    in_flight = project / "store/blobs/sha256" / ("d" * 64)
    in_flight.write_bytes(b"being baked")
    found = diff(project, capsys, "--prune", "--yes")
    assert found["deleted"] == [] and in_flight.exists()
    assert found["young"] == [f"blobs/sha256/{'d' * 64}"]
    # the same object once it is older than the grace, or with --grace 0
    found = diff(project, capsys, "--prune", "--yes", "--grace", "0")
    assert found["deleted"] == [f"blobs/sha256/{'d' * 64}"] and not in_flight.exists()


def test_a_reused_object_restarts_its_grace(project: Path,  # noqa: F811
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A bake that finds its object already stored (unreferenced, old) makes it young again,
    so a prune between that moment and the lock being written keeps it."""
    _, result = run(project, FakeEngine())
    key = result.lock.images[0].key
    (project / "dist/dev/images.lock.json").unlink()
    for lock in (project / "store/locks").rglob("*.json"):
        lock.unlink()
    aged(project / "store" / key)
    run(project, FakeEngine())  # stores nothing new: every object is there
    assert time.time() - (project / "store" / key).stat().st_mtime < 3600


def test_an_object_a_lock_names_but_the_store_lost_is_exit_1(
        project: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    _, result = run(project, FakeEngine())
    image = result.lock.images[1]
    (project / "store" / image.key).unlink()
    code = main(["diff", "--env", "dev", "--config", str(project / "images.yaml")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"kiln: error: {image.key} is missing from the store; named by image {image.name} " \
           f"in {project / 'dist/dev/images.lock.json'}" in err
    assert "locks/dev/images.lock.json" in err  # the store's copy of the lock names it too


def test_unfinished_uploads_are_listed_and_pruned_when_old(
        project: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    run(project, FakeEngine())
    partial = project / "store/blobs/sha256/.partial-abc123"
    partial.write_bytes(b"half an object")
    found = diff(project, capsys, "--prune")
    assert found["partial"] == ["blobs/sha256/.partial-abc123"] and partial.exists()
    found = diff(project, capsys, "--prune", "--yes")
    assert found["deleted"] == [] and partial.exists()  # young: a bake may be writing it
    aged(partial)
    found = diff(project, capsys, "--prune", "--yes")
    assert found["deleted"] == ["blobs/sha256/.partial-abc123"] and not partial.exists()


def test_a_bad_grace_is_exit_2(project: Path) -> None:  # noqa: F811
    assert main(["diff", "--env", "dev", "--config", str(project / "images.yaml"),
                 "--grace", "soon"]) == 2


def test_an_object_reused_after_the_listing_is_not_pruned(project: Path) -> None:  # noqa: F811
    """Listing, then a bake reuses an old orphan (touches it), then the delete loop: the age
    is checked again right before deleting (adversarial review: it was deleted, and the
    bake's lock then named a missing object)."""
    from kiln import config as config_mod
    from kiln.commands.diff import _prune
    from kiln.diff import survey
    from kiln.stores.directory import DirectoryStore

    run(project, FakeEngine())
    orphan = project / "store/blobs/sha256" / ("d" * 64)
    orphan.write_bytes(b"an old orphan")
    aged(orphan, 3)
    env = config_mod.load(project / "images.yaml").environment("dev")
    assert isinstance(env.store, config_mod.DirStore)
    store = DirectoryStore(env.store)
    report = survey(store, {})
    store.touch(f"blobs/sha256/{'d' * 64}")  # a bake found it and reuses it
    assert _prune(store, report, set(), 86400) == []
    assert orphan.exists()


def notes(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:  # noqa: F811
    assert main(["diff", "--env", "dev", "--config", str(project / "images.yaml"),
                 "--format", "markdown", *args]) == 0
    return capsys.readouterr().out


def test_release_notes_per_role(project: Path,  # noqa: F811
                                capsys: pytest.CaptureFixture[str]) -> None:
    run(project, FakeEngine())
    old = project / "old.lock.json"
    old.write_text((project / "dist/dev/images.lock.json").read_text())
    assert "No image changes." in notes(project, capsys)
    text = (project / "images.yaml").read_text().replace('"${registry}/f/a:v1"',
                                                         '"${registry}/f/a:v2"')
    (project / "images.yaml").write_text(text.replace("  - {name: c,", "  - {name: d,"))
    before = notes(project, capsys)  # images.yaml against the lock: refs, no digests yet
    assert "Not baked yet" in before and "known after the bake" in before
    assert "| bumped | a | `registry.example.com/f/a:v1`<br>`sha256:" in before
    assert "`registry.example.com/f/a:v2`<br>(not baked yet)" in before
    run(project, FakeEngine())
    after = notes(project, capsys, "--since", str(old))
    locked = {i.name: i for i in lockfile.read(project / "dist/dev/images.lock.json").images}
    worker = after.split("### role `worker`")[1]
    assert worker.startswith(": 3 change(s)")  # a bumped, d added, c removed: every node; b same
    assert f"`{locked['a'].ref}`<br>`{locked['a'].manifest_digest}` |" in worker
    assert "| removed | c |" in worker and "| added | d |" in worker and "| b |" not in worker
    from kiln.progress import human
    # d is c renamed: nodes hold its ref and image ID already, so only a is fetched
    assert f"each node downloads {human(locked['a'].size)}" in worker
    assert "| added | d | - |" in worker and worker.split("| added | d |")[1].split("\n")[0
                                                                               ].endswith("| 0 B |")
    with pytest.raises(SystemExit):
        main(["diff", "--env", "dev", "--format", "yaml"])
    assert main(["diff", "--env", "dev", "--config", str(project / "images.yaml"),
                 "--since", str(project / "nope.json"), "--format", "markdown"]) == 2


def test_release_notes_follow_each_role(tmp_path: Path) -> None:
    """A role move with the same content is added on one role and removed on the other; an
    image is free only where that role's nodes already hold it; roles nothing touches are
    named once, not given an empty table."""
    from dataclasses import replace

    from kiln import releasenotes
    from kiln.lock import Lock, LockedImage

    def image(name: str, roles: tuple[str, ...], n: int = 1) -> LockedImage:
        digest = "sha256:" + f"{name}{n}".encode().hex().ljust(64, "0")
        return LockedImage(name, f"r.example.com/f/{name}:v{n}", digest, "linux/amd64",
                           "5" * 64, 1000 * n, 2000, "zstd", 3, "blobs/sha256/" + "5" * 64,
                           roles, "build", manifest_digests=(("linux/amd64", digest),))

    old = Lock("dev", "r.example.com", images=(image("ingress", ("control-plane",)),
                                               image("idp", ("control-plane",)),
                                               image("logs", ("storage",))))
    moved = replace(old, images=(image("ingress", ("worker",)), image("idp", ("control-plane",)),
                                 image("logs", ("storage",))))
    text = releasenotes.markdown("dev", "r.example.com", old, moved, "`old`")
    cp = text.split("### role `control-plane`")[1].split("###")[0]
    worker = text.split("### role `worker`")[1].split("Nothing")[0]
    assert "| removed | ingress |" in cp and "each node downloads 0 B" in cp
    # worker nodes never held ingress: they download it, though control-plane nodes hold it
    assert "| added | ingress |" in worker and worker.rstrip().endswith("| 1000 B |")
    assert "### role `storage`" not in text
    assert "Nothing changes on nodes of role `storage`." in text
    with pytest.raises(UsageError, match="environment 'prod', not 'dev'"):
        path = tmp_path / "prod.lock.json"
        path.write_text(lockfile.to_json(replace(old, environment="prod")))
        releasenotes.read_lock(str(path), "dev")


def test_release_notes_name_the_nodes_of_other_roles_and_platform_changes(tmp_path: Path
                                                                         ) -> None:
    """An image every node had, moved to role gpu, leaves nodes of roles no image names; a
    platform change before the bake is a change, not 'No image changes.'."""
    from dataclasses import replace

    from kiln import releasenotes
    from kiln.lock import Lock, LockedImage

    digest = "sha256:" + "ab" * 32
    base = LockedImage("app", "r.example.com/f/app:v1", digest, "linux/amd64", "5" * 64, 1000,
                       2000, "zstd", 3, "blobs/sha256/" + "5" * 64, (), "build",
                       manifest_digests=(("linux/amd64", digest),))
    old = Lock("dev", "r.example.com", images=(base, replace(base, name="cni",
                                                             ref="r.example.com/f/cni:v1",
                                                             roles=("gpu",))))
    new = replace(old, images=(replace(base, roles=("gpu",)), old.images[1]))
    text = releasenotes.markdown("dev", "r.example.com", old, new, "`old`")
    assert "No image changes." not in text
    other = text.split("### nodes of any other role")[1]
    assert "| removed | app |" in other
    assert "Nothing changes on nodes of role `gpu`." in text


def test_a_platform_change_is_in_the_notes_before_the_bake(project: Path,  # noqa: F811
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    run(project, FakeEngine())
    text = (project / "images.yaml").read_text().replace(
        "build: ctx-a}", "build: ctx-a, platform: linux/arm64}")
    (project / "images.yaml").write_text(text)
    before = notes(project, capsys)
    assert "No image changes." not in before and "| rebound | a |" in before
