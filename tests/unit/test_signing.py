"""lock_public_key in images.yaml, and the signature itself (real openssl, no engine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln import config as config_mod
from kiln import signing
from kiln.errors import ConfigError
from tests.helpers import write_tree

IMAGES = """
    version: 1
    images:
      - {{name: a, ref: r.example.com/f/a:v1, build: ctx}}
    environments:
      dev:
        registry: r.example.com
        store: {{type: dir, path: store}}
        lock_public_key: {key}
    """


def pair(folder: Path) -> tuple[Path, Path]:
    key, pub = folder / "k.pem", folder / "k.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(key)], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                   capture_output=True)
    return key, pub


@pytest.mark.parametrize(("name", "message"), [
    ("k.pem", "holds a private key"), ("other.txt", "not a PEM public key"),
    ("nope.pub", "cannot read")])
def test_lock_public_key_is_a_public_key(tmp_path: Path, name: str, message: str) -> None:
    pair(tmp_path)
    (tmp_path / "other.txt").write_text("hello\n")
    write_tree(tmp_path, {"images.yaml": IMAGES.format(key=name)})
    with pytest.raises(ConfigError) as caught:
        config_mod.load(tmp_path / "images.yaml", "images.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (8, 22) and message in problem.message


def test_sign_and_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, pub = pair(tmp_path)
    lock = tmp_path / "images.lock.json"
    lock.write_text('{"version": 4, "environment": "dev", "registry": "r.example.com", '
                    '"store": {}, "images": []}\n')
    monkeypatch.delenv(signing.PASSPHRASE_VARIABLE, raising=False)
    monkeypatch.setenv(signing.KEY_VARIABLE, str(key))
    assert signing.sign_file(lock, pub) == signing.sig_path(lock)
    assert signing.trusted(lock, pub) is not None
    lock.write_text(lock.read_text().replace("dev", "dew"))
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.trusted(lock, pub)
    signing.sig_path(lock).write_bytes(b"\x00" * 72)  # garbage, not a DER signature
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.trusted(lock, pub)
    monkeypatch.setenv(signing.KEY_VARIABLE, str(tmp_path / "missing.pem"))
    with pytest.raises(signing.UsageError, match="no such file"):
        signing.sign_file(lock, pub)


def test_verify_applies_to_pull_sources_only(tmp_path: Path) -> None:
    pair(tmp_path)
    write_tree(tmp_path, {"images.yaml": """
        version: 1
        images:
          - {name: a, ref: r.example.com/f/a:v1, build: ctx, verify: {key: k.pub}}
          - {name: b, ref: r.example.com/f/b:v1, pull: up.example.com/b:1, verify: {key: k.pem}}
          - {name: c, ref: r.example.com/f/c:v1, pull: up.example.com/c:1, verify: maybe}
        environments:
          dev: {registry: r.example.com, store: {type: dir, path: store}}
        """})
    with pytest.raises(ConfigError) as caught:
        config_mod.load(tmp_path / "images.yaml", "images.yaml")
    found = [(p.line, p.message.split(":")[0]) for p in caught.value.problems]
    assert found == [(3, "verify checks a pull source's upstream signature"),
                     (4, "verify key"),
                     (5, "verify (a mapping with key, or with identity, issuer, roots and "
                         "rekor_key; or none) must be a mapping")]
