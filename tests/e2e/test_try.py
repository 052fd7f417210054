"""`kiln try` boots the dev environment's user-data in a real VM and reads the real result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from tests.e2e.baseimage import BaseImage


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
