"""The dev Ceph's pure parts: the block users paste, and stopping by PID only what is ours.
(Starting it, and what radosgw checks, is the integration tier's `ceph` fixture.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kiln import cephdev
from kiln import config as config_mod
from kiln.errors import KilnError

CLUSTER = cephdev.Cluster(Path("/nowhere"), "http://127.0.0.1:7480",
                          cephdev.Keys("kiln", "WRITERKEY", "writer-secret"),
                          cephdev.Keys("kiln-nodes", "READERKEY", "reader-secret"))


def test_the_printed_environment_loads_and_holds_no_secret(tmp_path: Path) -> None:
    block = cephdev.env_block(CLUSTER, "kiln")
    pasted = "".join(line + "\n" for line in block.splitlines() if line.startswith("  "))
    assert "secret" not in pasted and "KEY" not in pasted  # keys go to the environment only
    (tmp_path / "images.yaml").write_text(
        "version: 1\nimages:\n"
        "  - {name: x, ref: registry.example.com/f/x:v1, build: ctx}\n"
        "environments:\n" + pasted)
    env = config_mod.load(tmp_path / "images.yaml").environment("ceph")
    assert isinstance(env.store, config_mod.S3Store)
    assert (env.store.endpoint, env.store.bucket, env.store.region, env.store.addressing) == (
        "http://127.0.0.1:7480", "kiln", "default", "path")
    assert "export AWS_ACCESS_KEY_ID=WRITERKEY\n" in block
    assert "export AWS_SECRET_ACCESS_KEY=writer-secret\n" in block
    assert "AWS_ACCESS_KEY_ID=READERKEY AWS_SECRET_ACCESS_KEY=reader-secret" in block


def test_stop_leaves_alone_a_recorded_pid_that_is_not_its_daemon(tmp_path: Path) -> None:
    """A PID file outlives its process (a reboot): stop signals a PID only while it still
    runs with this folder's ceph.conf."""
    started = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    stranger = int(started.stdout)  # not our child: the shell that started it has exited
    try:
        (tmp_path / "pids").mkdir()
        (tmp_path / "ceph.conf").write_text("")
        (tmp_path / "pids" / "mon.pid").write_text(f"{stranger}\n")
        cephdev.stop(tmp_path, timeout=1)
        time.sleep(0.2)
        state = Path(f"/proc/{stranger}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in "RS"  # still running (not a zombie)
        assert not tmp_path.exists()
    finally:
        os.kill(stranger, signal.SIGKILL)


def test_a_folder_ceph_conf_would_misread_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="takes letters, digits"):
        cephdev.start(tmp_path / "a$cluster#b")
