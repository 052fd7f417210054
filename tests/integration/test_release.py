"""A new foundation version rolls through a real containerd, and the old one lets go.

Bake v1 of two images, import them, create a container from one (in use), bump that one to
v2, bake and render again, run the importer again: v2 is imported and pinned, v1 is no
longer pinned but still there (kubelet's image GC decides, never kiln), the untouched image
is as it was, an image kiln did not pin is never touched, and `verify` is clean.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.cli import main
from kiln.localengine import Daemon
from kiln.ports import LOCK_LABEL, NAME_LABEL, OWNER_LABEL, PIN_LABEL
from kiln.render import PlainLocator, render
from tests.integration.conftest import REG, scratch_context
from tests.integration.nodes import FaultyServer, Node

IMAGES = """version: 1
images:
  - {{name: app, ref: {reg}/foundation/app:{tag}, build: app}}
  - {{name: idp, ref: {reg}/foundation/idp:v1, build: idp}}
environments:
  it:
    registry: {reg}
    store: {{type: dir, path: store, url: 'http://127.0.0.1:1/'}}
    node: {{parallel: 2, containerd_timeout: 60}}
"""


def bake(folder: Path, tag: str, dockerd: Daemon, monkeypatch: pytest.MonkeyPatch
         ) -> lockfile.Lock:
    (folder / "images.yaml").write_text(IMAGES.format(reg=REG, tag=tag))
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    assert main(["bake", "--env", "it", "--config", str(folder / "images.yaml"),
                 "--quiet"]) == 0
    lock = lockfile.read(folder / "dist/it/images.lock.json")
    assert lock is not None
    return lock


def rendered(node: Node, lock: lockfile.Lock) -> None:
    env = config_mod.load(node.folder / "images.yaml").environment("it")
    render(env, lock, node.folder / "dist", PlainLocator(node.server.url))
    node.lock = lock


def failing_ctr(tmp_path: Path, call: str) -> dict[str, str]:
    """PATH with a `ctr` that fails the one call whose arguments end with ``call``."""
    bin_dir = tmp_path / "failing-ctr"
    bin_dir.mkdir(exist_ok=True)
    real = shutil.which("ctr")
    assert real is not None
    script = bin_dir / "ctr"
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *{shlex.quote(call)}) exit 1 ;; esac\n"
                      f"exec {shlex.quote(real)} \"$@\"\n")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_a_release_rolls_through_and_the_old_one_lets_go(
        tmp_path: Path, dockerd: Daemon, fresh_containerd: Daemon,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scratch_context(tmp_path / "app", "app v1")
    scratch_context(tmp_path / "idp", "idp")
    v1 = bake(tmp_path, "v1", dockerd, monkeypatch)
    server = FaultyServer(tmp_path / "store").start()
    try:
        node = Node(tmp_path, v1, server, fresh_containerd)
        rendered(node, v1)
        assert node.run().returncode == 0, node.logs[-1]
        ctr = node.ctr
        old_app = next(i for i in v1.images if i.name == "app")
        idp = next(i for i in v1.images if i.name == "idp")
        # an image kiln did not pin (someone's own), pinned by hand: never touched
        ctr.run("images", "tag", old_app.ref, f"{REG}/theirs/tool:v9")
        ctr.run("images", "label", f"{REG}/theirs/tool:v9", f"{PIN_LABEL}=pinned")
        ctr.run("containers", "create", old_app.ref, "app-running")  # v1 is in use
        before = ctr.images()
        assert before[old_app.ref].labels[OWNER_LABEL] == "it"
        assert len(before[old_app.ref].labels[LOCK_LABEL]) == 64
        # the ref was pinned before kiln pinned it (an operator's pin, kiln's labels absent):
        # kiln adopts it, and when it lets go, it leaves that pin
        ctr.run("images", "label", old_app.ref, f"{OWNER_LABEL}=", f"{LOCK_LABEL}=",
                f"{NAME_LABEL}=")
        assert node.run().returncode == 0, node.logs[-1]
        assert ctr.images()[old_app.ref].labels.get("io.kiln.pinned-before") == "true"
        before = ctr.images()

        (tmp_path / "app/marker").write_text("app v2")
        (tmp_path / "images.yaml").write_text(IMAGES.format(reg=REG, tag="v2"))
        assert main(["diff", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                     "--format", "markdown"]) == 0
        notes = capsys.readouterr().out
        assert f"| bumped | app | `{old_app.ref}`" in notes and "| idp |" not in notes

        v2 = bake(tmp_path, "v2", dockerd, monkeypatch)
        new_app = next(i for i in v2.images if i.name == "app")
        assert new_app.ref.endswith(":v2") and new_app.image_id != old_app.image_id
        rendered(node, v2)
        # releasing one pin fails (ctr refuses): the status lists only what was released, the
        # other stays a stale pin, and the next run releases it
        done = node.run(env=failing_ctr(tmp_path, f"images label {old_app.digest_ref} "
                                                  f"{PIN_LABEL}="))
        assert done.returncode == 0, done.stderr
        assert f"{old_app.ref}: no longer in the lock; it was pinned before kiln: pin kept" \
            in done.stderr
        assert f"warning: {old_app.digest_ref}: no longer in the lock, and its pin could not " \
               "be released" in done.stderr
        status = node.status()
        assert (status["released"], status["stale_pins"]) == ([], [old_app.digest_ref])
        done = node.run()
        assert done.returncode == 0, done.stderr
        assert node.status()["released"] == [old_app.digest_ref]

        after = ctr.images()
        for name in (new_app.ref, new_app.digest_ref):  # v2: both names, pinned, kiln's
            assert after[name].labels.get(PIN_LABEL) == "pinned"
            assert after[name].labels.get(OWNER_LABEL) == "it"
        # v1: still there; its digest name unpinned, its ref pinned as before kiln, not kiln's
        assert PIN_LABEL not in after[old_app.digest_ref].labels
        assert after[old_app.ref].labels.get(PIN_LABEL) == "pinned"
        assert OWNER_LABEL not in after[old_app.ref].labels
        assert after[idp.ref].manifest_digest == before[idp.ref].manifest_digest
        assert after[idp.ref].labels.get(PIN_LABEL) == "pinned"
        assert after[f"{REG}/theirs/tool:v9"].labels.get(PIN_LABEL) == "pinned"
        assert "app-running" in ctr.run("containers", "ls", "-q").decode()

        # another tool's label whose value holds a space and a comma: still read exactly
        ctr.run("images", "label", new_app.ref, "zz.note=held by ops, see ticket 7")
        assert node.run("--check").returncode == 0, node.logs[-1]
        address = str(fresh_containerd.socket)
        assert main(["verify", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                     "--containerd-address", address, "--json"]) == 0
        capsys.readouterr()

        # a v1 pin put back (a node that missed the release): --check and verify say stale-pin
        ctr.run("images", "label", old_app.digest_ref, f"{PIN_LABEL}=pinned")
        check = node.run("--check")
        assert check.returncode == 1
        assert f"{old_app.digest_ref}: stale-pin" in check.stderr
        assert node.status()["stale_pins"] == [old_app.digest_ref]
        assert main(["verify", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                     "--containerd-address", address, "--json"]) == 1
        found = json.loads(capsys.readouterr().out)
        assert [f["ref"] for f in found if f["state"] == "stale-pin"] == [old_app.digest_ref]
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
