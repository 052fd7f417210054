"""The node importer against a real containerd, fed by a real HTTP server (with faults)."""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from kiln import verify as verify_mod
from kiln.containerd import CtrContainerd
from kiln.localengine import Daemon, start_containerd
from kiln.ports import ADOPTED_LABEL, LOCK_LABEL, NAME_LABEL, OWNER_LABEL, PIN_LABEL
from tests.integration.nodes import FaultyServer, Node, assert_imported, curl_spy, make_node


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


def test_a_missing_digest_name_is_restored_and_another_manifest_is_replaced(
        node: Node, docker_client: docker.DockerClient) -> None:
    """A node whose containerd lost the repo@sha256 record (an older kiln imported the ref
    only): --check fails naming it, and a run names it again without a download. A node that
    holds the same image under another manifest (a `docker save` archive imported by hand:
    containerd writes its own manifest) is imported again, so a digest-pinned pod finds it."""
    assert node.run().returncode == 0, node.logs[-1]
    small = next(i for i in node.lock.images if i.name == "small")
    big = next(i for i in node.lock.images if i.name == "big")
    assert small.digest_ref is not None
    node.ctr.run("images", "rm", small.digest_ref)
    check = node.run("--check")
    assert check.returncode == 1
    assert f"small: missing-digest-ref {small.ref}" in check.stderr
    requests = len(node.server.requests)
    again = node.run()
    assert again.returncode == 0, again.stderr
    assert f"small: named {small.digest_ref}" in again.stderr
    assert len(node.server.requests) == requests  # nothing downloaded
    assert_imported(node, {"small", "big"})

    saved = b"".join(docker_client.api.get_image(big.ref))  # the engine still has it
    node.ctr.run("images", "import", "-", stdin=saved)
    resaved = node.ctr.images()[big.ref]
    assert resaved.manifest_digest != big.manifest_digest
    assert node.ctr.image_id(resaved.manifest_digest) == big.image_id  # the same image
    assert node.run("--check").returncode == 1
    fixed = node.run()
    assert fixed.returncode == 0, fixed.stderr
    assert f"big: {big.ref} is {resaved.manifest_digest}" in fixed.stderr
    assert node.server.requests.count(big.key) == 2  # imported again from the store
    assert_imported(node, {"small", "big"})


def test_names_an_import_made_are_kiln_s_and_one_pinned_before_is_adopted(node: Node) -> None:
    """A new node's names are made by the import, so kiln skips asking whether someone pinned
    them first; a name that was there, pinned by an operator, is still adopted when its
    image is imported again (kiln lets go of its own labels later, never of that pin)."""
    assert node.run().returncode == 0, node.logs[-1]
    small = next(i for i in node.lock.images if i.name == "small")
    assert small.digest_ref is not None
    images = node.ctr.images()
    for name in (small.ref, small.digest_ref):
        assert images[name].labels[PIN_LABEL] == "pinned"
        assert images[name].labels[OWNER_LABEL] == "it"
        assert ADOPTED_LABEL not in images[name].labels

    # the ref is gone; its digest name stayed, pinned by an operator, not kiln's
    node.ctr.run("images", "rm", small.ref)
    node.ctr.run("images", "label", small.digest_ref, f"{OWNER_LABEL}=", f"{LOCK_LABEL}=",
                 f"{NAME_LABEL}=")
    done = node.run()
    assert done.returncode == 0, done.stderr
    assert f"small: imported {small.ref}" in done.stderr
    images = node.ctr.images()
    assert images[small.digest_ref].labels.get(ADOPTED_LABEL) == "true"
    assert images[small.digest_ref].labels[OWNER_LABEL] == "it"
    assert ADOPTED_LABEL not in images[small.ref].labels
    assert_imported(node, {"small", "big"})


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


def test_gives_up_on_containerd_by_the_clock(node: Node, tmp_path: Path) -> None:
    """`ctr` takes 10 s to fail to dial a socket that is not there: containerd_timeout counts
    seconds, not tries (it counted tries: 300 s was about 55 minutes)."""
    node.render(containerd_timeout=3)
    t0 = time.monotonic()
    done = node.run(address=str(tmp_path / "nowhere.sock"))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"kiln-import: error: containerd did not answer at {tmp_path / 'nowhere.sock'} "
        "within 3s")
    assert time.monotonic() - t0 < 25  # by tries: 4 of ~11 s


def test_a_clock_step_does_not_cut_the_wait_for_containerd(node: Node, tmp_path: Path) -> None:
    """NTP steps the wall clock an hour forward while the importer waits for containerd (at
    boot, just when it waits): the wait still lasts containerd_timeout (counted since boot)."""
    bin_dir = tmp_path / "stepping-date"
    bin_dir.mkdir()
    real, stepped = shutil.which("date"), tmp_path / "stepped"
    (bin_dir / "date").write_text(  # the first `date +%s` as it is, every later one +1 h
        "#!/bin/sh\n"
        f'if [ "$1" = +%s ] && [ -e {stepped} ]; then echo $(( $({real} +%s) + 3600 )); exit; fi\n'
        f'if [ "$1" = +%s ]; then : > {stepped}; fi\n'
        f'exec {real} "$@"\n')
    (bin_dir / "date").chmod(0o755)
    node.render(containerd_timeout=15)
    t0 = time.monotonic()
    done = node.run(address=str(tmp_path / "nowhere.sock"),
                    env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("within 15s")
    assert time.monotonic() - t0 >= 15


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


# -- a node never hangs on its store (issue 10, section 2) -----------------------------------------

IMPORTER = Path(__file__).parents[2] / "templates/import-images.sh"


def importer_block(name: str) -> str:
    """The importer's own text between `# >>> NAME` and `# <<< NAME`: run on its own."""
    text = IMPORTER.read_text()
    start, end = text.find(f"# >>> {name}"), text.find(f"# <<< {name}")
    assert 0 <= start < end, f"no block {name!r} in {IMPORTER}"
    return text[start:end]


def key_of(node: Node, name: str) -> str:
    return next(i.key for i in node.lock.images if i.name == name)


def test_a_stalled_download_is_abandoned_within_the_stall_timeout_and_retried(
        node: Node) -> None:
    """One server sends headers and a KiB, then nothing; the other accepts and never answers.
    Before: curl had only --connect-timeout and waited for ever."""
    node.render(stall_timeout=3)
    big, small = key_of(node, "big"), key_of(node, "small")
    node.server.faults[big] = ["stall"]
    node.server.faults[small] = ["silent"]
    done = node.run(timeout=120)
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    for name in ("big", "small"):  # each retry is logged as it happens
        assert f"kiln-import: {name}: try 1 failed (curl: (28) Operation too slow" in done.stderr
    for key in (big, small):
        gaps = node.server.gaps(key)
        assert len(gaps) == 1, gaps
        # abandoned after 3 s without progress, then at most 1 s of back-off (+ slack)
        assert gaps[0] < 3 + 1 + 3, gaps
    # the stalled transfer's first KiB is kept: the retry resumes after it (-C - with --fail)
    assert node.server.ranges[big] == [None, "bytes=1024-"]
    assert node.server.ranges[small] == [None, None]


def test_retry_after_is_honoured_on_503_and_429(node: Node) -> None:
    big, small = key_of(node, "big"), key_of(node, "small")
    node.server.faults[small] = ["503:3", "503:3"]
    node.server.faults[big] = ["429:2"]
    done = node.run(timeout=120)
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    assert len(node.server.gaps(small)) == 2 and len(node.server.gaps(big)) == 1
    assert all(gap >= 3 for gap in node.server.gaps(small)), node.server.gaps(small)
    assert node.server.gaps(big)[0] >= 2, node.server.gaps(big)
    assert "small: try 2 failed (curl: (22) The requested URL returned error: 503, HTTP 503)" \
        in done.stderr


def test_the_import_gives_up_within_its_budget_with_a_one_line_reason(node: Node) -> None:
    """A store that answers 503 for ever, and one that asks to come back in an hour: the run
    ends within its budget (exit 1), not after as many tries as it is allowed."""
    node.render(import_budget=10, retries=1000, retry_max_delay=2)
    big, small = key_of(node, "big"), key_of(node, "small")
    node.server.faults[small] = ["503"] * 10000
    node.server.faults[big] = ["503:3600"]
    t0 = time.monotonic()
    done = node.run(timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stderr
    assert elapsed < 10 + 8, elapsed  # the budget, plus start-up and containerd's answers
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == ("kiln-import: error: 2 of 2 images missing: the import budget of 10s "
                         "(node.import_budget) is spent"), done.stderr
    assert "small: FAILED: import budget of 10s spent after" in done.stderr
    assert ("big: FAILED: the store answered 503, retry after 3600s: past the import budget "
            "(10s): curl: (22)") in done.stderr
    assert node.server.requests.count(big) == 1  # no retry it could not finish in time
    assert node.server.requests.count(small) >= 3
    assert_imported(node, set())


def test_backoff_is_full_jitter_from_a_random_source(tmp_path: Path) -> None:
    """The importer's own back-off functions: a delay is random in 0..min(cap, base * 2^n) ms
    (full jitter), from /dev/urandom, so nodes that failed together do not retry together."""
    block = tmp_path / "backoff.sh"
    block.write_text(importer_block("backoff"))
    fixed = tmp_path / "random"
    fixed.write_bytes(bytes([0x01, 0x02, 0x03, 0x04]))  # od -tu4 reads 0x04030201
    drawn = 0x04030201
    script = '. "$1"; shift; for n in "$@"; do backoff_ms 1 30 "$n"; done'
    done = subprocess.run(["sh", "-c", script, "_", str(block), "0", "1", "3", "4", "5", "9"],
                          env={**os.environ, "KILN_RANDOM_SOURCE": str(fixed)},
                          capture_output=True, text=True, check=True)
    bounds = [1000, 2000, 8000, 16000, 30000, 30000]  # min(30 s, 1 s * 2^n), in ms
    assert [int(v) for v in done.stdout.split()] == [drawn % (b + 1) for b in bounds]

    samples = subprocess.run(["sh", "-c", script, "_", str(block), *["3"] * 300],
                             capture_output=True, text=True, check=True)
    values = [int(v) for v in samples.stdout.split()]
    assert len(values) == 300 and all(0 <= v <= 8000 for v in values)
    assert len(set(values)) > 200  # not a constant, not a coarse grid
    assert min(values) < 1000 and max(values) > 7000  # the whole range, down to zero


def test_curl_config_quoting_keeps_a_url_intact(node: Node) -> None:
    """URLs go to curl in its config file (-K -), quoted: one with a quote and a backslash
    arrives as it was."""
    block = node.folder / "curl-config.sh"
    block.write_text(importer_block("curl config"))
    url = f"{node.server.url}q/a\"b\\c?X-Amz-Signature=s%2Bt&x=1"
    done = subprocess.run(
        ["sh", "-c", '. "$1"; printf "url = %s\\n" "$(curl_quote "$2")" | '
                     'curl -sS -K - -o /dev/null', "_", str(block), url],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr  # a 404 (not in the store), but it got there
    assert node.server.requests[-1] == 'q/a"b\\c'


def test_urls_never_reach_curls_command_line(node: Node) -> None:
    """`ps` shows a command line to every user of the node: a presigned URL there is a
    credential handed out. Before: the URL was curl's last argument."""
    env, argv_log = curl_spy(node.folder)
    done = node.run(env=env)
    assert done.returncode == 0, done.stderr
    argv = argv_log.read_text()
    assert argv.count("-K -") == 2
    assert "127.0.0.1" not in argv and "blobs/sha256" not in argv, argv


def gate_and_start(node: Node, run_dir: Path) -> tuple[str, str, dict[str, str]]:
    """The rendered unit's ExecStart and kubelet's ExecStartPre gate, pointed at this node's
    files instead of /usr/local/lib/kiln and /run/kiln."""
    folder = node.folder / "dist/it/node"
    fields: dict[str, str] = {}
    for name in ("kiln-import.service", "10-kiln-import.conf"):
        for line in (folder / name).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                fields[key] = value.replace("/usr/local/lib/kiln", str(folder)).replace(
                    "/run/kiln", str(run_dir))
    return fields["ExecStart"], fields["ExecStartPre"], fields


def test_outage_recovery_the_way_systemd_runs_the_unit(node: Node, tmp_path: Path) -> None:
    """The store is down at boot: each run fails within its budget, systemd runs the unit again
    (Restart=on-failure, no start limit), each retried run backs off first, and kubelet's
    gate (ExecStartPre) holds it until the images are in: then both pass."""
    from tests.integration.conftest import free_port

    port = free_port()
    node.render(base_url=f"http://127.0.0.1:{port}/", import_budget=10, retries=3,
                retry_max_delay=2)
    run_dir = tmp_path / "run-kiln"
    start, gate, unit = gate_and_start(node, run_dir)
    assert unit["Type"] == "oneshot" and unit["Restart"] == "on-failure"
    assert unit["StartLimitIntervalSec"] == "0" and int(unit["RestartSec"]) > 0
    assert int(unit["TimeoutStartSec"]) > 0  # finite: a wedged run is killed and retried
    assert gate.startswith("/bin/sh -c '") and start.startswith("/bin/sh ")
    gate_argv = ["sh", "-c", gate[len("/bin/sh -c '"):-1]]
    env = node.environ()

    def run_unit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(shlex.split(start), env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    def gate_passes() -> bool:
        return subprocess.run(gate_argv, env=env, capture_output=True, timeout=120,
                              check=False).returncode == 0

    for failed in (1, 2):  # the store is down: connection refused
        t0 = time.monotonic()
        done = run_unit()
        assert done.returncode == 1, done.stderr
        assert time.monotonic() - t0 < 10 + 2 + 8
        assert (run_dir / "failed-runs").read_text().strip() == str(failed)
        assert "systemd runs the import again" in done.stderr.splitlines()[-1]
        assert not gate_passes()  # kubelet stays held
    assert "run after 1 failed runs: waiting" in done.stderr

    server = FaultyServer(node.folder / "store", port).start()
    try:
        done = run_unit()
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "run after 2 failed runs: waiting" in done.stderr
    assert not (run_dir / "failed-runs").exists()
    assert_imported(node, {"small", "big"})
    assert gate_passes()  # kubelet starts


@pytest.mark.parametrize("policy", ["hold-kubelet", "start-kubelet"])
def test_rendered_units_pass_systemd_analyze_verify(baked: Path, tmp_path: Path,
                                                    policy: str) -> None:
    """Beside a kubelet.service like kubeadm's (Restart=always): systemd parses the unit and
    the drop-in without a complaint."""
    nodes = make_node(baked, tmp_path / "node", None)
    node = next(nodes)
    node.render(on_import_failure=policy)
    units = tmp_path / "units"
    (units / "kubelet.service.d").mkdir(parents=True)
    shutil.copy(node.folder / "dist/it/node/kiln-import.service", units)
    shutil.copy(node.folder / "dist/it/node/10-kiln-import.conf", units / "kubelet.service.d")
    (units / "kubelet.service").write_text(
        "[Unit]\nDescription=kubelet\nWants=network-online.target\nAfter=network-online.target\n"
        "[Service]\nExecStart=/bin/true\nRestart=always\nStartLimitInterval=0\nRestartSec=10\n"
        "[Install]\nWantedBy=multi-user.target\n")
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(units / "kiln-import.service"), str(units / "kubelet.service")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(units) not in done.stdout + done.stderr  # no warning about our files
    nodes.close()


@pytest.mark.parametrize("line", ["set stall_timeout 5;reboot", "set retries 0x10",
                                  "set import_budget 010", "set retry_max_delay -1",
                                  "set containerd_timeout 010",
                                  "set containerd_timeout $(reboot)"])
def test_node_settings_in_the_data_file_are_whole_numbers_only(node: Node, line: str) -> None:
    """They reach curl's options and the shell's arithmetic: anything else is refused before
    a single request (010 would be octal in $((...)))."""
    data = node.folder / "dist/it/node/images.data"
    key = line.split()[1]
    text = "\n".join(line if row.startswith(f"set {key} ") else row
                     for row in data.read_text().splitlines())
    assert line in text
    data.write_text(text + "\n")
    done = node.run()
    assert done.returncode == 1
    value = line.split()[2]
    assert done.stderr.strip().splitlines()[-1] == (
        f"kiln-import: error: {data}: {key} must be a whole number of seconds above 0, "
        f"not '{value}'")
    assert node.server.requests == []


@pytest.mark.parametrize(("column", "value"), [
    (-1, "other.example.com/x@sha256:" + "a" * 64), (-1, "REPO@sha256:" + "a" * 63),
    (-1, "REPO@sha256:$(reboot)"), (-1, "REPO@sha256:" + "A" * 64), (-1, "REPO:v1"),
    (-1, "a" * 64), (3, "REPO@b@sha256:" + "a" * 64), (3, "a" * 64),
    (3, "REPO@sha256:" + "a" * 65), (3, "-")])
def test_a_digest_or_index_name_in_the_data_file_is_checked_whole(node: Node, column: int,
                                                                  value: str) -> None:
    """The digest name and the upstream index's are pinned by root on every node: only
    REPO@sha256:<64 hex> of the image's own repository passes, before a single request."""
    data = node.folder / "dist/it/node/images.data"
    rows = []
    for row in data.read_text().splitlines():
        if row.startswith("image "):
            fields = row.split()
            fields[column] = value.replace("REPO", fields[3].rsplit("@", 1)[0])
            row = " ".join(fields)
        rows.append(row)
    data.write_text("\n".join(rows) + "\n")
    done = node.run()
    assert done.returncode == 1
    assert "is not a name of" in done.stderr and "@sha256:<64 hex>)" in done.stderr
    assert node.server.requests == []


@pytest.mark.parametrize(("header", "seconds"), [
    ("Retry-After: 08", "8"), ("retry-after:010", "10"), ("Retry-After: 000", "0"),
    ("Retry-After: 7\r", "7"), ("Retry-After: 99999999999999", "999999999"),
    ("Retry-After: -5", ""), ("Retry-After: 5s", ""),
    ("Retry-After: Wed, 21 Oct 2026 07:28:00 GMT", ""), ("X-Other: 3", ""),
])
def test_retry_after_is_read_as_decimal_seconds(tmp_path: Path, header: str,
                                                seconds: str) -> None:
    """A zero-padded Retry-After is decimal (sh reads 010 as octal and 08 as an error); junk
    and the HTTP-date form give nothing; a huge value is capped. (Fails before this change:
    08 aborted the arithmetic, 010 waited 8 s.)"""
    block = tmp_path / "retry-after.sh"
    block.write_text(importer_block("retry-after"))
    headers = tmp_path / "headers"
    headers.write_text(f"HTTP/1.1 503 Slow Down\r\n{header}\r\n\r\n")
    done = subprocess.run(["sh", "-c", '. "$1"; retry_after "$2"', "_", str(block),
                           str(headers)], capture_output=True, text=True, check=True)
    assert done.stdout == seconds


def test_a_newline_in_another_tools_label_puts_a_ghost_image_into_verify(node: Node) -> None:
    """`ctr images ls` prints a label value with a newline (and tabs) as it is; its tabwriter
    aligns the text after the newline as rows of their own, and parse_images (dict by ref,
    last row wins) takes them for images. Here another tool's label on an image that sorts
    last claims `small` is pinned after its pin was taken away: verify says present."""
    assert node.run().returncode == 0, node.logs[-1]
    small = next(i for i in node.lock.images if i.name == "small")
    for name in (small.ref, small.digest_ref):
        node.ctr.run("images", "label", name, f"{PIN_LABEL}=")
    client = CtrContainerd(str(node.ctr.address))
    before = {i.ref: i.state for i in verify_mod.verify_node(node.lock, client)}
    assert before[small.ref] == verify_mod.NOT_PINNED
    # a foreign image whose name sorts after small's, with a label value holding a newline
    # and tabs (ctr's tabwriter aligns the second line as a row of its own)
    node.ctr.run("images", "tag", small.ref, "zzz.example.com/theirs/tool:v1")
    ghost = "\n".join("\t".join([name, "application/vnd.oci.image.manifest.v1+json",
                                  str(small.manifest_digest), "1 KiB", "linux/amd64",
                                  f"{PIN_LABEL}=pinned,io.cri-containerd.image=managed"])
                       for name in (small.ref, str(small.digest_ref)))
    node.ctr.run("images", "label", "zzz.example.com/theirs/tool:v1", f"zz.note=a\n{ghost}")
    check = node.run("--check")  # the importer asks with filters: it is not fooled
    assert check.returncode == 1 and "small: present but not pinned" in check.stderr
    after = {i.ref: i.state for i in verify_mod.verify_node(node.lock, client)}
    assert after[small.ref] == verify_mod.NOT_PINNED, after


def test_a_comma_in_another_tools_label_value_reads_as_a_pin(node: Node) -> None:
    """No newline needed: a value `x,io.cri-containerd.pinned=pinned` on the image itself
    (sorted after the real labels) is split into a pin by parse_images' comma rule."""
    assert node.run().returncode == 0, node.logs[-1]
    small = next(i for i in node.lock.images if i.name == "small")
    for name in (small.ref, str(small.digest_ref)):
        node.ctr.run("images", "label", name, f"{PIN_LABEL}=",
                     f"zz.note=x,{PIN_LABEL}=pinned")
    assert PIN_LABEL not in node.ctr.run("images", "ls", "-q",
                                         f'labels."{PIN_LABEL}"==pinned').decode()
    client = CtrContainerd(str(node.ctr.address))
    found = {i.ref: i.state for i in verify_mod.verify_node(node.lock, client)}
    assert found[small.ref] == verify_mod.NOT_PINNED, found


def test_a_failed_run_keeps_its_partial_download_and_the_next_run_resumes_it(
        node: Node, tmp_path: Path) -> None:
    """A store that resets mid-body fails the run (one try allowed); what arrived is kept beside
    the retry state under the object's sha256, and the next run asks only for the rest."""
    node.render(retry_max_delay=1)
    big = next(i for i in node.lock.images if i.name == "big")
    node.server.faults[big.key] = ["reset"]
    state = tmp_path / "run-kiln" / "failed-runs"
    first = node.run("--retry-state", str(state), env={"KILN_RETRIES": "1"})
    assert first.returncode == 1, first.stderr
    assert "big: FAILED: download failed after 1 tries" in first.stderr
    kept = state.parent / "failed-runs.partial" / big.sha256
    have = kept.stat().st_size
    assert 0 < have < big.size
    assert big.ref not in node.ctr.images()  # a partial is never imported

    second = node.run("--retry-state", str(state))
    assert second.returncode == 0, second.stderr
    assert node.server.ranges[big.key][-1] == f"bytes={have}-"
    assert node.server.requests.count(big.key) == 2
    assert not kept.parent.exists() and not state.exists()
    assert_imported(node, {"small", "big"})


def test_a_kept_partial_of_wrong_bytes_is_caught_by_the_sha256_and_never_imported(
        node: Node, tmp_path: Path) -> None:
    node.render(retry_max_delay=1)
    big = next(i for i in node.lock.images if i.name == "big")
    state = tmp_path / "run-kiln" / "failed-runs"
    kept = state.parent / "failed-runs.partial" / big.sha256
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"\0" * (big.size // 2))  # not the object's bytes
    (kept.parent / ("f" * 64)).write_bytes(b"\0" * (big.size * 2))  # no image's: ignored
    done = node.run("--retry-state", str(state))
    assert done.returncode == 1
    assert "big: FAILED: sha256 mismatch" in done.stderr
    assert node.server.ranges[big.key] == [f"bytes={big.size // 2}-"]
    assert big.ref not in node.ctr.images()
    assert not kept.exists()  # a file that failed its hash is not kept

    again = node.run("--retry-state", str(state))
    assert again.returncode == 0, again.stderr
    assert node.server.ranges[big.key][-1] is None  # from the first byte
    assert not kept.parent.exists()
    assert_imported(node, {"small", "big"})


def until_mid_download(node: Node, key: str) -> None:
    """Return once the object at ``key`` is being served and its first MiB written (its
    answer stalls after that: ``stall:1048576``)."""
    deadline = time.monotonic() + 60
    while not node.server.ranges.get(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)


def test_a_pin_made_during_the_download_is_adopted(node: Node, tmp_path: Path) -> None:
    """An operator side-loads and pins an image's ref while kiln downloads it (a new node: the
    first look found none of its names): kiln marks it pinned-before, so when a later lock
    leaves the image out, the operator's pin stays. (Found by a review: a skip decided at
    the first look dropped it.)"""
    node.render(retry_max_delay=1)
    big = next(i for i in node.lock.images if i.name == "big")
    node.server.faults[big.key] = ["stall:1048576"]
    log = tmp_path / "run.log"
    with log.open("w") as err, subprocess.Popen(node.argv(), env=node.environ(),
                                                stderr=err) as run:
        until_mid_download(node, big.key)
        node.ctr.run("images", "import", "--platform", big.platform,
                     str(node.folder / "store" / big.key))
        node.ctr.run("images", "label", big.ref, f"{PIN_LABEL}=pinned")
        node.server.release.set()
        assert run.wait(timeout=120) == 0, log.read_text()
    labels = node.ctr.images()[big.ref].labels
    assert labels.get(ADOPTED_LABEL) == "true" and labels[OWNER_LABEL] == "it"

    data = node.folder / "dist/it/node/images.data"  # a later lock without big
    data.write_text("".join(line for line in data.read_text().splitlines(keepends=True)
                            if not line.startswith("image big ")))
    again = node.run()
    assert again.returncode == 0, again.stderr
    assert f"{big.ref}: no longer in the lock; it was pinned before kiln: pin kept" \
        in again.stderr
    labels = node.ctr.images()[big.ref].labels
    assert labels.get(PIN_LABEL) == "pinned" and OWNER_LABEL not in labels


def test_a_hasher_that_fails_is_not_called_a_sha256_mismatch(node: Node,
                                                             tmp_path: Path) -> None:
    """openssl fails on a downloaded file (a read error, no space): the log says the hash
    could not be taken, not that the store sent wrong bytes, nothing is imported, and the
    whole download is kept for the next run, which imports it without fetching it again."""
    bin_dir = node.folder / "failing-openssl"
    bin_dir.mkdir()
    (bin_dir / "openssl").write_text(
        "#!/bin/sh\n"
        'case "$*" in *.blob) echo "openssl: read error (simulated)" >&2; exit 1 ;; esac\n'
        f'exec {shutil.which("openssl")} "$@"\n')
    (bin_dir / "openssl").chmod(0o755)
    node.render(retry_max_delay=1)
    state = tmp_path / "retry-state"
    done = node.run("--retry-state", str(state),
                    env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 1
    assert "small: FAILED: could not hash the download (openssl: read error (simulated)); " \
           "nothing imported" in done.stderr
    assert "mismatch" not in done.stderr
    assert node.ctr.images() == {}
    asked = {i.key: len(node.server.ranges.get(i.key, [])) for i in node.lock.images}
    again = node.run("--retry-state", str(state))
    assert again.returncode == 0, again.stderr
    assert_imported(node, {"small", "big"})
    for image in node.lock.images:  # each asked from its last byte on: nothing sent again
        assert node.server.ranges[image.key][asked[image.key]:] == [f"bytes={image.size}-"]


def test_a_run_stopped_mid_download_keeps_its_partial_for_the_next(
        node: Node, tmp_path: Path) -> None:
    """systemd stops a run (SIGTERM: TimeoutStartSec, a shutdown) while a download stalls: the
    bytes that arrived are kept, and the next run resumes after them."""
    import signal

    node.render(retry_max_delay=1)
    big = next(i for i in node.lock.images if i.name == "big")
    node.server.faults[big.key] = ["stall:1048576"]  # headers and 1 MiB, then nothing
    state = tmp_path / "run-kiln" / "failed-runs"
    log = tmp_path / "stopped.log"
    with log.open("w") as err, subprocess.Popen(node.argv("--retry-state", str(state)),
                                                env=node.environ(), stderr=err) as run:
        until_mid_download(node, big.key)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 143, log.read_text()
    kept = state.parent / "failed-runs.partial" / big.sha256
    have = kept.stat().st_size
    assert 1024 * 1024 - 65536 <= have <= 1024 * 1024  # (curl may hold its last buffer)
    node.server.release.set()  # the stalled answer ends
    time.sleep(1)
    assert kept.stat().st_size == have  # the stopped run's curl writes no more into it

    again = node.run("--retry-state", str(state))
    assert again.returncode == 0, again.stderr
    assert node.server.ranges[big.key][-1] == f"bytes={have}-"
    assert not kept.parent.exists()
    assert_imported(node, {"small", "big"})


def test_a_run_killed_outright_leaves_a_folder_the_next_run_removes(
        node: Node, tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a node powered off mid-download) runs no trap: the work folder
    and its partial download stay. The next import removes the folders whose run is gone and
    leaves every other one: a live run's, one without an owner line, a link."""
    import signal

    tmp = tmp_path / "node-tmp"
    tmp.mkdir()
    env = node.environ({"TMPDIR": str(tmp)})
    big = next(i for i in node.lock.images if i.name == "big")
    node.server.faults[big.key] = ["stall:1048576"]
    with subprocess.Popen(node.argv(), env=env, stderr=subprocess.DEVNULL,
                          start_new_session=True) as run:
        until_mid_download(node, big.key)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    node.server.release.set()
    (killed,) = list(tmp.glob("kiln-import.*"))
    assert any(killed.glob("*.blob.part"))  # the bytes a killed run had, on the node's disk
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    pid_ns = os.readlink("/proc/self/ns/pid")
    assert (killed / "owner").read_text().split()[1:] == [boot_id, pid_ns]

    def folder(name: str, owner: str | None) -> Path:
        path = tmp / name
        path.mkdir(mode=0o700)
        (path / "blob").write_bytes(b"x" * 1000)
        if owner is not None:
            (path / "owner").write_text(owner)
        return path

    live = folder("kiln-import.live", f"{os.getpid()} {boot_id} {pid_ns}\n")  # this test
    earlier_boot = folder("kiln-import.reboot", f"{os.getpid()} another-boot {pid_ns}\n")
    # a run in a container sharing the folder: its PID means nothing here, so it is left
    other_ns = folder("kiln-import.container", f"999999999 {boot_id} pid:[1]\n")
    no_owner = folder("kiln-import.older", None)  # an earlier kiln's: cannot tell
    junk = folder("kiln-data.junk", "$(reboot) x\n")  # not a PID
    outside = folder("elsewhere", "1 another-boot\n")
    (tmp / "kiln-import.link").symlink_to(outside)

    done = node.run(env={"TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stderr
    assert not killed.exists() and not earlier_boot.exists()
    assert f"removed {killed}, left by a run that was killed" in done.stderr
    assert live.exists() and no_owner.exists() and junk.exists() and other_ns.exists()
    assert (tmp / "kiln-import.link").is_symlink() and (outside / "blob").exists()
    assert_imported(node, {"small", "big"})
    left = ["kiln-import.live", "kiln-import.older", "kiln-data.junk", "kiln-import.container",
            "elsewhere", "kiln-import.link"]
    assert sorted(p.name for p in tmp.iterdir()) == sorted(left)  # this run's own is gone

    # a run with nothing to import, and --check, clean up too (a killed run's last folder)
    for extra in ([], ["--check"]):
        dead = folder("kiln-import.dead", f"1 another-boot {pid_ns}\n")
        again = node.run(*extra, env={"TMPDIR": str(tmp)})
        assert again.returncode == 0, again.stderr
        assert not dead.exists()
        assert sorted(p.name for p in tmp.iterdir()) == sorted(left)


def test_a_stale_folder_that_will_not_go_keeps_its_owner_for_the_next_run(
        node: Node, tmp_path: Path) -> None:
    """A removal cut short (here a mount inside the folder: rm fails on it, as it would on a
    Ctrl-C) leaves the owner line, so the next run tries again; the run itself goes on."""
    tmp = tmp_path / "node-tmp"
    stale = tmp / "kiln-import.stale"
    (stale / "mnt").mkdir(parents=True)
    (stale / "0.blob.part").write_bytes(b"x" * 4096)
    (stale / "owner").write_text(f"1 another-boot {os.readlink('/proc/self/ns/pid')}\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(stale / "mnt")],
                   check=True)
    try:
        done = node.run(env={"TMPDIR": str(tmp)})
        assert done.returncode == 0, done.stderr
        assert f"could not remove all of {stale}" in done.stderr
        assert sorted(p.name for p in stale.iterdir()) == ["mnt", "owner"]
    finally:
        subprocess.run(["umount", str(stale / "mnt")], check=True)
    again = node.run(env={"TMPDIR": str(tmp)})
    assert again.returncode == 0, again.stderr
    assert f"removed {stale}, left by a run that was killed" in again.stderr
    assert list(tmp.iterdir()) == []
