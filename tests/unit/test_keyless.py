"""A real keyless cosign signature (public-good Fulcio and Rekor), verified offline with the
public-good root and Rekor key, and the ways it is refused once anything differs. The data
was made by others: see tests/data/keyless/README.md. The checks are real openssl."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kiln import config as config_mod
from kiln import der, keyless, provenance, signing
from kiln import lock as lockfile
from kiln.errors import ConfigError, KilnError
from kiln.lock import Lock, LockedImage
from kiln.model import Keyless, Location, PullSource, Verify
from tests.helpers import write_layout

DATA = Path(__file__).resolve().parents[1] / "data" / "keyless"
SIGNED = "sha256:c05263d2ff654c3a94243662440913f045075d59c436e2c69e9145ec2b87a321"
REPO = "docker.io/salrashid123/server_image"
IDENTITY = ("https://github.com/salrashid123/go-bazel-github-workflow/.github/workflows/"
            "release.yaml@refs/tags/v0.0.30")
ISSUER = "https://token.actions.githubusercontent.com"
LOGGED_AT = 1772216446  # the bundle's integratedTime: the leaf lived 10 minutes from then


def manifest() -> dict[str, Any]:
    return dict(json.loads((DATA / "signature-manifest.json").read_text()))


def annotations(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["layers"][0]["annotations"])


def layout(folder: Path, doc: dict[str, Any] | None = None, payload: bytes | None = None
           ) -> Path:
    """The artifact as a copy of `sha256-<hex>.sig` writes it (an OCI layout)."""
    doc = doc or manifest()
    payload = (DATA / "payload.json").read_bytes() if payload is None else payload
    doc["layers"][0]["digest"] = "sha256:" + hashlib.sha256(payload).hexdigest()
    raw = json.dumps(doc).encode()
    return write_layout(folder, raw, {doc["layers"][0]["digest"]: payload,
                                      "sha256:" + hashlib.sha256(raw).hexdigest(): raw})


def policy(tmp_path: Path, identity: str = IDENTITY, issuer: str = ISSUER,
           roots: tuple[str, ...] = ("fulcio_v1.crt.pem",), rekor: Path = DATA / "rekor.pub",
           identity_regexp: bool = False, issuer_regexp: bool = False) -> Verify:
    bundle = tmp_path / "roots.pem"
    bundle.write_text("\n".join((DATA / name).read_text() for name in roots) + "\n")
    return Verify(None, Location("images.yaml", 1, 1), Keyless(
        identity, issuer, bundle, rekor, identity_regexp, issuer_regexp))


def test_the_fixture_is_what_its_origin_says() -> None:
    """The payload rebuilt from the README hashes to the layer's digest, and sigstore's TUF
    targets (root-signing) are the certificates and key of cosign's trusted root."""
    payload = (DATA / "payload.json").read_bytes()
    layer = manifest()["layers"][0]
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
    assert len(payload) == layer["size"]
    trusted = json.loads((DATA / "trusted_root_pgi.json").read_text())
    chain = [base64.b64decode(c["rawBytes"]) for c in
             trusted["certificateAuthorities"][-1]["certChain"]["certificates"]]
    files = [der.from_pem((DATA / n).read_text())[0].der
             for n in ("fulcio_intermediate_v1.crt.pem", "fulcio_v1.crt.pem")]
    assert files == chain
    rekor = der.public_key((DATA / "rekor.pub").read_text(), "rekor.pub")
    assert rekor == base64.b64decode(trusted["tlogs"][0]["publicKey"]["rawBytes"])


def test_the_leaf_reads_as_openssl_reads_it() -> None:
    leaf = der.from_pem(annotations(manifest())[keyless.CERTIFICATE])[0]
    assert der.names(leaf) == [IDENTITY]
    assert der.oidc_issuer(leaf) == ISSUER  # .1.1 (raw) and .1.8 (UTF8String) agree
    assert der.CODE_SIGNING in der.key_usages(leaf)
    assert leaf.not_after - leaf.not_before == 600 and not leaf.self_signed
    spki = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], check=True,
                          capture_output=True, input=der.pem(leaf.der).encode()).stdout
    assert der.public_key(spki.decode(), "openssl") == leaf.public_key


@pytest.mark.parametrize("roots", [("fulcio_v1.crt.pem",),
                                   ("fulcio_v1.crt.pem", "fulcio_intermediate_v1.crt.pem")])
def test_a_real_keyless_signature_verifies_offline(tmp_path: Path, roots: tuple[str, ...]
                                                   ) -> None:
    verified = provenance.check(layout(tmp_path / "sig"), SIGNED, REPO,
                                policy(tmp_path, roots=roots), signing.Openssl())
    root = der.from_pem((DATA / "fulcio_v1.crt.pem").read_text())[0]
    assert verified.signed_by == root.fingerprint and verified.signed == SIGNED
    assert verified.signer == keyless.Signer(
        IDENTITY, ISSUER, root.fingerprint,
        "sha256:c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d", LOGGED_AT)


def test_identity_and_issuer_regexps_match_the_whole_value(tmp_path: Path) -> None:
    fine = policy(tmp_path, identity=r"https://github\.com/salrashid123/go-bazel-github-work"
                                     r"flow/\.github/workflows/release\.yaml@refs/tags/v.*",
                  issuer=r"https://token\.actions\.githubusercontent\.com",
                  identity_regexp=True, issuer_regexp=True)
    assert provenance.check(layout(tmp_path / "a"), SIGNED, REPO, fine, signing.Openssl())
    prefix = policy(tmp_path, identity="https://github.com/salrashid123/", identity_regexp=True)
    with pytest.raises(provenance.NotVerified, match=r"not matching https://github\.com/salr"):
        provenance.check(layout(tmp_path / "b"), SIGNED, REPO, prefix, signing.Openssl())


def other_root(tmp_path: Path) -> Path:
    key, cert = tmp_path / "other.key", tmp_path / "other.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-384", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-subj", "/O=sigstore.dev/CN=sigstore", "-days", "3650"],
                   check=True, capture_output=True)
    return cert


def other_rekor(tmp_path: Path) -> Path:
    key, pub = tmp_path / "rekor-other.key", tmp_path / "rekor-other.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)],
                   check=True)
    return pub


def changed_bundle(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    notes = doc["layers"][0]["annotations"]
    bundle = json.loads(notes[keyless.BUNDLE])
    bundle["Payload"].update(fields)
    notes[keyless.BUNDLE] = json.dumps(bundle)
    return doc


def test_what_differs_is_refused_with_one_line(tmp_path: Path) -> None:
    real = manifest()
    swapped = copy.deepcopy(real)  # another signature beside the logged certificate
    swapped["layers"][0]["annotations"][provenance.SIGNATURE_ANNOTATION] = (
        "MEUCIQDteJjXaC3FjaED1D3Ggpg1Lzj4aK3GfR0BLbeCh5SThAIgSVwZxI/MZC1oQ6bfw/5oqg9pUjt5eZW9Z"
        "rQqWjeUn1c=")
    no_bundle = copy.deepcopy(real)
    del no_bundle["layers"][0]["annotations"][keyless.BUNDLE]
    cases: list[tuple[str, Verify, dict[str, Any], bytes | None, str]] = [
        ("identity", policy(tmp_path, identity="https://github.com/salrashid123/other"),
         real, None, f"its certificate is for {IDENTITY}, not https://github.com/salrashid123/"
                     "other"),
        ("issuer", policy(tmp_path, issuer="https://accounts.google.com"), real, None,
         f"its certificate's OIDC issuer is {ISSUER}, not https://accounts.google.com"),
        ("root", Verify(None, Location("images.yaml", 1, 1), Keyless(
            IDENTITY, ISSUER, other_root(tmp_path), DATA / "rekor.pub")), real, None,
         "does not chain to a root"),
        ("rekor", policy(tmp_path, rekor=other_rekor(tmp_path)), real, None,
         "its Rekor bundle is from another log"),
        ("set", policy(tmp_path), changed_bundle(real, logIndex=1004096556), None,
         "signed entry timestamp does not verify with rekor_key"),
        ("time", policy(tmp_path), changed_bundle(real, integratedTime=LOGGED_AT + 601), None,
         "signed entry timestamp does not verify"),  # the SET covers the time too
        # the payload cosign signed, one newline longer (the layer's digest follows it)
        ("payload", policy(tmp_path), real, (DATA / "payload.json").read_bytes() + b"\n",
         "its Rekor entry logs another payload"),
        ("signature", policy(tmp_path), swapped, None, "its Rekor entry logs another signature"),
        ("bundle", policy(tmp_path), no_bundle, None, "no Rekor bundle beside its certificate"),
    ]
    for name, wanted, doc, payload, message in cases:
        with pytest.raises(provenance.NotVerified) as caught:
            provenance.check(layout(tmp_path / name, copy.deepcopy(doc), payload), SIGNED,
                             REPO, wanted, signing.Openssl())
        assert message in str(caught.value) and "\n" not in str(caught.value), name
        assert str(caught.value).startswith("not signed by "), name


def test_a_payload_for_another_digest_is_refused_before_any_certificate(tmp_path: Path
                                                                       ) -> None:
    with pytest.raises(provenance.NotVerified, match=f"a payload for {SIGNED}, not sha256:0"):
        provenance.check(layout(tmp_path / "sig"), "sha256:" + "0" * 64, REPO,
                         policy(tmp_path), signing.Openssl())


CONFIG = """
    version: 1
    images:
      - name: a
        ref: r.example.com/f/a:v1
        pull: up.example.com/a:1
        verify: {verify}
    environments:
      dev: {{registry: r.example.com, store: {{type: dir, path: store}}}}
    """


def test_a_keyless_policy_reads_with_paths_beside_images_yaml(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/roots.pem").write_text((DATA / "fulcio_v1.crt.pem").read_text())
    (tmp_path / "keys/rekor.pub").write_text((DATA / "rekor.pub").read_text())
    (tmp_path / "images.yaml").write_text(textwrap.dedent(CONFIG.format(verify=(
        "{identity_regexp: 'https://github\\.com/org/.*', issuer: " + ISSUER
        + ", roots: keys/roots.pem, rekor_key: keys/rekor.pub}"))))
    config = config_mod.load(tmp_path / "images.yaml", "images.yaml")
    source = config.images[0].source
    assert isinstance(source, PullSource) and source.verify is not None
    assert source.verify.key is None and source.verify.checked
    assert source.verify.keyless == Keyless(r"https://github\.com/org/.*", ISSUER,
                                            tmp_path / "keys/roots.pem",
                                            tmp_path / "keys/rekor.pub", identity_regexp=True)


@pytest.mark.parametrize(("verify", "at", "message"), [
    ("{key: k.pub, identity: x}", "identity", "verify: key and identity do not go together"),
    ("{}", "{", "verify: give key: FILE"),
    ("{issuer: i, roots: roots.pem, rekor_key: k.pub}", "{",
     "verify: give identity or identity_regexp (keyless)"),
    ("{identity: a, identity_regexp: b, issuer: i, roots: roots.pem, rekor_key: k.pub}",
     "identity_regexp", "verify: give identity or identity_regexp, not both"),
    ("{identity_regexp: '(', issuer: i, roots: roots.pem, rekor_key: k.pub}", "'('",
     "verify identity_regexp: not a regular expression"),
    ("{identity: a, issuer: i, roots: nope.pem, rekor_key: k.pub}", "nope.pem",
     "verify roots: cannot read"),
    ("{identity: a, issuer: i, roots: inter.pem, rekor_key: k.pub}", "inter.pem",
     "holds no self-signed root certificate"),
    ("{identity: a, issuer: i, roots: k.pub, rekor_key: k.pub}", "k.pub", "verify roots: "),
    ("{identity: a, issuer: i, roots: roots.pem, rekor_key: k.pem}", "k.pem",
     "verify rekor_key: "),
    ("{identity: a, issuer: i, roots: roots.pem}", "{", "missing required key 'rekor_key'"),
])
def test_a_wrong_keyless_policy_is_refused_where_it_is_written(
        tmp_path: Path, verify: str, at: str, message: str) -> None:
    (tmp_path / "roots.pem").write_text((DATA / "fulcio_v1.crt.pem").read_text())
    (tmp_path / "inter.pem").write_text((DATA / "fulcio_intermediate_v1.crt.pem").read_text())
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(tmp_path / "k.pem")], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "k.pem"), "-pubout", "-out",
                    str(tmp_path / "k.pub")], check=True)
    (tmp_path / "images.yaml").write_text(textwrap.dedent(CONFIG.format(verify=verify)))
    with pytest.raises(ConfigError) as caught:
        config_mod.load(tmp_path / "images.yaml", "images.yaml")
    (problem,) = caught.value.problems
    assert (problem.line, problem.column) == (7, 13 + verify.index(at)), problem
    assert message in problem.message, problem


def pulled_image() -> LockedImage:
    """A lock entry of a pull source whose manifest is the signed digest (before a verify)."""
    sha = "a" * 64
    return LockedImage(
        name="up", ref="r.example.com/f/up:v1", image_id="sha256:" + "b" * 64,
        platform="linux/amd64", sha256=sha, size=10, uncompressed_size=20, compression="zstd",
        compression_level=0, key=f"blobs/sha256/{sha}", roles=(), source="pull",
        manifest_digests=(("linux/amd64", SIGNED),))


def test_the_lock_records_the_signer_and_refuses_one_edited_into_a_control_character(
        ) -> None:
    image = pulled_image()
    root = der.from_pem((DATA / "fulcio_v1.crt.pem").read_text())[0].fingerprint
    signer = keyless.Signer(IDENTITY, ISSUER, root, "sha256:" + "c" * 64, LOGGED_AT)
    entry = provenance.recorded(image, provenance.Verified(root, "sha256:" + "d" * 64, SIGNED,
                                                           signer=signer))
    text = lockfile.to_json(Lock("dev", "r.example.com", images=(entry,)))
    (back,) = lockfile.from_json(text).images
    assert (back.signed_by, back.signer_identity, back.signer_issuer, back.logged_by,
            back.logged_at) == (root, IDENTITY, ISSUER, "sha256:" + "c" * 64, LOGGED_AT)
    assert provenance.recorded(back, None).signer_identity is None
    keyed = provenance.recorded(back, provenance.Verified(root, "sha256:" + "d" * 64, SIGNED))
    assert keyed.signer_identity is None and keyed.logged_at is None
    with pytest.raises(KilnError, match="signer_identity"):
        lockfile.from_json(text.replace("refs/tags/v0.0.30", "refs/tags/v0.0.30\\u001b[2J"))


def test_a_pinned_rebake_trusts_the_lock_only_under_the_same_policy(tmp_path: Path) -> None:
    """bake skips the registry for a pinned digest only when the lock's entry was verified
    under this policy: the same roots and Rekor key, an identity and issuer it accepts."""
    image = pulled_image()
    verified = provenance.check(layout(tmp_path / "sig"), SIGNED, REPO, policy(tmp_path),
                                signing.Openssl())
    entry = provenance.recorded(image, verified)
    assert provenance.trusted_in_lock(entry, policy(tmp_path))
    assert provenance.trusted_in_lock(entry, policy(tmp_path, identity=".*/release.yaml@.*",
                                                    identity_regexp=True))
    assert not provenance.trusted_in_lock(entry, policy(tmp_path, identity="someone@else"))
    assert not provenance.trusted_in_lock(entry, policy(tmp_path, issuer="https://other"))
    assert not provenance.trusted_in_lock(entry, policy(tmp_path,
                                                        rekor=other_rekor(tmp_path)))
    assert not provenance.trusted_in_lock(entry, Verify(
        None, Location("images.yaml", 1, 1),
        Keyless(IDENTITY, ISSUER, other_root(tmp_path), DATA / "rekor.pub")))
    assert not provenance.trusted_in_lock(entry, Verify(DATA / "rekor.pub",
                                                        Location("images.yaml", 1, 1)))
