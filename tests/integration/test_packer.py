"""A real `packer build` runs the generated provisioners over SSH to a private sshd."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kiln import config as config_mod
from kiln.localengine import Daemon
from kiln.render import PlainLocator, render
from tests.integration.conftest import free_port
from tests.integration.nodes import Node, assert_imported, make_node

USER_SOURCE = """\
variable "ssh_port" {
  type = number
}

variable "ssh_key" {
  type = string
}

source "null" "node" {
  communicator         = "ssh"
  ssh_host             = "127.0.0.1"
  ssh_port             = var.ssh_port
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_key
}
"""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private sshd on 127.0.0.1 that lets the test's key in as root."""
    for tool in ("sshd", "ssh-keygen", "packer"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is missing: run .ci/run (openssh-server, packer)")
    folder = tmp_path / "sshd"
    folder.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(folder / "sshd_config"), "-E",
                             str(folder / "sshd.log")])
    deadline = time.monotonic() + 20
    while subprocess.run(["ssh", "-i", str(folder / "client"), "-p", str(port),
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "BatchMode=yes", "root@127.0.0.1", "true"],
                         capture_output=True, check=False).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, (
            (folder / "sshd.log").read_text())
        time.sleep(0.2)
    yield port, folder / "client"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def packer_node(baked: Path, tmp_path: Path, fresh_containerd: Daemon) -> Iterator[Node]:
    (tmp_path / "packer").mkdir()
    (tmp_path / "packer/node.pkr.hcl").write_text(USER_SOURCE)
    yield from make_node(baked, tmp_path, fresh_containerd)


def packer(node: Node, command: str, port: int, key: Path) -> subprocess.CompletedProcess[str]:
    assert node.containerd is not None
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(node.folder / "pc"),
           "HOME": str(node.folder)}
    return subprocess.run(
        ["packer", command, "-var", f"ssh_port={port}", "-var", f"ssh_key={key}",
         "-var", f"containerd_address={node.containerd.socket}",
         "-var", f"kiln_prefix={node.folder / 'prefix'}",
         "-var", f"kiln_tmpdir={node.folder}", str(node.folder / "dist/it/packer")],
        env=env, capture_output=True, text=True, timeout=600, check=False)


def test_packer_build_runs_the_importer_over_ssh(packer_node: Node,
                                                  sshd: tuple[int, Path]) -> None:
    node = packer_node
    env = config_mod.load(node.folder / "images.yaml").environment("it")
    env = replace(env, packer_sources=("source.null.node",))
    render(env, node.lock, node.folder / "dist", PlainLocator(node.server.url),
           packer_dir=node.folder / "packer")
    port, key = sshd
    valid = packer(node, "validate", port, key)
    assert valid.returncode == 0, valid.stdout + valid.stderr

    built = packer(node, "build", port, key)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "all 2 images present" in built.stdout + built.stderr
    assert_imported(node, {"small", "big"})
    installed = node.folder / "prefix"
    assert (installed / "import-images").read_text() == (
        node.folder / "dist/it/node/import-images").read_text()
    assert oct((installed / "images.data").stat().st_mode & 0o777) == "0o600"
