"""Upstream signatures checked at bake (issue 15), with real parts: a TLS docker-registry as
the upstream, keys made by openssl, signatures in cosign's convention (a `sha256-H.sig`
artifact whose simple-signing payload names the digest, its ECDSA signature in an
annotation) written here the way cosign writes them, and a bake with no Docker engine."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.localengine import Daemon
from tests.helpers import registry_image
from tests.integration import ocibuild
from tests.integration.conftest import scratch_context, skopeo_home, tls_registry_at

USER, PASSWORD = "upstream", "up-s3cret"
Registry = tuple[str, Path]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("upstream"), USER, PASSWORD) as served:
        yield served


def call(registry: Registry, method: str, url: str, body: bytes | None = None,
         media_type: str = "application/octet-stream") -> urllib.request.addinfourl:
    host, ca = registry
    request = urllib.request.Request(url if url.startswith("https") else
                                     f"https://{host}/v2/{url}", data=body, method=method)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", media_type)
    request.add_header("Accept", "application/vnd.oci.image.manifest.v1+json, "
                                 "application/vnd.docker.distribution.manifest.v2+json")
    return urllib.request.urlopen(request, timeout=30,
                                  context=ssl.create_default_context(cafile=str(ca)))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(registry: Registry, repo: str, tag: str, manifest: bytes, blobs: dict[str, bytes],
        media_type: str) -> str:
    """Blobs (monolithic uploads) and the manifest through the registry's API."""
    for digest, data in blobs.items():
        if data is manifest:
            continue
        with call(registry, "POST", f"{repo}/blobs/uploads/") as answer:
            location = answer.headers["Location"]
        joiner = "&" if "?" in location else "?"
        call(registry, "PUT", f"{location}{joiner}digest={digest}", data).close()
    with call(registry, "PUT", f"{repo}/manifests/{tag}", manifest, media_type) as answer:
        return str(answer.headers["Docker-Content-Digest"])


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    key, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(key)], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)],
                   check=True, capture_output=True)
    return key, pub


def cosign_sign(registry: Registry, repo: str, digest: str, key: Path,
                identity: str | None = None) -> str:
    """What `cosign sign --key` pushes: the payload, its signature, as `sha256-H.sig`."""
    payload = json.dumps({"critical": {
        "identity": {"docker-reference": f"{registry[0]}/{identity or repo}"},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature"}, "optional": None}).encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=payload,
                               check=True, capture_output=True).stdout
    return put_artifact(registry, repo, digest, payload, {
        "dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()})


def put_artifact(registry: Registry, repo: str, digest: str, payload: bytes,
                 annotations: dict[str, str]) -> str:
    """A cosign signature artifact beside ``digest``: one simple-signing layer (``payload``,
    with ``annotations``: the signature, and for keyless its certificate, chain, bundle)."""
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(payload)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": len(config), "digest": digest_of(config)},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "size": len(payload), "digest": digest_of(payload),
                    "annotations": annotations}]}).encode()
    return put(registry, repo, digest.replace(":", "-") + ".sig", manifest,
               {digest_of(payload): payload, digest_of(config): config},
               "application/vnd.oci.image.manifest.v1+json")


@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with tls_registry_at(tmp_path_factory.mktemp("internal"), USER, PASSWORD) as served:
        yield served


@pytest.fixture
def home(upstream: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skopeo_home(tmp_path / "home", *upstream, USER, PASSWORD, monkeypatch)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # none is needed


def test_bake_accepts_what_the_key_signed_and_refuses_the_rest(
        tmp_path: Path, upstream: Registry, internal: Registry, home: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    host = upstream[0]
    team = f"t{uuid.uuid4().hex[:8]}"
    shutil.copy(internal[1], tmp_path / "internal-ca.pem")
    up_key, up_pub = keypair(tmp_path, "upstream")
    other_key, _ = keypair(tmp_path, "other")
    docker_media = "application/vnd.docker.distribution.manifest.v2+json"
    digests, signatures = {}, {}
    for name, key in (("good", up_key), ("unsigned", None), ("forged", other_key)):
        manifest, blobs = registry_image(f"{team} {name}".encode())
        digests[name] = put(upstream, f"{team}/{name}", "v1", manifest, blobs, docker_media)
        if key is not None:
            signatures[name] = cosign_sign(upstream, f"{team}/{name}", digests[name], key)
    # the good key signed this digest, but as another repository's: not a signature of it
    manifest, blobs = registry_image(f"{team} moved".encode())
    digests["moved"] = put(upstream, f"{team}/moved", "v1", manifest, blobs, docker_media)
    cosign_sign(upstream, f"{team}/moved", digests["moved"], up_key, f"{team}/elsewhere")

    def bake(*names: str) -> int:
        images = "".join(f"  - {{name: {n}, ref: '${{registry}}/{team}/{n}:v1', "
                         f"pull: '{host}/{team}/{n}:v1'}}\n" for n in names)
        (tmp_path / "images.yaml").write_text(
            f"version: 1\nimages:\n{images}environments:\n  it:\n"
            f"    registry: '{internal[0]}'\n    registry_ca: internal-ca.pem\n"
            "    verify: {key: upstream.pub}\n"
            "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n")
        return main(["bake", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                     "--quiet"])

    assert bake("good", "unsigned", "forged", "moved") == 1
    err = capsys.readouterr().err
    assert f"image 'unsigned': not signed: {host}/{team}/unsigned has no sha256-" in err
    assert "image 'forged': not signed with" in err and "does not verify" in err
    assert "image 'moved': not signed with" in err and f"{team}/elsewhere" in err
    assert "image 'good'" not in err
    assert not (tmp_path / "dist/it/images.lock.json").exists()

    assert bake("good") == 0, capsys.readouterr().err
    (entry,) = json.loads((tmp_path / "dist/it/images.lock.json").read_text())["images"]
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(up_pub), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    assert entry["signed_by"] == digest_of(der)
    assert entry["signature"] == signatures["good"]
    assert entry["signed"] == digests["good"] == entry["manifest_digests"]["linux/amd64"]
    stored = tmp_path / "store" / entry["signature_key"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == entry["signature_sha256"]

    # day 2: the internal registry serves the image and, beside it, the upstream signature
    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    assert main(["push", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                 "--quiet"]) == 0, capsys.readouterr().err
    tag = digests["good"].replace(":", "-") + ".sig"
    with call(internal, "GET", f"{team}/good/manifests/{tag}") as answer:
        artifact = answer.read()
        assert answer.headers["Docker-Content-Digest"] == signatures["good"]
    # what `cosign verify --key upstream.pub` checks, done here by hand against the internal
    # registry: the payload names the digest nodes hold, its signature verifies with the key
    (layer,) = json.loads(artifact)["layers"]
    with call(internal, "GET", f"{team}/good/blobs/{layer['digest']}") as answer:
        payload = answer.read()
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == digests["good"]
    (tmp_path / "sig.der").write_bytes(base64.b64decode(
        layer["annotations"]["dev.cosignproject.cosign/signature"]))
    checked = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(up_pub),
                              "-signature", str(tmp_path / "sig.der")], input=payload,
                             capture_output=True)
    assert checked.stdout.strip() == b"Verified OK"
    assert main(["verify-registry", "--env", "it", "--config", str(tmp_path / "images.yaml"),
                 "--json"]) == 0
    assert [r["state"] for r in json.loads(capsys.readouterr().out)] == ["ok"]



def test_a_signed_upstream_index_is_pushed_with_its_signature(
        tmp_path: Path, upstream: Registry, internal: Registry, home: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """cosign signs the index digest of a multi-platform image: once push serves that index
    byte for byte (the lock holds all its platforms), the signature goes beside it; an image
    baked for one of its platforms is served as that manifest, so the index's signature is not
    pushed (a warning says so) and verify-registry does not ask for it."""
    host, team = upstream[0], f"t{uuid.uuid4().hex[:8]}"
    shutil.copy(internal[1], tmp_path / "internal-ca.pem")
    key, pub = keypair(tmp_path, "upstream")
    made = ocibuild.image({"linux/amd64": b"amd64 signed\n", "linux/arm64": b"arm64 signed\n"})
    for name in ("both", "one"):
        for one in made.platforms.values():
            put(upstream, f"{team}/{name}", one.digest, one.manifest,
                {ocibuild.digest(one.layer): one.layer, one.image_id: one.config},
                ocibuild.MANIFEST)
        assert put(upstream, f"{team}/{name}", "v1", made.index, {},
                   ocibuild.INDEX) == made.index_digest
    signature = cosign_sign(upstream, f"{team}/both", made.index_digest, key)
    cosign_sign(upstream, f"{team}/one", made.index_digest, key)
    (tmp_path / "images.yaml").write_text(
        f"version: 1\nimages:\n"
        f"  - {{name: both, ref: '${{registry}}/{team}/both:v1', pull: '{host}/{team}/both:v1',"
        " platforms: [linux/amd64, linux/arm64]}\n"
        f"  - {{name: one, ref: '${{registry}}/{team}/one:v1', pull: '{host}/{team}/one:v1'}}\n"
        f"environments:\n  it:\n    registry: '{internal[0]}'\n"
        "    registry_ca: internal-ca.pem\n    verify: {key: upstream.pub}\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n")
    args = ["--env", "it", "--config", str(tmp_path / "images.yaml")]
    assert main(["bake", *args, "--quiet"]) == 0, capsys.readouterr().err
    entries = json.loads((tmp_path / "dist/it/images.lock.json").read_text())["images"]
    assert {(e["name"], e["signed"], e["signature"]) for e in entries if e["name"] == "both"} \
        == {("both", made.index_digest, signature)}

    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    capsys.readouterr()
    assert main(["push", *args]) == 0, capsys.readouterr().err
    said = capsys.readouterr().err
    tag = made.index_digest.replace(":", "-") + ".sig"
    with call(internal, "GET", f"{team}/both/manifests/{tag}") as answer:
        assert answer.headers["Docker-Content-Digest"] == signature
        (layer,) = json.loads(answer.read())["layers"]
    with call(internal, "GET", f"{team}/both/blobs/{layer['digest']}") as answer:
        payload = answer.read()  # names the index the internal registry serves under v1
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] \
        == made.index_digest
    (tmp_path / "sig.der").write_bytes(base64.b64decode(
        layer["annotations"]["dev.cosignproject.cosign/signature"]))
    checked = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                              str(tmp_path / "sig.der")], input=payload, capture_output=True)
    assert checked.stdout.strip() == b"Verified OK"
    assert (f"one: its signature signs the upstream index {made.index_digest}, which the "
            "registry does not serve") in said
    with pytest.raises(urllib.error.HTTPError):
        call(internal, "GET", f"{team}/one/manifests/{tag}")
    assert main(["verify-registry", *args, "--json"]) == 0
    assert {r["state"] for r in json.loads(capsys.readouterr().out)} == {"ok"}

    # another signature under the tag (another key's): verify-registry says so per platform
    cosign_sign(internal, f"{team}/both", made.index_digest, keypair(tmp_path, "other")[0])
    assert main(["verify-registry", *args, "--json"]) == 1
    assert {(r["name"], r["state"]) for r in json.loads(capsys.readouterr().out)} == {
        ("both", "missing-signature"), ("one", "ok")}
    assert main(["push", *args, "--quiet"]) == 0, capsys.readouterr().err
    assert main(["verify-registry", *args]) == 0

def test_push_signs_what_kiln_built_with_the_team_key(
        tmp_path: Path, internal: Registry, dockerd: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    team = f"t{uuid.uuid4().hex[:8]}"
    key, pub = keypair(tmp_path, "team")
    shutil.copy(internal[1], tmp_path / "internal-ca.pem")
    scratch_context(tmp_path / "app", f"built {team}")
    (tmp_path / "images.yaml").write_text(
        f"version: 1\nimages:\n  - {{name: app, ref: '${{registry}}/{team}/app:v1', "
        f"build: app}}\nenvironments:\n  it:\n    registry: '{internal[0]}'\n"
        "    registry_ca: internal-ca.pem\n"
        "    store: {type: dir, path: store, url: 'http://127.0.0.1:1/'}\n")
    monkeypatch.setenv("DOCKER_HOST", dockerd.address)
    monkeypatch.setenv("KILN_SIGNING_KEY", str(key))
    monkeypatch.delenv("KILN_SIGNING_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("KILN_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("KILN_REGISTRY_PASSWORD", PASSWORD)
    config = ["--env", "it", "--config", str(tmp_path / "images.yaml"), "--quiet"]
    assert main(["bake", *config]) == 0, capsys.readouterr().err
    assert main(["push", *config]) == 0, capsys.readouterr().err
    (entry,) = json.loads((tmp_path / "dist/it/images.lock.json").read_text())["images"]
    digest = entry["manifest_digests"]["linux/amd64"]
    with call(internal, "GET", f"{team}/app/manifests/{digest.replace(':', '-')}.sig") as answer:
        (layer,) = json.loads(answer.read())["layers"]
    with call(internal, "GET", f"{team}/app/blobs/{layer['digest']}") as answer:
        payload = answer.read()
    critical = json.loads(payload)["critical"]
    assert critical["image"]["docker-manifest-digest"] == digest
    assert critical["identity"]["docker-reference"] == f"{internal[0]}/{team}/app"
    (tmp_path / "sig.der").write_bytes(base64.b64decode(
        layer["annotations"]["dev.cosignproject.cosign/signature"]))
    checked = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                              str(tmp_path / "sig.der")], input=payload, capture_output=True)
    assert checked.stdout.strip() == b"Verified OK"
    # a second push finds it signed and signs nothing again
    assert main(["push", *config[:-1]]) == 0
    assert "signing" not in capsys.readouterr().err
