"""`kiln try` boots the dev environment's user-data in a real VM and reads the real result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        digest = image["manifest_digests"]["linux/amd64"]
        assert states[image["ref"]]["digest_ref"].endswith(f"@{digest}")
        assert states[image["ref"]]["state"] == "present"  # both names, pinned
    assert result["status"]["ok"] is True
    assert {i["state"] for i in result["status"]["images"]} == {"imported"}
    report = result["report"]
    # the unit is ordered before kubelet, and kubelet's start saw every image already there
    assert any(line.startswith("unit: Before=") and "kubelet.service" in line for line in report)
    assert any(line.startswith("kubelet: After=") and "kiln-import.service" in line
               for line in report)
    saw = [line for line in report if line.startswith("kubelet-saw: ")]
    # kubelet's start saw both names of every image (ref and repo@sha256:<digest>)
    assert saw and saw[0].endswith(f"images={2 * len(lock['images'])}"), report
    assert any(line.startswith("ctr: registry.example.com/foundation/") for line in report)


def test_a_store_down_at_boot_recovers_without_anyone_logging_in(
        dev_project: Path, base_image: BaseImage) -> None:
    """The store answers 503 for the first OUTAGE seconds of the boot: the first import run
    spends its budget and fails, systemd restarts the unit (with the importer's back-off), a
    later run imports everything, and kubelet (held meanwhile) starts with every image there.
    Real systemd, cloud-init and containerd in the guest; the outage is real HTTP 503s."""
    import threading
    import time
    from dataclasses import replace

    from kiln import config as config_mod
    from kiln import lock as lockfile
    from kiln.model import S3Store
    from kiln.vm import Trial
    from tests.integration.nodes import FaultyServer

    outage = 45.0
    config = config_mod.load(dev_project / "images.yaml")
    env = config.environment("dev")
    assert isinstance(env.store, config_mod.DirStore)
    lock = lockfile.read(lockfile.lock_path(dev_project / "dist", "dev"))
    assert lock is not None
    server = FaultyServer(env.store.path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for image in lock.images:
        server.faults[image.key] = ["503"] * 100_000

    def lift() -> None:
        while not server.requests:
            time.sleep(0.2)
        time.sleep(outage)
        server.faults.clear()

    threading.Thread(target=lift, daemon=True).start()
    port = server.server_address[1]
    down = replace(env, store=S3Store(bucket="unused", url_mode="plain",
                                      url=f"http://127.0.0.1:{port}/"),
                   node=replace(env.node, import_budget=15, retry_max_delay=5))
    assert down.node.on_import_failure == "hold-kubelet"
    try:
        result = Trial(down, lock, base_image.disk, kernel=base_image.kernel,
                       initrd=base_image.initrd, wait_for_import=True, log=lambda _: None).run()
    finally:
        server.release.set()
        server.shutdown()
    report = result.lines
    assert result.ok, report
    restarts = [line for line in report if line.startswith("unit: NRestarts=")]
    assert restarts and int(restarts[0].split("=", 1)[1]) >= 1, report  # systemd retried it
    saw = [line for line in report if line.startswith("kubelet-saw: ")]
    assert saw and saw[0].endswith(f"images={2 * len(lock.images)}"), report  # both names
    assert len([r for r in server.requests if r]) > len(lock.images)  # it did meet the 503s


@pytest.mark.parametrize(("host", "images"), [("cp-1", 2), ("w-1", 1)])
def test_the_pxe_path_boots_each_nodes_own_seed(dev_project: Path, base_image: BaseImage,
                                                capsys: pytest.CaptureFixture[str], host: str,
                                                images: int) -> None:
    """The per-node seed `render --inventory` writes, fetched over HTTP by cloud-init from
    the URL on the kernel command line, as a PXE menu's append line gives it: the guest takes
    its host name from it and imports exactly its roles' images (the dev example: registry
    for the control plane, dex for both)."""
    nodes = dev_project / "nodes.yaml"
    nodes.write_text("nodes:\n  - {hostname: cp-1, roles: [control-plane]}\n"
                     "  - {hostname: w-1, roles: [worker]}\n")
    code = main(["try", "--env", "dev", "--config", str(dev_project / "images.yaml"),
                 "--base-image", str(base_image.disk), "--kernel", str(base_image.kernel),
                 "--initrd", str(base_image.initrd), "--inventory", str(nodes),
                 "--node", host, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    result = json.loads(out.out)
    report = result["report"]
    assert f"hostname: {host}" in report
    held = sorted(line.split()[1] for line in report
                  if line.startswith("ctr: registry.") and "@" not in line.split()[1])
    assert len(held) == images, report
    lock = json.loads((dev_project / "dist/dev/images.lock.json").read_text())
    role = "control-plane" if host == "cp-1" else "worker"
    assert held == sorted(i["ref"] for i in lock["images"] if role in i["roles"])
    assert {i["state"] for i in result["status"]["images"]} == {"imported"}


def test_a_release_on_a_node_booted_again(dev_project: Path, base_image: BaseImage,
                                          tmp_path: Path) -> None:
    """The same node (its disk kept) boots again with the next release's user-data: dex
    v2.41.1 -> v2.41.2. The new one is imported and pinned; the old one stays on disk with its
    pin released (kubelet's GC decides); registry, unchanged, is not downloaded again."""
    from kiln import config as config_mod
    from kiln import lock as lockfile
    from kiln.vm import Trial

    disk = tmp_path / "node.qcow2"  # the node's own disk, kept between the two boots

    def boot() -> tuple[lockfile.Lock, dict[str, Any], list[str]]:
        env = config_mod.load(dev_project / "images.yaml").environment("dev")
        lock = lockfile.read(lockfile.lock_path(dev_project / "dist", "dev"))
        assert lock is not None
        result = Trial(env, lock, base_image.disk, kernel=base_image.kernel,
                       initrd=base_image.initrd, overlay=disk, log=lambda _: None).run()
        assert result.ok, result.lines
        return lock, result.status, [line for line in result.lines if line.startswith("ctr: ")]

    first, _, _ = boot()
    old = next(i for i in first.images if i.name == "dex")
    for name in ("images.yaml", "deploy/manifests/dex.yaml",
                 "deploy/charts/foundation/values.yaml"):
        path = dev_project / name
        path.write_text(path.read_text().replace("v2.41.1", "v2.41.2"))
    (dev_project / "images/dex/rootfs/release").write_text("v2.41.2\n")
    assert main(["bake", "--env", "dev", "--config", str(dev_project / "images.yaml"),
                 "--quiet"]) == 0
    second, status, held = boot()
    new = next(i for i in second.images if i.name == "dex")
    assert new.ref.endswith(":v2.41.2") and new.image_id != old.image_id
    assert set(status["released"]) == {old.ref, old.digest_ref}, status
    states = {i["name"]: i["state"] for i in status["images"]}
    assert states == {"dex": "imported", "registry": "present"}  # registry: no download
    rows = {line.split()[1]: line for line in held}
    assert "io.cri-containerd.pinned=pinned" not in rows[old.ref]  # still there, let go
    assert "io.cri-containerd.pinned=pinned" in rows[new.ref]
