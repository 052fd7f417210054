"""Signatures through `openssl` (an edge: it runs a program): the lock's detached signature,
the ECDSA signatures of cosign's convention (kiln/provenance.py) kiln checks and makes, and
a keyless signature's certificate chain (kiln/keyless.py: `openssl verify -attime`).

``dist/<env>/images.lock.json.sig`` is ``openssl dgst -sha256 -sign KEY`` of the lock's bytes:
an ECDSA (DER) or RSA (PKCS #1 v1.5) signature anyone checks with the public key alone:

    openssl dgst -sha256 -verify lock.pub -signature images.lock.json.sig images.lock.json

An environment with ``lock_public_key`` trusts only a lock whose signature verifies with it:
`push`, `verify`, `render`, `golden` and `try` check it before reading any digest from the
lock. The private key never comes from images.yaml: ``KILN_SIGNING_KEY`` names its PEM
file, ``KILN_SIGNING_PASSPHRASE_FILE`` a file holding its passphrase (when encrypted).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kiln import der
from kiln import lock as lockfile
from kiln.errors import KilnError, UsageError
from kiln.files import write_atomic
from kiln.lock import Lock

KEY_VARIABLE = "KILN_SIGNING_KEY"
PASSPHRASE_VARIABLE = "KILN_SIGNING_PASSPHRASE_FILE"


class SignatureError(KilnError):
    """The lock is not signed, or its signature does not verify with the configured key."""


def sig_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".sig")


def signing_key() -> tuple[Path, Path | None] | None:
    """The private key (and passphrase file) the environment names, or None."""
    key = os.environ.get(KEY_VARIABLE)
    if not key:
        return None
    passphrase = os.environ.get(PASSPHRASE_VARIABLE) or None
    for path, what in ((key, KEY_VARIABLE), (passphrase, PASSPHRASE_VARIABLE)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{what}={path}: no such file")
    return Path(key), Path(passphrase) if passphrase else None


def _openssl(argv: list[str], data: bytes, what: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["openssl", *argv], input=data, capture_output=True, check=False,
                              timeout=60)
    except FileNotFoundError:
        raise KilnError(f"{what}: openssl is not installed (apt-get install openssl)") from None


def sign(data: bytes, key: Path, passphrase: Path | None) -> bytes:
    """The signature of ``data`` with the PEM private key ``key``."""
    argv = ["dgst", "-sha256", "-sign", str(key)]
    if passphrase is not None:
        argv += ["-passin", f"file:{passphrase}"]
    done = _openssl(argv, data, "signing the lock")
    if done.returncode != 0 or not done.stdout:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[0] if lines else f"exit {done.returncode}"
        raise SignatureError(f"cannot sign with {key} ({KEY_VARIABLE}): {reason} "
                             "(an ECDSA or RSA private key in PEM; a passphrase in "
                             f"{PASSPHRASE_VARIABLE} if it is encrypted)")
    return done.stdout


def verifies(data: bytes, signature: bytes, public_key: Path) -> bool:
    """Does ``signature`` (DER) of sha256(``data``) verify with the PEM ``public_key``?"""
    with tempfile.NamedTemporaryFile(prefix="kiln-lock-sig-") as sig:
        sig.write(signature)
        sig.flush()
        done = _openssl(["dgst", "-sha256", "-verify", str(public_key), "-signature", sig.name],
                        data, "checking the lock's signature")
    return done.returncode == 0 and done.stdout.strip() == b"Verified OK"


def verifies_spki(data: bytes, signature: bytes, public_key: bytes) -> bool:
    """``verifies`` with the key as DER SubjectPublicKeyInfo (a certificate's key)."""
    with tempfile.NamedTemporaryFile(prefix="kiln-key-", suffix=".pem") as key:
        key.write(der.pem(public_key, "PUBLIC KEY").encode())
        key.flush()
        return verifies(data, signature, Path(key.name))


_VERIFY_ERROR = re.compile(rb"error [0-9]+ at [0-9]+ depth lookup: ([^\n]+)")


def chains(leaf: bytes, intermediates: Sequence[bytes], root: bytes, at: int) -> str | None:
    """Why the DER ``leaf`` does not chain to the DER ``root`` (the only anchor: no system
    store) through ``intermediates``, every certificate valid at ``at``; None: it does."""
    with tempfile.TemporaryDirectory(prefix="kiln-chain-") as work:
        files = {"leaf": [leaf], "root": [root], "untrusted": list(intermediates)}
        for name, certs in files.items():
            (Path(work) / f"{name}.pem").write_text("".join(der.pem(c) for c in certs))
        argv = ["verify", "-no-CApath", "-no-CAstore", "-attime", str(at),
                "-CAfile", f"{work}/root.pem"]
        if intermediates:
            argv += ["-untrusted", f"{work}/untrusted.pem"]
        done = _openssl([*argv, f"{work}/leaf.pem"], b"", "checking a certificate chain")
    if done.returncode == 0:
        return None
    found = _VERIFY_ERROR.search(done.stdout + done.stderr)
    lines = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
    return (found.group(1).decode(errors="replace") if found else
            lines[-1] if lines else f"exit {done.returncode}")


class Openssl:
    """The signature checks of kiln/ports.py's SignatureChecks, done by openssl."""

    def verifies(self, data: bytes, signature: bytes, public_key: Path) -> bool:
        return verifies(data, signature, public_key)

    def verifies_spki(self, data: bytes, signature: bytes, public_key: bytes) -> bool:
        return verifies_spki(data, signature, public_key)

    def chains(self, leaf: bytes, intermediates: Sequence[bytes], root: bytes, at: int
               ) -> str | None:
        return chains(leaf, intermediates, root, at)


def sign_file(lock_path: Path, public_key: Path | None) -> Path | None:
    """Sign the lock at ``lock_path`` when a signing key is given; an existing signature of the
    same bytes that verifies is kept (a rebake that changed nothing changes no file). With
    ``public_key``, the new signature must verify with it (the key pair matches)."""
    found = signing_key()
    if found is None:
        return None
    data = lock_path.read_bytes()
    target = sig_path(lock_path)
    if public_key is not None and target.is_file() and verifies(data, target.read_bytes(),
                                                                 public_key):
        return target
    signature = sign(data, *found)
    if public_key is not None and not verifies(data, signature, public_key):
        target.unlink(missing_ok=True)
        raise SignatureError(f"the key in {KEY_VARIABLE} is not the pair of lock_public_key "
                             f"{public_key}: the lock is left unsigned")
    write_atomic(target, signature)
    return target


def trusted(lock_path: Path, public_key: Path) -> Lock | None:
    """The lock at ``lock_path`` if its signature verifies with ``public_key`` (None: no lock).
    The bytes checked are the bytes read: nothing can change the file in between."""
    try:
        data = lock_path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KilnError(f"{lock_path}: {exc.strerror or exc}") from None
    target = sig_path(lock_path)
    if not target.is_file():
        raise SignatureError(f"{lock_path} is not signed ({target} is missing), and this "
                             f"environment trusts only a lock signed for lock_public_key "
                             f"{public_key}: bake with {KEY_VARIABLE} set")
    if not verifies(data, target.read_bytes(), public_key):
        raise SignatureError(f"{lock_path}: its signature does not verify with lock_public_key "
                             f"{public_key}: the lock was changed after it was signed, or "
                             "signed by another key; nothing was trusted")
    return lockfile.from_json(data.decode("utf-8", errors="replace"), str(lock_path))
