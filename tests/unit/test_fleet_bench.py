"""bench/fleet.py's parts that need no root: the ctr stand-in's archive check, the proxy's
request rewriting, and the stand-in answering what the real importer asks."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import fleetctr, fleetnode, fleetproxy
from kiln import ociarchive
from kiln.model import Compression

ROOT = Path(__file__).resolve().parents[2]
REF = "registry.example.com/fleet/img0:v1"


def archive(tmp_path: Path) -> Path:
    """kiln's stored object for a one-layer image, as the fleet's store holds it."""
    out = bytearray()
    raw = fleetnode.docker_save(REF, b"x" * 5000 + bytes(range(256)))
    ociarchive.convert([raw], Compression("zstd", 1), out.extend)
    path = tmp_path / "object.tar"
    path.write_bytes(bytes(out))
    return path


def check(tmp_path: Path, path: Path, monkeypatch: pytest.MonkeyPatch,
          expect: str | None = None) -> tuple[int, dict[str, object]]:
    state = tmp_path / "state"
    (tmp_path / "expect.json").write_text(json.dumps(
        {REF: expect or hashlib.sha256(path.read_bytes()).hexdigest()}))
    monkeypatch.setenv("FLEET_CTR_STATE", str(state))
    monkeypatch.setenv("FLEET_EXPECT", str(tmp_path / "expect.json"))
    code = fleetctr.main(["check", "--platform", "linux/amd64", str(path)])
    lines = (state / "imports.jsonl").read_text().splitlines()
    return code, json.loads(lines[-1])


def test_a_complete_archive_passes_and_is_recorded(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, record = check(tmp_path, archive(tmp_path), monkeypatch)
    assert code == 0
    assert record["verified"] is True and record["problems"] == [] and record["refs"] == [REF]
    assert list((tmp_path / "state/images").iterdir())


def test_a_flipped_byte_in_a_blob_fails_and_is_unverified(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    path = archive(tmp_path)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside the first member's body: a blob
    path.write_bytes(bytes(data))
    code, record = check(tmp_path, path, monkeypatch, expect=good)
    assert code == 1
    assert record["verified"] is False and "hashes to" in str(record["problems"])


def test_a_truncated_archive_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = archive(tmp_path)
    path.write_bytes(path.read_bytes()[:3000])
    code, record = check(tmp_path, path, monkeypatch)
    assert code == 1 and record["problems"]


def test_the_proxy_names_the_origin_and_closes() -> None:
    head = (b"GET /blobs/sha256/ab?X-Amz-Signature=1 HTTP/1.1\r\nHost: 198.18.0.1:8080\r\n"
            b"Range: bytes=10-\r\nConnection: keep-alive\r\n\r\n")
    out = fleetproxy.forward_head(head, "127.0.0.1:7480").decode()
    assert out.startswith("GET /blobs/sha256/ab?X-Amz-Signature=1 HTTP/1.1\r\n")
    assert "Host: 127.0.0.1:7480\r\n" in out and "198.18" not in out
    assert "Range: bytes=10-\r\n" in out and out.endswith("Connection: close\r\n\r\n")
    assert fleetproxy.header(head, "range") == "bytes=10-"


def test_fault_shares_are_drawn_as_asked() -> None:
    proxy = fleetproxy.Proxy.__new__(fleetproxy.Proxy)
    proxy.faults = fleetproxy.Faults(slowdown=0.2, reset=0.1, seed=3)
    proxy.rng = random.Random(3)
    proxy.lock = threading.Lock()
    drawn = [proxy.draw()[0] for _ in range(5000)]
    assert abs(drawn.count("slowdown") / 5000 - 0.2) < 0.03
    assert abs(drawn.count("reset") / 5000 - 0.1) < 0.03
    assert "stall" not in drawn


@pytest.mark.skipif(shutil.which("curl") is None, reason="the importer needs curl")
def test_the_stand_in_answers_the_real_importer(tmp_path: Path) -> None:
    """The rendered importer against a local store, with the stand-in as its ctr: every
    image imported, pinned, and --check agrees (what every simulated node runs)."""
    from bench.fleetstore import DirBackend

    env, lock = fleetnode.make_store(tmp_path, [0.2, 0.1], 5, {})
    store = DirBackend()
    base = store.start(tmp_path / "store", tmp_path / "store.log")
    try:
        node_dir = fleetnode.render_for(env, lock, tmp_path, base)
        _, stand_in, _ = fleetnode.prepare(tmp_path, node_dir, lock)
        files = fleetnode.node_files(tmp_path, 0, stand_in, node_dir, "/usr/bin:/bin", None)
        files.env["FLEET_PYTHON"] = sys.executable
        for extra in ([], ["--check"]):
            done = subprocess.run(["sh", str(node_dir / "import-images"), "--status",
                                   str(files.folder / "status.json"), *extra],
                                  env=files.env, capture_output=True, text=True, timeout=60,
                                  check=False)
            assert done.returncode == 0, done.stderr
        assert "all 2 images present" in done.stderr
    finally:
        store.stop()
    result = fleetnode.outcome(files.folder)
    assert [i["verified"] for i in result.imports] == [True, True]


def test_the_stand_in_keeps_labels_as_ctr_does(tmp_path: Path) -> None:
    """Labels set, replaced and removed; filters ORed, a label filter matching the whole pair
    (the importer reads pins through these filters, never the LABELS column)."""
    env = {"FLEET_CTR_STATE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ctr = ["sh", str(fleetnode.HERE / "fleet-ctr.sh"), "-n", "k8s.io", "images"]

    def run(*args: str) -> str:
        done = subprocess.run([*ctr, *args], env=env, capture_output=True, text=True,
                              check=True, timeout=30)
        return done.stdout

    (tmp_path / "images").mkdir()
    (tmp_path / "content").mkdir()
    (tmp_path / "images" / "r.example_a_v1").write_text("r.example/a:v1 m sha256:1 9 p -\n")
    run("tag", "--force", "r.example/a:v1", "r.example/a@sha256:1")
    run("label", "r.example/a:v1", "pin=pinned", "env=prod", "from=x")
    run("label", "r.example/a:v1", "env=dev", "from=")
    line = run("ls", "name==r.example/a:v1").splitlines()[1]
    assert sorted(line.split()[-1].split(",")) == ["env=dev", "pin=pinned"]
    assert run("ls", "-q", 'labels."env"==dev') == "r.example/a:v1\n"
    assert run("ls", "-q", 'labels."env"==de') == ""  # the whole value, not a prefix
    assert run("ls", "-q", 'name==r.example/a:v1,labels."pin"==pinned') == "r.example/a:v1\n"
    assert run("ls", "-q", "name==r.example/a@sha256:1,labels.\"pin\"==pinned") == ""
    both = run("ls", "-q", "name==r.example/a@sha256:1", 'labels."env"==dev')
    assert sorted(both.split()) == ["r.example/a:v1", "r.example/a@sha256:1"]
