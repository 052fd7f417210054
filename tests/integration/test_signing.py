"""A signed lock: bake signs it with the team's key; push, verify, render and golden trust
it only while its signature verifies with lock_public_key (openssl, as anyone can check)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln import signing
from kiln.cli import main
from kiln.localengine import Daemon
from kiln.render import PlainLocator, render
from tests.integration.conftest import REG, scratch_context
from tests.integration.nodes import make_node

IMAGES = """version: 1
images:
  - {{name: app, ref: {reg}/foundation/app:v1, build: app}}
environments:
  it:
    registry: {reg}
    store: {{type: dir, path: store, url: 'http://127.0.0.1:1/'}}
    lock_public_key: {key}
"""


def keypair(folder: Path, name: str, passphrase: str | None = None) -> tuple[Path, Path]:
    key, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    argv = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(key)]
    if passphrase:
        argv += ["-aes-256-cbc", "-pass", f"pass:{passphrase}"]
    subprocess.run(argv, check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub),
                    *(["-passin", f"pass:{passphrase}"] if passphrase else [])],
                   check=True, capture_output=True)
    return key, pub


def kiln(folder: Path, *args: str) -> int:
    return main([args[0], "--env", "it", "--config", str(folder / "images.yaml"), *args[1:]])


def test_a_signed_lock_is_trusted_and_a_changed_one_is_not(
        tmp_path: Path, dockerd: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    scratch_context(tmp_path / "app", "app v1")
    key, pub = keypair(tmp_path, "team", passphrase="s3cret pass")
    other, _ = keypair(tmp_path, "other")
    (tmp_path / "images.yaml").write_text(IMAGES.format(reg=REG, key="team.pub"))
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)

    # no signing key: refused before any work
    monkeypatch.delenv("KILN_SIGNING_KEY", raising=False)
    assert kiln(tmp_path, "bake", "--quiet") == 2
    assert "KILN_SIGNING_KEY" in capsys.readouterr().err
    assert not (tmp_path / "dist/it/images.lock.json").exists()

    # the wrong key: the lock is left unsigned, exit 1
    monkeypatch.setenv("KILN_SIGNING_KEY", str(other))
    assert kiln(tmp_path, "bake", "--quiet") == 1
    assert "not the pair of lock_public_key" in capsys.readouterr().err
    assert not (tmp_path / "dist/it/images.lock.json.sig").exists()
    assert kiln(tmp_path, "render") == 1  # an unsigned lock is not trusted
    assert "is not signed" in capsys.readouterr().err

    passfile = tmp_path / "passphrase"
    passfile.write_text("s3cret pass\n")
    monkeypatch.setenv("KILN_SIGNING_KEY", str(key))
    monkeypatch.setenv("KILN_SIGNING_PASSPHRASE_FILE", str(passfile))
    assert kiln(tmp_path, "bake", "--quiet") == 0
    lock = tmp_path / "dist/it/images.lock.json"
    sig = tmp_path / "dist/it/images.lock.json.sig"
    checked = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                              str(sig), str(lock)], capture_output=True, text=True)
    assert checked.stdout.strip() == "Verified OK"
    assert (tmp_path / "store/locks/it/images.lock.json.sig").read_bytes() == sig.read_bytes()
    before = sig.read_bytes()
    assert kiln(tmp_path, "bake", "--quiet") == 0
    assert sig.read_bytes() == before  # nothing changed: the same signature file
    assert kiln(tmp_path, "render") == 0
    for path in (tmp_path / "dist").rglob("*"):  # no key material goes anywhere
        data = path.read_bytes() if path.is_file() else b""
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert b"s3cret" not in data and b"PRIVATE KEY" not in data, path

    # one changed digit: refused by every command that trusts the lock, before any work
    original = lock.read_text()
    lock.write_text(original.replace('"size": ', '"size": 1', 1))
    capsys.readouterr()
    for args in (["render"], ["push"], ["verify", "--containerd-address",
                                        str(tmp_path / "no.sock")]):
        assert kiln(tmp_path, *args) == 1, args
        err = capsys.readouterr().err
        assert "signature does not verify" in err, (args, err)


def test_a_node_holding_the_key_imports_only_signed_data(
        tmp_path: Path, dockerd: Daemon, fresh_containerd: Daemon,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`render` with KILN_SIGNING_KEY signs each data file (a `sig` line); a node whose image
    holds the public key checks it with openssl before it trusts any sha256 in the file."""
    scratch_context(tmp_path / "app", "app signed")
    key, pub = keypair(tmp_path, "team")
    (tmp_path / "images.yaml").write_text(IMAGES.format(reg=REG, key="team.pub"))
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    monkeypatch.setenv("KILN_SIGNING_KEY", str(key))
    monkeypatch.delenv("KILN_SIGNING_PASSPHRASE_FILE", raising=False)
    assert kiln(tmp_path, "bake", "--quiet") == 0, capsys.readouterr().err
    (tmp_path / "node").mkdir()
    shutil.copy(pub, tmp_path / "node/team.pub")
    nodes = make_node(tmp_path, tmp_path / "node", fresh_containerd)
    node = next(nodes)
    try:
        lock = node.lock
        env = node.env
        assert env is not None
        render(env, lock, node.folder / "dist", PlainLocator(node.server.url),
               sign=lambda data: signing.sign(data, key, None))
        data = node.folder / "dist/it/node/images.data"
        signed = data.read_text()
        assert signed.splitlines()[-1].startswith("sig ")
        holds = {"KILN_DATA_PUBLIC_KEY": str(pub)}

        sha = lock.images[0].sha256  # another object's sha256 slipped in: refused, nothing in
        data.write_text(signed.replace(sha, "0" * 64))
        done = node.run(env=holds)
        assert done.returncode == 1
        assert "its signature does not verify with" in done.stderr
        assert node.ctr.images() == {}
        data.write_text("".join(line + "\n" for line in signed.splitlines()
                                if not line.startswith("sig ")))
        done = node.run(env=holds)
        assert done.returncode == 1 and "is not signed" in done.stderr
        data.write_text(signed + "sig AAAA\n")  # a second signature line: refused too
        assert node.run(env=holds).returncode == 1

        data.write_text(signed)
        done = node.run(env=holds)
        assert done.returncode == 0, done.stderr
        assert "the data file's signature verifies" in done.stderr
        assert lock.images[0].ref in node.ctr.images()
        # a node without the key ignores the line (it never asked for signed data)
        assert node.run("--check").returncode == 0
    finally:
        nodes.close()
