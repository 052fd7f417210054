"""Keyless upstream signatures checked at bake (issue 15), with real parts: openssl acting as
Fulcio (a root, an intermediate, ten-minute leaves naming an identity in their SAN and an
OIDC issuer in Fulcio's extensions), a Rekor key signing each entry's SET, the signature
artifact pushed to a TLS docker-registry the way cosign pushes a keyless one, and a bake with
no Docker engine and no network beyond that registry."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.cli import main
from tests.helpers import registry_image
from tests.integration.conftest import skopeo_home, tls_registry_at
from tests.integration.test_provenance import (
    PASSWORD,
    USER,
    digest_of,
    keypair,
    put,
    put_artifact,
)

Registry = tuple[str, Path]
WORKFLOW = "https://github.com/org/app/.github/workflows/release.yml@refs/tags/v1"
ACTIONS = "https://token.actions.githubusercontent.com"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
CA_CONFIG = """[ca]
default_ca = test
[test]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
[any]
organizationName = optional
commonName = optional
"""


def openssl(folder: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], cwd=folder, input=data, check=True,
                          capture_output=True).stdout


def stamp(seconds: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(seconds))


class Fulcio:
    """A certificate authority shaped like Fulcio's: a self-signed root, an intermediate for
    code signing, and short-lived leaves whose identity is their SAN."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384",
                "-nodes", "-keyout", "root.key", "-out", "root.pem", "-days", "30",
                "-subj", f"/O={name}/CN=root", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl(folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384",
                "-nodes", "-keyout", "inter.key", "-out", "inter.csr",
                "-subj", f"/O={name}/CN=intermediate")
        (folder / "inter.ext").write_text("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                                          "keyUsage=critical,keyCertSign,cRLSign\n"
                                          "extendedKeyUsage=codeSigning\n")
        openssl(folder, "x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey",
                "root.key", "-CAcreateserial", "-out", "inter.pem", "-days", "30",
                "-extfile", "inter.ext")
        (folder / "ca.cnf").write_text(CA_CONFIG)
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text("01\n")
        self.issued = 0

    @property
    def root(self) -> str:
        return (self.folder / "root.pem").read_text()

    @property
    def chain(self) -> str:
        return (self.folder / "inter.pem").read_text() + self.root

    def issue(self, identity: str, issuer: str, not_before: float) -> tuple[Path, str]:
        """A leaf key and its certificate, valid ten minutes from ``not_before``."""
        self.issued += 1
        key, n = self.folder / f"leaf{self.issued}.key", self.issued
        openssl(self.folder, "genpkey", "-algorithm", "EC", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-out", key.name)
        openssl(self.folder, "req", "-new", "-key", key.name, "-out", f"leaf{n}.csr",
                "-subj", "/O=kiln test")
        san = f"email:{identity}" if "@" in identity and "/" not in identity else \
            f"URI:{identity}"
        (self.folder / f"leaf{n}.ext").write_text(
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n"
            f"subjectAltName=critical,{san}\n"
            f"1.3.6.1.4.1.57264.1.1=DER:{issuer.encode().hex()}\n"  # raw, as Fulcio writes
            f"1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{issuer}\n")
        openssl(self.folder, "ca", "-batch", "-config", "ca.cnf", "-cert", "inter.pem",
                "-keyfile", "inter.key", "-in", f"leaf{n}.csr", "-out", f"leaf{n}.pem",
                "-startdate", stamp(not_before), "-enddate", stamp(not_before + 600),
                "-extfile", f"leaf{n}.ext", "-notext")
        return key, (self.folder / f"leaf{n}.pem").read_text()


@dataclass
class Rekor:
    key: Path
    pub: Path

    @property
    def log_id(self) -> str:
        der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(self.pub), "-outform",
                              "DER"], check=True, capture_output=True).stdout
        return hashlib.sha256(der).hexdigest()

    def bundle(self, payload: bytes, signature: bytes, cert: str, at: int,
               signed_by: Path | None = None) -> str:
        """The Rekor bundle of a hashedrekord entry logged at ``at``: its SET signed by this
        log's key (or ``signed_by``: a forgery)."""
        body = base64.b64encode(json.dumps({
            "apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
                "data": {"hash": {"algorithm": "sha256",
                                  "value": hashlib.sha256(payload).hexdigest()}},
                "signature": {"content": base64.b64encode(signature).decode(),
                              "publicKey": {"content": base64.b64encode(
                                  cert.encode()).decode()}}}}).encode()).decode()
        entry = {"body": body, "integratedTime": at, "logID": self.log_id, "logIndex": 7}
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        set_ = openssl(self.key.parent, "dgst", "-sha256", "-sign",
                       str(signed_by or self.key), data=canonical)
        return json.dumps({"SignedEntryTimestamp": base64.b64encode(set_).decode(),
                           "Payload": entry})


def keyless_sign(registry: Registry, repo: str, digest: str, fulcio: Fulcio, rekor: Rekor,
                 identity: str = WORKFLOW, issuer: str = ACTIONS, names: str | None = None,
                 logged: int | None = None, issued: float | None = None,
                 forged_by: Path | None = None) -> str:
    """What `cosign sign` (keyless) pushes: the payload, its signature by a fresh Fulcio
    leaf, the leaf, its chain and the Rekor bundle, as `sha256-H.sig`."""
    now = int(time.time())
    key, cert = fulcio.issue(identity, issuer, now - 60 if issued is None else issued)
    payload = json.dumps({"critical": {
        "identity": {"docker-reference": f"{registry[0]}/{repo}"},
        "image": {"docker-manifest-digest": names or digest},
        "type": "cosign container image signature"}, "optional": None},
        separators=(",", ":")).encode()
    signature = openssl(key.parent, "dgst", "-sha256", "-sign", str(key), data=payload)
    return put_artifact(registry, repo, digest, payload, {
        "dev.cosignproject.cosign/signature": base64.b64encode(signature).decode(),
        "dev.sigstore.cosign/certificate": cert, "dev.sigstore.cosign/chain": fulcio.chain,
        "dev.sigstore.cosign/bundle": rekor.bundle(
            payload, signature, cert, now if logged is None else logged, forged_by)})


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("upstream"), USER, PASSWORD) as served:
        yield served


def test_bake_accepts_the_trusted_signer_and_refuses_each_other_with_one_line(
        tmp_path: Path, upstream: Registry, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    skopeo_home(tmp_path / "home", *upstream, USER, PASSWORD, monkeypatch)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is needed
    host, team = upstream[0], f"k{uuid.uuid4().hex[:8]}"
    fulcio, stranger = Fulcio(tmp_path / "fulcio", "kiln fulcio"), \
        Fulcio(tmp_path / "other-ca", "kiln fulcio")  # the same names, another key
    rekor = Rekor(*keypair(tmp_path, "rekor"))
    forger, _ = keypair(tmp_path, "forger")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/fulcio-roots.pem").write_text(fulcio.root)
    (tmp_path / "keys/rekor.pub").write_text(rekor.pub.read_text())
    digests = {}
    for name in ("good", "mail", "identity", "issuer", "root", "expired", "forged", "other"):
        manifest, blobs = registry_image(f"{team} {name}".encode())
        digests[name] = put(upstream, f"{team}/{name}", "v1", manifest, blobs, DOCKER)
    now = time.time()
    sign = {"good": {}, "mail": {"identity": "release@example.com",
                                 "issuer": "https://accounts.google.com"},
            "identity": {"identity": WORKFLOW.replace("/app/", "/fork/")},
            "issuer": {"issuer": "https://gitlab.com"},
            "root": {"fulcio": stranger},
            "expired": {"issued": now - 7200},  # ten minutes, two hours before the log
            "forged": {"forged_by": forger},
            "other": {"names": digests["good"]}}  # a payload for another image's digest
    signatures = {name: keyless_sign(upstream, f"{team}/{name}", digests[name],
                                     how.pop("fulcio", fulcio), rekor, **how)  # type: ignore
                  for name, how in sign.items()}

    def bake(*names: str) -> int:
        images = "".join(f"  - {{name: {n}, ref: '${{registry}}/{team}/{n}:v1', "
                         f"pull: '{host}/{team}/{n}:v1'"
                         + (", verify: {identity: release@example.com, issuer: "
                            "'https://accounts.google.com', roots: keys/fulcio-roots.pem, "
                            "rekor_key: keys/rekor.pub}" if n == "mail" else "") + "}\n"
                         for n in names)
        (tmp_path / "images.yaml").write_text(
            f"version: 1\nimages:\n{images}environments:\n  it:\n"
            "    registry: internal.example.com\n"
            f"    verify: {{identity: '{WORKFLOW}', issuer: '{ACTIONS}',\n"
            "             roots: keys/fulcio-roots.pem, rekor_key: keys/rekor.pub}\n"
            "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n")
        return main(["bake", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                     "--quiet"])

    refused = ("identity", "issuer", "root", "expired", "forged", "other")
    assert bake("good", *refused) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kiln: error: image '")]
    said = {line.split("'")[1]: line for line in lines}
    assert sorted(said) == sorted(refused), err
    assert f"its certificate is for {WORKFLOW.replace('/app/', '/fork/')}, not {WORKFLOW}" \
        in said["identity"]
    assert f"its certificate's OIDC issuer is https://gitlab.com, not {ACTIONS}" \
        in said["issuer"]
    assert "its certificate does not chain to a root in" in said["root"]
    assert "its certificate was valid from" in said["expired"]
    assert "and Rekor logged the signature at" in said["expired"]
    assert "signed entry timestamp does not verify with rekor_key" in said["forged"]
    assert f"a payload for {digests['good']}, not {digests['other']}" in said["other"]
    assert not (tmp_path / "dist/it/images.lock.json").exists()

    assert bake("good", "mail") == 0, capsys.readouterr().err
    entries = {e["name"]: e for e in
               json.loads((tmp_path / "dist/it/images.lock.json").read_text())["images"]}
    root_der = openssl(tmp_path, "x509", "-in", str(fulcio.folder / "root.pem"),
                       "-outform", "DER")
    for name, identity, issuer in (("good", WORKFLOW, ACTIONS),
                                   ("mail", "release@example.com",
                                    "https://accounts.google.com")):
        entry = entries[name]
        assert entry["signed_by"] == digest_of(root_der)
        assert (entry["signer_identity"], entry["signer_issuer"]) == (identity, issuer)
        assert entry["signature"] == signatures[name] and entry["signed"] == digests[name]
        assert entry["logged_by"] == "sha256:" + rekor.log_id
        assert abs(entry["logged_at"] - now) < 120
        stored = tmp_path / "store" / entry["signature_key"]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == entry["signature_sha256"]

    # a policy naming another root: the lock's verification no longer counts, and the
    # registry's signature does not chain to it
    (tmp_path / "keys/fulcio-roots.pem").write_text(stranger.root)
    assert bake("good") == 1
    assert "does not chain to a root in" in capsys.readouterr().err
