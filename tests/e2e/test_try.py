"""`kiln try` boots the dev environment's user-data in a real VM and reads the real result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.localengine import Daemon
from tests.e2e.baseimage import BaseImage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dev_project(tmp_path: Path, dockerd: Daemon, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped dev environment, baked."""
    for name in ("images.yaml", "images", "deploy", "packer"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        elif source.exists():
            shutil.copy(source, tmp_path / name)
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    assert main(["bake", "--env", "dev", "--config", str(tmp_path / "images.yaml"),
                 "--quiet"]) == 0
    return tmp_path


def test_try_imports_every_image_before_kubelet(dev_project: Path, base_image: BaseImage,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["try", "--env", "dev", "--config", str(dev_project / "images.yaml"),
                 "--base-image", str(base_image.disk), "--kernel", str(base_image.kernel),
                 "--initrd", str(base_image.initrd), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    result = json.loads(out.out)
    lock = json.loads((dev_project / "dist/dev/images.lock.json").read_text())
    states = {i["ref"]: i for i in result["check"]["images"]}
    for image in lock["images"]:
        assert states[image["ref"]]["image_id"] == image["image_id"]
        assert states[image["ref"]]["state"] == "present"  # present and pinned
    assert result["status"]["ok"] is True
    assert {i["state"] for i in result["status"]["images"]} == {"imported"}
    report = result["report"]
    # the unit is ordered before kubelet, and kubelet's start saw every image already there
    assert any(line.startswith("unit: Before=") and "kubelet.service" in line for line in report)
    assert any(line.startswith("kubelet: After=") and "kiln-import.service" in line
               for line in report)
    saw = [line for line in report if line.startswith("kubelet-saw: ")]
    assert saw and saw[0].endswith(f"images={len(lock['images'])}"), report
    assert any(line.startswith("ctr: registry.example.com/foundation/") for line in report)
