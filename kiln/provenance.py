"""Upstream signatures in cosign's convention, checked at bake (core: no program is run here;
the signature checks themselves are handed in, kiln/signing.py does them with openssl).

A signature of the image whose manifest (or index) digest is ``sha256:H`` is an OCI artifact
tagged ``sha256-H.sig`` in the image's repository: each layer of media type
``application/vnd.dev.cosign.simplesigning.v1+json`` is a payload naming the signed digest and
the repository, its annotation ``dev.cosignproject.cosign/signature`` the base64 ECDSA
signature of the payload's bytes. A pull is trusted when one payload names the very digest
kiln pulls and a repository equal to the source's, and its signature verifies with the key the
environment (or the image) names. This is what cosign and containers/image check for a key;
Debian's skopeo 1.9.3 would do it, but is built with sigstore disabled ("Debian-local change:
sigstore disabled"), so kiln checks the payload here and the signature with openssl.
A keyless signature (a Fulcio certificate and a Rekor bundle instead of a key) is checked
against the policy's identity, issuer, roots and Rekor key by kiln/keyless.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kiln import der, keyless, refs
from kiln.errors import KilnError
from kiln.lock import LockedImage
from kiln.model import PullSource, Verify
from kiln.ports import SignatureChecks, Upstream

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURES = 64  # layers of one signature artifact read
MAX_PAYLOAD = 64 << 10
MAX_DOCUMENT = 1 << 20

class NotVerified(KilnError):
    """A pull source whose signature does not hold up against its policy (key or keyless)."""


@dataclass(frozen=True)
class Layer:
    """One signature of an artifact: the payload, its signature (DER), the layer's
    annotations (a keyless one's certificate, chain and Rekor bundle: kiln/keyless.py)."""

    payload: bytes
    signature: bytes
    annotations: dict[str, Any]


@dataclass(frozen=True)
class Verified:
    # sha256:<hex> of what vouches: the public key (DER SubjectPublicKeyInfo), or for a
    # keyless signature the root certificate (DER) its certificate chains to
    signed_by: str
    signature: str  # the digest of the signature artifact's manifest
    signed: str  # the digest the signature names (the index's or the manifest's)
    layout: Path | None = None  # the artifact as served (bake stores it; not in the lock)
    stored: tuple[str, str, int] | None = None  # its object: key, sha256, size
    signer: keyless.Signer | None = None  # keyless: identity, issuer, log, logged time


def archive(layout: Path) -> bytes:
    """The artifact's OCI layout as one tar (an `oci-archive:` skopeo pushes), stable: the
    same artifact is the same bytes, so its object is content-addressed like any other."""
    return _tar({path.relative_to(layout).as_posix(): path.read_bytes()
                 for path in layout.rglob("*") if path.is_file()})


def _tar(files: dict[str, bytes]) -> bytes:
    """``files`` as one tar, stable: sorted names, no times, one mode."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def signature_tag(digest: str) -> str:
    """``sha256-<hex>.sig``: where cosign keeps the signatures of ``digest``."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}.sig"


def key_fingerprint(public_key: Path) -> str:
    """sha256 of the key's DER (what `openssl pkey -pubin -outform DER | sha256sum` gives)."""
    try:
        der_bytes = der.public_key(public_key.read_text(encoding="ascii", errors="replace"),
                                   str(public_key))
    except der.DerError as exc:
        raise KilnError(str(exc)) from None
    return "sha256:" + hashlib.sha256(der_bytes).hexdigest()


def _json(path: Path, limit: int = MAX_DOCUMENT) -> Any:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is over {limit} bytes")
    return json.loads(data)


def _blob(layout: Path, digest: str, limit: int) -> bytes:
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256" or len(hex_part) != 64 or not all(
            c in "0123456789abcdef" for c in hex_part):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    path = layout / "blobs" / "sha256" / hex_part
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit or hashlib.sha256(data).hexdigest() != hex_part:
        raise ValueError(f"blob {digest} is not the bytes its digest names")
    return data


def signatures(layout: Path) -> tuple[str, list[Layer]]:
    """The artifact's manifest digest and its signatures, from the OCI layout a copy of
    ``sha256-H.sig`` wrote (bounded; a layer of another kind is skipped)."""
    try:
        index = _json(layout / "index.json")
        manifest_digest = str(index["manifests"][0]["digest"])
        manifest = json.loads(_blob(layout, manifest_digest, MAX_DOCUMENT))
        found = []
        for layer in list(manifest.get("layers") or [])[:MAX_SIGNATURES]:
            if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
                continue
            annotations = dict(layer.get("annotations") or {})
            encoded = annotations.get(SIGNATURE_ANNOTATION)
            if not isinstance(encoded, str):
                continue
            found.append(Layer(_blob(layout, str(layer["digest"]), MAX_PAYLOAD),
                               base64.b64decode(encoded, validate=True), annotations))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            binascii.Error) as exc:
        raise NotVerified(f"its signature artifact is not one cosign writes ({exc})") from None
    return manifest_digest, found


def payload_names(payload: bytes, digest: str, repository: str) -> str | None:
    """Why ``payload`` is not a signature of ``digest`` in ``repository`` (None: it is)."""
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        kind = critical["type"]
        signed = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError):
        return "a payload that is not a cosign simple signing document"
    if kind != SIGNATURE_TYPE:
        return f"a payload of type {kind!r}"
    if signed != digest:
        return f"a payload for {signed}, not {digest}"
    try:
        named = refs.parse(str(reference)).repository
    except refs.ReferenceError:
        return f"a payload naming {reference!r}, not a repository"
    if not same_repository(named, repository):
        return f"a payload naming {named}, not {repository}"
    return None


def same_repository(a: str, b: str) -> bool:
    """Docker Hub is named two ways (go-containerregistry writes index.docker.io)."""
    def hub(name: str) -> str:
        return "docker.io/" + name.removeprefix("index.docker.io/") \
            if name.startswith("index.docker.io/") else name
    return hub(a) == hub(b)


def check(layout: Path, digest: str, repository: str, policy: Verify,
          checks: SignatureChecks) -> Verified:
    """The first signature in ``layout`` (a copy of ``sha256-H.sig``) that names ``digest``
    in ``repository`` and holds up against ``policy`` (its key, or keyless: its identity,
    roots and Rekor key); NotVerified says why none does."""
    artifact, layers = signatures(layout)
    trusted = keyless.trust(policy.keyless) if policy.keyless is not None else None
    reasons = []
    for layer in layers:
        why = payload_names(layer.payload, digest, repository)
        if why is None and policy.key is not None:
            if checks.verifies(layer.payload, layer.signature, policy.key):
                return Verified(key_fingerprint(policy.key), artifact, digest)
            why = f"its signature does not verify with {policy.key} (another key signed it)"
        elif why is None and policy.keyless is not None and trusted is not None:
            signer = keyless.check(layer.payload, layer.signature, layer.annotations,
                                   policy.keyless, trusted, checks)
            if isinstance(signer, keyless.Signer):
                return Verified(signer.root, artifact, digest, signer=signer)
            why = signer
        reasons.append(why or "")
    if not reasons:
        raise NotVerified(f"its signature artifact {artifact} holds no cosign signature")
    raise NotVerified(f"not signed {_by(policy)}: {sorted(set(reasons))[0]}")


def _by(policy: Verify) -> str:
    """How messages name the signer the policy wants."""
    if policy.keyless is None:
        return f"with {policy.key}"
    wanted = policy.keyless
    identity = ("matching " if wanted.identity_regexp else "") + wanted.identity
    issuer = ("matching " if wanted.issuer_regexp else "") + wanted.issuer
    return f"by {identity} ({issuer})"


def trusted_in_lock(entry: LockedImage, policy: Verify) -> bool:
    """Was the lock's entry verified under ``policy`` (the same key; or the same roots,
    Rekor key, and an identity and issuer the policy accepts)? Then a rebake of its pinned
    digest needs no registry."""
    if policy.key is not None:
        return entry.signer_identity is None and entry.signed_by == key_fingerprint(policy.key)
    wanted = policy.keyless
    if wanted is None or entry.signer_identity is None or entry.signer_issuer is None:
        return False
    trusted = keyless.trust(wanted)
    return (entry.signed_by in {root.fingerprint for root in trusted.roots}
            and entry.logged_by == trusted.log
            and keyless.matches(entry.signer_identity, wanted.identity, wanted.identity_regexp)
            and keyless.matches(entry.signer_issuer, wanted.issuer, wanted.issuer_regexp))


def policy_for(source: PullSource, env_verify: Verify | None) -> Verify | None:
    """The image's own ``verify``, else the environment's (None: neither names one)."""
    return source.verify if source.verify is not None else env_verify


def verify_pull(upstream: Upstream, repository: str, digests: tuple[str, ...], policy: Verify,
                checks: SignatureChecks, work: Path, cancel: threading.Event | None = None
                ) -> Verified:
    """Check the signatures of a pull before anything is copied: ``digests`` are what kiln
    pulls, the index's first (what `cosign sign REF` signs), then the platform manifest's."""
    reasons = []
    for n, digest in enumerate(dict.fromkeys(digests)):
        layout = work / f"signature-{n}"
        if not upstream.copy_signature(repository, signature_tag(digest), layout, cancel):
            continue
        try:
            return replace(check(layout, digest, repository, policy, checks), layout=layout)
        except NotVerified as exc:
            reasons.append(str(exc))
    if reasons:
        raise NotVerified(reasons[0])
    raise NotVerified(f"not signed: {repository} has no "
                      f"{' or '.join(signature_tag(d) for d in dict.fromkeys(digests))}")


def recorded(entry: LockedImage, verified: Verified | None) -> LockedImage:
    """The lock entry with what was verified (or without it: no policy, nothing claimed)."""
    if verified is None:
        return replace(entry, signed_by=None, signature=None, signed=None, signature_key=None,
                       signature_sha256=None, signature_size=None, signer_identity=None,
                       signer_issuer=None, logged_by=None, logged_at=None)
    key, sha256, size = verified.stored or (None, None, None)
    entry = replace(entry, signed_by=verified.signed_by, signature=verified.signature,
                    signed=verified.signed, signature_key=key, signature_sha256=sha256,
                    signature_size=size, signer_identity=None, signer_issuer=None,
                    logged_by=None, logged_at=None)
    signer = verified.signer
    if signer is None:
        return entry
    return replace(entry, signer_identity=signer.identity, signer_issuer=signer.issuer,
                   logged_by=signer.log, logged_at=signer.logged_at)


def artifact(repository: str, digest: str, sign: Callable[[bytes], bytes]) -> bytes:
    """A signature artifact of ``digest`` in ``repository`` as cosign writes one, signed by
    ``sign`` (payload bytes -> DER signature), as an `oci-archive:` tar for `push`."""
    payload = json.dumps({"critical": {"identity": {"docker-reference": repository},
                                       "image": {"docker-manifest-digest": digest},
                                       "type": SIGNATURE_TYPE}, "optional": None},
                         sort_keys=True).encode()
    signature = base64.b64encode(sign(payload)).decode()
    config = json.dumps({"architecture": "", "os": "", "config": {}, "rootfs": {
        "type": "layers", "diff_ids": [_digest(payload)]}}, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": SIMPLE_SIGNING, "size": len(payload), "digest":
                    _digest(payload), "annotations": {SIGNATURE_ANNOTATION: signature}}]},
        sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": len(manifest),
        "digest": _digest(manifest)}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index,
             **{f"blobs/sha256/{_digest(b)[7:]}": b for b in (payload, config, manifest)}}
    return _tar(files)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
