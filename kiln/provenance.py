"""Upstream signatures in cosign's convention, checked at bake (core: no program is run here;
the signature check itself is handed in, kiln/signing.py does it with openssl).

A signature of the image whose manifest (or index) digest is ``sha256:H`` is an OCI artifact
tagged ``sha256-H.sig`` in the image's repository: each layer of media type
``application/vnd.dev.cosign.simplesigning.v1+json`` is a payload naming the signed digest and
the repository, its annotation ``dev.cosignproject.cosign/signature`` the base64 ECDSA
signature of the payload's bytes. A pull is trusted when one payload names the very digest
kiln pulls and a repository equal to the source's, and its signature verifies with the key the
environment (or the image) names. This is what cosign and containers/image check for a key;
Debian's skopeo 1.9.3 would do it, but is built with sigstore disabled ("Debian-local change:
sigstore disabled"), so kiln checks the payload here and the signature with openssl.
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

from kiln import refs
from kiln.errors import KilnError
from kiln.lock import LockedImage
from kiln.model import PullSource, Verify
from kiln.ports import Upstream

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
MAX_SIGNATURES = 64  # layers of one signature artifact read
MAX_PAYLOAD = 64 << 10
MAX_DOCUMENT = 1 << 20

Verifier = Callable[[bytes, bytes, Path], bool]  # payload, DER signature, PEM public key


class NotVerified(KilnError):
    """A pull source whose signature does not verify with the configured key."""


@dataclass(frozen=True)
class Verified:
    signed_by: str  # sha256:<hex> of the public key (DER SubjectPublicKeyInfo)
    signature: str  # the digest of the signature artifact's manifest
    signed: str  # the digest the signature names (the index's or the manifest's)
    layout: Path | None = None  # the artifact as served (bake stores it; not in the lock)
    stored: tuple[str, str, int] | None = None  # its object: key, sha256, size


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
    lines = public_key.read_text(encoding="ascii", errors="replace").splitlines()
    try:
        start = lines.index("-----BEGIN PUBLIC KEY-----")
        end = lines.index("-----END PUBLIC KEY-----", start)
        der = base64.b64decode("".join(lines[start + 1:end]), validate=True)
    except (ValueError, binascii.Error):
        raise KilnError(f"{public_key}: not a PEM public key") from None
    return "sha256:" + hashlib.sha256(der).hexdigest()


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


def signatures(layout: Path) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The artifact's manifest digest and its (payload, DER signature) pairs, from the OCI
    layout a copy of ``sha256-H.sig`` wrote (bounded; a layer of another kind is skipped)."""
    try:
        index = _json(layout / "index.json")
        manifest_digest = str(index["manifests"][0]["digest"])
        manifest = json.loads(_blob(layout, manifest_digest, MAX_DOCUMENT))
        found = []
        for layer in list(manifest.get("layers") or [])[:MAX_SIGNATURES]:
            if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
                continue
            encoded = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
            if not isinstance(encoded, str):
                continue
            found.append((_blob(layout, str(layer["digest"]), MAX_PAYLOAD),
                          base64.b64decode(encoded, validate=True)))
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


def check(layout: Path, digest: str, repository: str, key: Path,
          verifies: Verifier) -> Verified:
    """The first signature in ``layout`` (a copy of ``sha256-H.sig``) that names ``digest``
    in ``repository`` and verifies with ``key``; NotVerified says why none does."""
    artifact, pairs = signatures(layout)
    reasons = []
    for payload, signature in pairs:
        why = payload_names(payload, digest, repository)
        if why is None:
            if verifies(payload, signature, key):
                return Verified(key_fingerprint(key), artifact, digest)
            why = f"its signature does not verify with {key} (another key signed it)"
        reasons.append(why)
    if not reasons:
        raise NotVerified(f"its signature artifact {artifact} holds no cosign signature")
    raise NotVerified(f"not signed with {key}: {sorted(set(reasons))[0]}")


def policy_for(source: PullSource, env_verify: Verify | None) -> Verify | None:
    """The image's own ``verify``, else the environment's (None: neither names one)."""
    return source.verify if source.verify is not None else env_verify


def verify_pull(upstream: Upstream, repository: str, digests: tuple[str, ...], key: Path,
                verifies: Verifier, work: Path, cancel: threading.Event | None = None
                ) -> Verified:
    """Check the signatures of a pull before anything is copied: ``digests`` are what kiln
    pulls, the index's first (what `cosign sign REF` signs), then the platform manifest's."""
    reasons = []
    for n, digest in enumerate(dict.fromkeys(digests)):
        layout = work / f"signature-{n}"
        if not upstream.copy_signature(repository, signature_tag(digest), layout, cancel):
            continue
        try:
            return replace(check(layout, digest, repository, key, verifies), layout=layout)
        except NotVerified as exc:
            reasons.append(str(exc))
    if reasons:
        raise NotVerified(reasons[0])
    raise NotVerified(f"not signed: {repository} has no "
                      f"{' or '.join(signature_tag(d) for d in dict.fromkeys(digests))}")


def recorded(entry: LockedImage, verified: Verified | None) -> LockedImage:
    """The lock entry with what was verified (or without it: no key, nothing claimed)."""
    if verified is None:
        return replace(entry, signed_by=None, signature=None, signed=None, signature_key=None,
                       signature_sha256=None, signature_size=None)
    key, sha256, size = verified.stored or (None, None, None)
    return replace(entry, signed_by=verified.signed_by, signature=verified.signature,
                   signed=verified.signed, signature_key=key, signature_sha256=sha256,
                   signature_size=size)


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
