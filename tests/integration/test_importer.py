"""The node importer against a real containerd, fed by a real HTTP server (with faults)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.localengine import Daemon, start_containerd
from tests.integration.nodes import Node, assert_imported, make_node


@pytest.fixture
def node(baked: Path, tmp_path: Path, fresh_containerd: Daemon) -> Iterator[Node]:
    yield from make_node(baked, tmp_path, fresh_containerd)


def test_imports_every_image_under_its_ref_and_a_rerun_is_a_no_op(node: Node) -> None:
    done = node.run()
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    status = node.status()
    assert status["ok"] is True
    assert {i["state"] for i in status["images"]} == {"imported"}  # type: ignore[union-attr]
    assert "verified sha256" in done.stderr
    requests = len(node.server.requests)

    again = node.run()
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert len(node.server.requests) == requests  # nothing downloaded
    check = node.run("--check")
    assert check.returncode == 0 and "all 2 images present" in check.stderr


def without_openssl(folder: Path) -> dict[str, str]:
    """PATH with an `openssl` that fails first: the importer must fall back to sha256sum."""
    bin_dir = folder / "no-openssl"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "openssl").write_text("#!/bin/sh\nexit 127\n")
    (bin_dir / "openssl").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_one_download_at_a_time_hashing_with_sha256sum(node: Node) -> None:
    data = node.folder / "dist/it/node/images.data"
    data.write_text(data.read_text().replace("set parallel 2", "set parallel 1"))
    done = node.run(env=without_openssl(node.folder))
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})


@pytest.mark.parametrize("hasher", ["openssl", "sha256sum"])
def test_a_corrupted_object_is_never_imported(node: Node, hasher: str) -> None:
    big = next(i for i in node.lock.images if i.name == "big")
    blob = node.folder / "store" / big.key
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    done = node.run(env=without_openssl(node.folder) if hasher == "sha256sum" else None)
    assert done.returncode == 1
    assert "big: FAILED: sha256 mismatch" in done.stderr
    assert_imported(node, {"small"})
    assert node.status()["ok"] is False
    check = node.run("--check")
    assert check.returncode == 1 and "missing" in check.stderr


def test_an_import_killed_midway_fails_that_image_and_the_run_ends(node: Node) -> None:
    """The shell running one import is killed (the OOM killer, say): a verdict still reaches
    the main shell, which would otherwise wait on its FIFO for ever."""
    number = 1 + [i.name for i in node.lock.images].index("big")  # its line in the data file
    bin_dir = node.folder / "killed-ctr"
    bin_dir.mkdir()
    (bin_dir / "ctr").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *"images import"*/{number}.blob) kill -9 "$PPID"; exit 1 ;; esac\n'
        f'exec {shutil.which("ctr")} "$@"\n')
    (bin_dir / "ctr").chmod(0o755)
    done = node.run(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 1, done.stderr
    assert "big: FAILED: import failed" in done.stderr
    assert_imported(node, {"small"})


def test_server_errors_and_resets_are_retried(node: Node) -> None:
    for image in node.lock.images:
        node.server.faults[image.key] = ["500", "reset", "500"]
    done = node.run()
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    for image in node.lock.images:
        assert node.server.requests.count(image.key) >= 4


def test_gives_up_after_its_retries(node: Node) -> None:
    small = next(i for i in node.lock.images if i.name == "small")
    node.server.faults[small.key] = ["500"] * 20
    done = node.run(env={"KILN_RETRIES": "3"})
    assert done.returncode == 1
    assert "small: FAILED: download failed after 3 tries" in done.stderr
    assert node.server.requests.count(small.key) == 3
    assert_imported(node, {"big"})


def test_waits_for_containerd(baked: Path, tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="kiln-late-"))
    nodes = make_node(baked, tmp_path, None)
    node = next(nodes)
    started: list[Daemon] = []

    def late() -> None:
        time.sleep(10)
        started.append(start_containerd(base))

    thread = threading.Thread(target=late)
    thread.start()
    try:
        t0 = time.monotonic()
        done = node.run(address=str(base / "containerd.sock"))
        thread.join()
        assert done.returncode == 0, done.stderr
        assert "waiting for containerd" in done.stderr
        assert time.monotonic() - t0 >= 10
        node.containerd = started[0]
        assert_imported(node, {"small", "big"})
    finally:
        thread.join()
        for daemon in started:
            daemon.stop()
        subprocess.run(["umount", "-R", "-l", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
        nodes.close()


def test_too_little_space_fails_cleanly(node: Node) -> None:
    small_fs = node.folder / "tiny"
    small_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small_fs)],
                   check=True)
    try:
        done = node.run(env={"TMPDIR": str(small_fs)})
        assert done.returncode == 1
        assert "not enough space" in done.stderr
        assert list(small_fs.iterdir()) == []  # nothing partial left
        assert_imported(node, set())
    finally:
        subprocess.run(["umount", str(small_fs)], check=True)


def test_rendered_user_data_passes_cloud_init_schema(node: Node) -> None:
    for path in (node.folder / "dist/it/cloud-init/user-data",):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":  # over the size limit: cloud-init takes it gzipped
            data = gzip.decompress(data)
        plain = node.folder / "user-data.txt"
        plain.write_bytes(data)
        done = subprocess.run(["cloud-init", "schema", "--config-file", str(plain)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Valid cloud-config" in done.stdout


def test_importer_is_shellcheck_clean() -> None:
    importer = Path(__file__).parents[2] / "templates/import-images.sh"
    done = subprocess.run(["shellcheck", "-s", "sh", str(importer)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout
