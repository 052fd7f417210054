"""A real Packer golden image (qemu builder), then booted with no store reachable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main
from tests.e2e.baseimage import BaseImage


def test_golden_image_holds_every_image_offline(dev_project: Path, base_image: BaseImage,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "golden"
    code = main(["golden", "--env", "dev", "--config", str(dev_project / "images.yaml"),
                 "--var", f"base_image={base_image.disk}", "--var", f"kernel={base_image.kernel}",
                 "--var", f"initrd={base_image.initrd}", "--var", f"ssh_key={base_image.ssh_key}",
                 "--var", f"output_dir={out}"])
    assert code == 0
    golden = out / "golden.raw"
    assert golden.is_file()
    capsys.readouterr()

    code = main(["try", "--env", "dev", "--config", str(dev_project / "images.yaml"),
                 "--base-image", str(golden), "--kernel", str(base_image.kernel),
                 "--initrd", str(base_image.initrd), "--no-store", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    lock = json.loads((dev_project / "dist/dev/images.lock.json").read_text())
    checked = {i["ref"]: i for i in result["check"]["images"]}
    for image in lock["images"]:
        digest = image["manifest_digests"]["linux/amd64"]
        digest_ref = f"{image['ref'].rsplit(':', 1)[0]}@{digest}"
        assert checked[image["ref"]] == {"name": image["name"], "ref": image["ref"],
                                         "digest_ref": digest_ref,
                                         "image_id": image["image_id"], "state": "present"}
    # at boot the unit found everything already there: nothing was (or could be) downloaded
    assert {i["state"] for i in result["status"]["images"]} == {"present"}
