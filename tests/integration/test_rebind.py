"""A ref never moves, with real parts: a Docker engine builds, a TLS docker-registry serves
what `push` sent; new content under a locked or served ref is refused until --rebind."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.localengine import Daemon
from tests.integration.conftest import scratch_context, tls_registry_at

USER, PASSWORD = "kiln", "s3cret-rebind"
Registry = tuple[str, Path]


@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("internal"), USER, PASSWORD) as served:
        yield served


def test_new_content_under_a_bound_ref_is_refused_until_rebind(
        tmp_path: Path, internal: Registry, dockerd: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    host, ca = internal
    team = f"t{uuid.uuid4().hex[:8]}"
    shutil.copy(ca, tmp_path / "ca.pem")
    ref = f"{host}/{team}/app:v1"
    (tmp_path / "images.yaml").write_text(
        f"version: 1\nimages:\n  - {{name: app, ref: '${{registry}}/{team}/app:v1', "
        f"build: app}}\nenvironments:\n  it:\n    registry: '{host}'\n    registry_ca: ca.pem\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n")
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    lock_path = tmp_path / "dist/it/images.lock.json"

    def kiln(*args: str) -> int:
        return main([args[0], "--env", "it", "--config", str(tmp_path / "images.yaml"),
                     "--quiet", *args[1:]])

    def locked() -> dict[str, object]:
        (entry,) = json.loads(lock_path.read_text())["images"]
        return dict(entry)

    scratch_context(tmp_path / "app", "app one")
    assert kiln("bake") == 0, capsys.readouterr().err
    first = locked()["manifest_digests"]["linux/amd64"]  # type: ignore[index]
    assert kiln("push") == 0, capsys.readouterr().err

    (tmp_path / "app/marker").write_text("app two")  # other bytes, the same ref
    capsys.readouterr()
    before = lock_path.read_bytes()
    objects = sorted((tmp_path / "store").rglob("*"))
    assert kiln("bake") == 1
    err = capsys.readouterr().err
    assert f"a ref never moves: {ref} is bound to {first} in the lock; this bake made" in err
    assert f"--rebind {ref}" in err
    assert lock_path.read_bytes() == before
    assert sorted((tmp_path / "store").rglob("*")) == objects

    assert kiln("bake", "--rebind", ref) == 0, capsys.readouterr().err
    second = locked()["manifest_digests"]["linux/amd64"]  # type: ignore[index]
    history = json.loads(lock_path.read_text())["history"]
    assert history == [{"ref": ref, "old": first, "new": second}]

    # the lock is lost: the registry still serves the first content under the ref
    lock_path.unlink()
    (tmp_path / "app/marker").write_text("app three")
    capsys.readouterr()
    assert kiln("bake") == 1
    assert f"{ref} is bound to {first} by the registry" in capsys.readouterr().err
    assert kiln("bake", "--offline") == 0  # not asked: the user takes it on
