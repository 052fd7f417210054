"""`try` with a fake qemu: the console protocol, the verdict, timeouts and early exits."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kiln import config as config_mod
from kiln.lock import Lock, LockedImage
from kiln.vm import BEGIN, END, Trial, TryError, guest_url, store_for_guest
from tests.helpers import write_tree

IMAGE = LockedImage("dex", "r.example.com/f/dex:v1", "sha256:" + "1" * 64, "linux/amd64",
                    "2" * 64, 10, 20, "zstd", 1, "blobs/sha256/" + "2" * 64, (), "build",
                    manifest_digests=(("linux/amd64", "sha256:" + "3" * 64),))
LOCK = Lock("dev", "r.example.com", images=(IMAGE,))


def fake_tools(folder: Path, console: str, exit_after: bool) -> None:
    """qemu-system-x86_64 writes ``console`` to its -serial file; qemu-img and cloud-localds."""
    scripts = {
        "qemu-img": '#!/bin/sh\n[ "$1" = info ] && echo \'{"format": "raw"}\'\nexit 0\n',
        "cloud-localds": '#!/bin/sh\n: > "$1"\n',
        "qemu-system-x86_64": (
            "#!/bin/sh\nfor a in \"$@\"; do case $a in file:*console.log) f=${a#file:};; esac;"
            f" done\n/bin/cat >> \"$f\" <<'EOF'\n{console}\nEOF\n"
            + ("exit 1\n" if exit_after else "/bin/sleep 30\n")),
    }
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Trial:
    write_tree(tmp_path, {"images.yaml": """
        version: 1
        images: [{name: dex, ref: "r.example.com/f/dex:v1", build: x}]
        environments:
          dev: {registry: r.example.com, store: {type: dir, path: store, url: "http://x/"}}
        """, "base.raw": "disk", "store/.keep": ""})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # only the fakes: never the real qemu
    env = config_mod.load(tmp_path / "images.yaml").environment("dev")
    return Trial(env, LOCK, tmp_path / "base.raw", timeout=3, log=lambda _: None)


def report(state: str, image_id: str, digest_ref: str | None = IMAGE.digest_ref) -> str:
    check = {"ok": state == "present", "images": [
        {"name": "dex", "ref": IMAGE.ref, "digest_ref": digest_ref, "image_id": image_id,
         "state": state}]}
    return (f"boot noise\n{BEGIN}\nstatus: {json.dumps(check)}\ncheck: {json.dumps(check)}\n"
            f"unit: Before=kubelet.service\n{END}\n")


def test_a_good_report_is_ok(trial: Trial, tmp_path: Path) -> None:
    fake_tools(tmp_path / "bin", report("present", IMAGE.image_id), exit_after=True)
    result = trial.run()
    assert result.ok
    assert result.field("unit: ") == ["Before=kubelet.service"]


def test_a_wrong_image_id_or_state_is_not(trial: Trial, tmp_path: Path) -> None:
    fake_tools(tmp_path / "bin", report("present", "sha256:" + "9" * 64), exit_after=True)
    assert not trial.run().ok
    fake_tools(tmp_path / "bin", report("unpinned", IMAGE.image_id), exit_after=True)
    assert not trial.run().ok
    # a node rendered from another lock: the same image ID under another manifest digest
    other = f"r.example.com/f/dex@sha256:{'8' * 64}"
    fake_tools(tmp_path / "bin", report("present", IMAGE.image_id, other), exit_after=True)
    assert not trial.run().ok


def test_a_vm_that_stops_early_shows_the_console(trial: Trial, tmp_path: Path) -> None:
    fake_tools(tmp_path / "bin", "Kernel panic - not syncing: VFS", exit_after=True)
    with pytest.raises(TryError, match=r"(?s)stopped before the importer reported.*Kernel panic"):
        trial.run()


def test_a_timeout_shows_the_last_console_lines(trial: Trial, tmp_path: Path) -> None:
    fake_tools(tmp_path / "bin", "cloud-init: waiting for the network", exit_after=False)
    with pytest.raises(TryError, match=r"(?s)no importer result after 3s.*waiting for the network"):
        trial.run()


def test_missing_tools_and_images_are_named(trial: Trial, tmp_path: Path) -> None:
    with pytest.raises(TryError, match="qemu-system-x86_64 is not installed"):
        trial.run()
    fake_tools(tmp_path / "bin", "", exit_after=True)
    trial.base_image = tmp_path / "nope.raw"
    with pytest.raises(TryError, match="does not exist"):
        trial.run()


def test_guest_url() -> None:
    assert guest_url("http://127.0.0.1:8080/") == "http://10.0.2.2:8080/"
    assert guest_url("https://localhost/x") == "https://10.0.2.2/x"
    assert guest_url("https://minio.internal/") == "https://minio.internal/"


def test_the_try_command_prints_the_verdict_and_the_ordering(
        trial: Trial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from kiln import lock as lockfile
    from kiln.cli import main

    lockfile.write(tmp_path / "dist/dev/images.lock.json", LOCK)
    console = report("present", IMAGE.image_id).replace(
        "unit: Before=kubelet.service\n",
        "unit: Before=kubelet.service multi-user.target\n"
        "unit: ExecMainStartTimestampMonotonic=112303945\n"
        "unit: ExecMainExitTimestampMonotonic=133345978\n"
        "kubelet: After=kiln-import.service containerd.service\n"
        "kubelet: ExecMainStartTimestampMonotonic=133572053\n")
    fake_tools(tmp_path / "bin", console, exit_after=True)
    monkeypatch.chdir(tmp_path)
    assert main(["try", "--env", "dev", "--base-image", "base.raw"]) == 0
    out = capsys.readouterr().out
    assert f"ok  {IMAGE.ref} present {IMAGE.image_id}" in out
    assert "kubelet.service: After=kiln-import.service containerd.service" in out
    assert "the import ran 21.0s, from 112.3s after boot; kubelet started +0.2s after" in out
    assert "every image present and pinned" in out


def test_try_reports_after_the_first_import_run_and_keeps_the_hold_gate(trial: Trial) -> None:
    """hold-kubelet makes cloud-init wait until the import succeeds; `try` must report a
    failing import instead of waiting for ever, while the units stay as the environment has
    them."""
    import yaml

    data = yaml.safe_load(trial.user_data("http://10.0.2.2:9/"))
    assert data["runcmd"][0] == ["systemctl", "start", "kiln-import.service"]
    assert data["runcmd"][-2][:2] == ["sh", "-c"]  # the report, then poweroff
    # (the drop-in reaches the shell through shlex quoting: its own quotes are escaped)
    assert "ExecStartPre=/bin/sh -c '\"'\"'systemctl is-active" in data["bootcmd"][0]


def test_the_store_for_a_guest_is_served_or_its_url_rewritten(tmp_path: Path) -> None:
    """One helper for `try` and `golden`: a dir store is served for the block only."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs/x").write_bytes(b"object")
    with store_for_guest(config_mod.DirStore(tmp_path)) as url:
        assert url is not None and url.startswith("http://10.0.2.2:")
        local = url.replace("10.0.2.2", "127.0.0.1")
        with urllib.request.urlopen(local + "blobs/x", timeout=5) as response:
            assert response.read() == b"object"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(local + "blobs/x", timeout=5)
    s3 = config_mod.S3Store(bucket="b", url="http://localhost:9000/b/")
    with store_for_guest(s3) as url:
        assert url == "http://10.0.2.2:9000/b/"
    with store_for_guest(config_mod.S3Store(bucket="b")) as url:
        assert url is None


PXE_QEMU = r'''#!{python}
"""A fake qemu for the PXE path: takes the seed URL from -append (or the SMBIOS serial), fetches
the seed as cloud-init would, and reports the host name and the images its data file lists."""
import json, re, sys, urllib.request, yaml
args = sys.argv[1:]
console = next(a[5:] for a in args if a.startswith("file:"))
line = args[args.index("-append") + 1] if "-append" in args else args[args.index("-smbios") + 1]
url = re.search(r"ds=nocloud-net;s=(\S+)", line).group(1).replace("10.0.2.2", "127.0.0.1")
meta = yaml.safe_load(urllib.request.urlopen(url + "meta-data").read())
user = yaml.safe_load(urllib.request.urlopen(url + "user-data").read())
data = next(f["content"] for f in user["write_files"] if f["path"].endswith("images.data"))
lines = [l.split() for l in data.splitlines() if l.startswith("image ")]
refs = [l[2] for l in lines]
check = {{"ok": True, "images": [{{"ref": l[2], "digest_ref": l[3], "image_id": l[4],
                                  "state": "present"}} for l in lines]}}
with open(console, "a") as out:
    out.write("KILN-TRY-BEGIN\nhostname: %s\n" % meta["local-hostname"])
    out.write("check: %s\nctr: REF TYPE\n" % json.dumps(check))
    out.write("".join("ctr: %s application/vnd.oci.image.index.v1+json\n" % r for r in refs))
    out.write("KILN-TRY-END\n")
'''


@pytest.mark.parametrize("kernel", [True, False])
def test_the_pxe_path_boots_the_nodes_own_seed_over_http(
        trial: Trial, tmp_path: Path, kernel: bool) -> None:
    import sys
    from dataclasses import replace

    from kiln.inventory import Node

    fake_tools(tmp_path / "bin", "", exit_after=True)
    qemu = tmp_path / "bin/qemu-system-x86_64"
    qemu.write_text(PXE_QEMU.format(python=sys.executable))
    other = replace(IMAGE, name="reg", ref="r.example.com/f/reg:v1", roles=("control-plane",))
    lock = Lock("dev", "r.example.com", images=(IMAGE, other))
    (tmp_path / "vmlinuz").write_text("kernel")
    pxe = replace(trial, lock=lock, node=Node("w-1", ("worker",)),
                  kernel=tmp_path / "vmlinuz" if kernel else None)
    result = pxe.run()
    assert result.field("hostname: ") == ["w-1"]
    assert result.ok  # exactly the worker's image (dex: every role), not the registry's
    control = replace(pxe, node=Node("cp-1", ("control-plane",)))
    assert control.run().ok
    assert replace(pxe, node=Node("w-2", ("worker",))).run().field("hostname: ") == ["w-2"]
    # a guest holding another role's image, or named otherwise, fails the verdict
    lines = result.lines
    assert not pxe.verdict([*lines, f"ctr: {other.ref} x"], 1.0).ok
    assert not pxe.verdict([line.replace("hostname: w-1", "hostname: kiln-base")
                            for line in lines], 1.0).ok


def test_try_node_needs_its_inventory(trial: Trial, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from kiln import lock as lockfile
    from kiln.cli import main

    lockfile.write(tmp_path / "dist/dev/images.lock.json", LOCK)
    (tmp_path / "nodes.yaml").write_text("nodes:\n  - {hostname: w-1, roles: [worker]}\n")
    monkeypatch.chdir(tmp_path)
    base = ["try", "--env", "dev", "--base-image", "base.raw"]
    assert main([*base, "--node", "w-1"]) == 2
    assert "--inventory and --node go together" in capsys.readouterr().err
    assert main([*base, "--inventory", "nodes.yaml", "--node", "w-9"]) == 2
    assert "--node w-9: not in nodes.yaml (nodes: w-1)" in capsys.readouterr().err
    assert main([*base, "--inventory", "nodes.yaml", "--node", "w-1", "--role", "x"]) == 2
