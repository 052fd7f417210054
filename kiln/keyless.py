"""Keyless cosign signatures (a Fulcio certificate and a Rekor bundle), checked offline against
the roots and the Rekor key the user copied into the repository (core: what is compared with
what; every signature and the chain are checked by openssl, kiln/signing.py).

cosign's keyless signature layer carries, beside the payload and its signature, the leaf
certificate Fulcio issued (``dev.sigstore.cosign/certificate``, valid ten minutes), its chain
(``dev.sigstore.cosign/chain``) and the Rekor bundle (``dev.sigstore.cosign/bundle``): the
signed entry timestamp (SET) Rekor's key made over the canonical JSON of ``{body,
integratedTime, logIndex, logID}``. What cosign checks offline (pkg/cosign/verify.go:
VerifyBundle, compareSigs, comparePublicKey, bundleHash, VerifySET, TrustedCert, CheckExpiry,
CheckCertificatePolicy), kiln checks in this order:

1. the bundle's logID is the sha256 of ``rekor_key`` and the SET verifies with it;
2. the logged entry (hashedrekord or rekord 0.0.1) holds this payload's sha256, this
   signature and this certificate;
3. the certificate is valid at the logged time (integratedTime) and chains, with every
   certificate valid then, to a self-signed root of ``roots`` (intermediates: those of
   ``roots`` and of the chain annotation);
4. it is for code signing, one of its subject alternative names is the identity, its OIDC
   issuer (Fulcio's extension) the issuer: equal, or a regexp matching the whole value;
5. the signature of the payload verifies with the certificate's key.

Not checked: the certificate's embedded SCT (no CT log key is asked for), Rekor inclusion
proofs (the bundle has none), RFC 3161 timestamps, and signatures in the newer Sigstore
bundle format that cosign 3 stores as OCI referrers (README, Provenance).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln import der
from kiln.errors import KilnError
from kiln.model import Keyless
from kiln.ports import SignatureChecks

CERTIFICATE = "dev.sigstore.cosign/certificate"
CHAIN = "dev.sigstore.cosign/chain"
BUNDLE = "dev.sigstore.cosign/bundle"
ENTRY_KINDS = (("hashedrekord", "0.0.1"), ("rekord", "0.0.1"))
MAX_ROOTS = 1 << 20


@dataclass(frozen=True)
class Signer:
    """What a keyless signature was verified as (the lock records it)."""

    identity: str  # the subject alternative name the policy matched
    issuer: str  # the certificate's OIDC issuer
    root: str  # sha256:<hex> of the root certificate the chain ended at (DER)
    log: str  # sha256:<hex> of the Rekor key (DER) whose SET verified: the bundle's logID
    logged_at: int  # integratedTime: when Rekor logged the signature (seconds since the epoch)


@dataclass(frozen=True)
class Trust:
    """The policy's files, read: trust anchors, intermediates, the Rekor key."""

    roots: tuple[der.Certificate, ...]  # the self-signed certificates of ``roots``
    intermediates: tuple[der.Certificate, ...]  # the others
    rekor: bytes  # the Rekor key, DER SubjectPublicKeyInfo

    @property
    def log(self) -> str:
        return "sha256:" + hashlib.sha256(self.rekor).hexdigest()


class _Refused(Exception):
    """Why this signature is not one the policy trusts (one line)."""


def trust(policy: Keyless) -> Trust:
    """The roots and the Rekor key the policy names (KilnError: unreadable or not those)."""
    try:
        with policy.roots.open("rb") as handle:
            text = handle.read(MAX_ROOTS).decode("ascii")
        certs = der.from_pem(text)
        rekor = der.public_key(policy.rekor_key.read_text(encoding="ascii"),
                               str(policy.rekor_key))
    except (OSError, UnicodeDecodeError, der.DerError) as exc:
        raise KilnError(f"verify: {exc}") from None
    roots = tuple(c for c in certs if c.self_signed)
    if not roots:
        raise KilnError(f"verify roots {policy.roots}: no self-signed root certificate in it")
    return Trust(roots, tuple(c for c in certs if not c.self_signed), rekor)


def when(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def matches(value: str, wanted: str, regexp: bool) -> bool:
    """cosign's --certificate-identity(-regexp) test, anchored: a regexp must match the whole
    value (cosign searches, so `https://github.com/org/` would match any URL holding it)."""
    return re.fullmatch(wanted, value) is not None if regexp else value == wanted


def check(payload: bytes, signature: bytes, annotations: Mapping[str, Any], policy: Keyless,
          trusted: Trust, checks: SignatureChecks) -> Signer | str:
    """The signer of ``signature`` (DER) over ``payload`` when the layer's certificate and
    bundle hold up against ``policy``; else why not, one line."""
    try:
        return _check(payload, signature, annotations, policy, trusted, checks)
    except _Refused as exc:
        return str(exc)


def _check(payload: bytes, signature: bytes, annotations: Mapping[str, Any], policy: Keyless,
           trusted: Trust, checks: SignatureChecks) -> Signer:
    leaf, chain = _certificates(annotations)
    entry, logged_at = _logged_entry(annotations, policy, trusted, checks)
    _same_entry(entry, payload, signature, leaf)
    if not leaf.not_before <= logged_at <= leaf.not_after:
        raise _Refused(f"its certificate was valid from {when(leaf.not_before)} to "
                       f"{when(leaf.not_after)}, and Rekor logged the signature at "
                       f"{when(logged_at)}")
    root = _anchor(leaf, chain, logged_at, policy, trusted, checks)
    identity, issuer = _identity(leaf, policy)
    if not checks.verifies_spki(payload, signature, leaf.public_key):
        raise _Refused("its signature does not verify with its certificate's key")
    return Signer(identity, issuer, root, trusted.log, logged_at)


def _certificates(annotations: Mapping[str, Any]
                  ) -> tuple[der.Certificate, list[der.Certificate]]:
    text = annotations.get(CERTIFICATE)
    if not isinstance(text, str):
        raise _Refused("a signature without a certificate (made with a key, not keyless)")
    chain_text = annotations.get(CHAIN, "")
    try:
        leaves = der.from_pem(text)
        chain = der.from_pem(chain_text if isinstance(chain_text, str) else "")
    except der.DerError as exc:
        raise _Refused(f"its certificate is not one Fulcio issues ({exc})") from None
    if len(leaves) != 1:
        raise _Refused(f"{len(leaves)} certificates where cosign writes one")
    return leaves[0], chain


def _logged_entry(annotations: Mapping[str, Any], policy: Keyless, trusted: Trust,
                  checks: SignatureChecks) -> tuple[dict[str, Any], int]:
    """The Rekor entry and its integratedTime, once the SET verifies with the Rekor key."""
    text = annotations.get(BUNDLE)
    if not isinstance(text, str):
        raise _Refused("no Rekor bundle beside its certificate: kiln checks keyless "
                       "signatures offline, against the bundle cosign stores with them")
    try:
        bundle = json.loads(text)
        signed = base64.b64decode(bundle["SignedEntryTimestamp"], validate=True)
        fields = bundle["Payload"]
        body, logged_at = fields["body"], fields["integratedTime"]
        log_index, log_id = fields["logIndex"], fields["logID"]
        if not (isinstance(body, str) and isinstance(log_id, str)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                        for n in (logged_at, log_index))):
            raise TypeError("fields of the wrong types")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise _Refused(f"its Rekor bundle is not one cosign writes ({exc})") from None
    if "sha256:" + log_id != trusted.log:
        raise _Refused(f"its Rekor bundle is from another log (logID {log_id[:16]}…), not "
                       f"the one of rekor_key {policy.rekor_key}")
    # what Rekor signed: the RFC 8785 form of these four fields (sorted keys, no spaces;
    # their values, a base64 and a hex string and two integers, need no escaping)
    canonical = json.dumps({"body": body, "integratedTime": logged_at, "logID": log_id,
                            "logIndex": log_index}, sort_keys=True, separators=(",", ":"))
    if not checks.verifies(canonical.encode(), signed, policy.rekor_key):
        raise _Refused(f"its Rekor bundle's signed entry timestamp does not verify with "
                       f"rekor_key {policy.rekor_key} (forged, or changed after Rekor signed)")
    try:
        entry = json.loads(base64.b64decode(body, validate=True))
        if not isinstance(entry, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError, binascii.Error) as exc:
        raise _Refused(f"its Rekor entry is not JSON ({exc})") from None
    return entry, logged_at


def _same_entry(entry: dict[str, Any], payload: bytes, signature: bytes,
                leaf: der.Certificate) -> None:
    """The logged entry must be this very signature (cosign: bundleHash, compareSigs,
    comparePublicKey): the payload's hash, the signature bytes, the certificate."""
    kind = (entry.get("kind"), entry.get("apiVersion"))
    if kind not in ENTRY_KINDS:
        raise _Refused(f"its Rekor entry is a {kind[0]!r} {kind[1]!r} entry, not a "
                       "hashedrekord or rekord 0.0.1 one")
    try:
        spec = entry["spec"]
        digest = spec["data"]["hash"]
        logged_signature = base64.b64decode(spec["signature"]["content"], validate=True)
        logged_key = base64.b64decode(spec["signature"]["publicKey"]["content"],
                                      validate=True).decode("ascii")
        logged_certs = der.from_pem(logged_key)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _Refused(f"its Rekor entry is not one cosign makes ({exc})") from None
    wanted = hashlib.sha256(payload).hexdigest()
    if digest.get("algorithm") != "sha256" or digest.get("value") != wanted:
        logged = str(digest.get("value"))[:16]
        raise _Refused(f"its Rekor entry logs another payload (sha256:{logged}…), not this "
                       f"one (sha256:{wanted[:16]}…)")
    if logged_signature != signature:
        raise _Refused("its Rekor entry logs another signature than the one beside it")
    if [c.der for c in logged_certs] != [leaf.der]:
        raise _Refused("its Rekor entry logs another certificate than the one beside it")


def _anchor(leaf: der.Certificate, chain: list[der.Certificate], at: int, policy: Keyless,
            trusted: Trust, checks: SignatureChecks) -> str:
    """The fingerprint of the root ``leaf`` chains to at ``at`` (each root tried alone: two
    Fulcio roots share one subject name, and the lock names the one that vouched)."""
    given = [c.der for c in (*trusted.intermediates, *chain) if not c.self_signed]
    intermediates = list(dict.fromkeys(given))
    reasons = []
    for root in trusted.roots:
        why = checks.chains(leaf.der, intermediates, root.der, at)
        if why is None:
            return root.fingerprint
        reasons.append(why)
    raise _Refused(f"its certificate does not chain to a root in {policy.roots} at "
                   f"{when(at)} (openssl: {reasons[0]})")


def _identity(leaf: der.Certificate, policy: Keyless) -> tuple[str, str]:
    try:
        usages, names, issuer = der.key_usages(leaf), der.names(leaf), der.oidc_issuer(leaf)
    except (der.DerError, ValueError, IndexError) as exc:
        raise _Refused(f"its certificate's extensions are not Fulcio's ({exc})") from None
    if der.CODE_SIGNING not in usages:
        raise _Refused("its certificate is not for code signing (extended key usage)")
    found = [n for n in names if matches(n, policy.identity, policy.identity_regexp)]
    if not found:
        wanted = ("matching " if policy.identity_regexp else "") + policy.identity
        raise _Refused(f"its certificate is for {', '.join(names) or 'no name'}, not {wanted}")
    if issuer is None or not matches(issuer, policy.issuer, policy.issuer_regexp):
        wanted = ("matching " if policy.issuer_regexp else "") + policy.issuer
        raise _Refused(f"its certificate's OIDC issuer is {issuer or 'missing'}, not {wanted}")
    return found[0], issuer
