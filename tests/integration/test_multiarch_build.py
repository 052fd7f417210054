"""A build source of two platforms through the real dockerd (`--platform`). Measured here:
Docker 20.10's classic builder (the build API kiln's engine client speaks) records the daemon's
own platform for a `FROM scratch` image whatever `--platform` says, so the foreign platform's
build is refused by kiln's platform check, in one line, and no lock is written (README:
Multi-arch). The native platform's build of the same image bakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln import localengine
from kiln.cli import main

REG = "registry.example.com"


def test_a_foreign_platform_the_engine_does_not_make_is_refused_in_one_line(
        tmp_path: Path, dockerd: localengine.Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "app"
    context.mkdir()
    (context / "payload").write_text(f"built for two platforms {tmp_path.name}\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
    (tmp_path / "images.yaml").write_text(
        f"version: 1\nimages:\n  - {{name: app, ref: {REG}/foundation/app:v1, build: app,\n"
        "     platforms: [linux/amd64, linux/arm64]}\n"
        f"environments:\n  it:\n    registry: {REG}\n    store: {{type: dir, path: store}}\n")
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    argv = ["bake", "--env", "it", "--config", str(tmp_path / "images.yaml"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert ("image 'app (linux/arm64)': the engine made a linux/amd64 image; images.yaml asks "
            "for linux/arm64") in err
    assert not (tmp_path / "dist/it/images.lock.json").exists()
    # the native platform alone bakes
    (tmp_path / "images.yaml").write_text(
        (tmp_path / "images.yaml").read_text().replace(", linux/arm64]", "]"))
    assert main(argv) == 0, capsys.readouterr().err
    (entry,) = json.loads((tmp_path / "dist/it/images.lock.json").read_text())["images"]
    assert entry["platform"] == "linux/amd64"
    assert list(entry["manifest_digests"]) == ["linux/amd64"]
