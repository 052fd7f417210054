"""The few fields of an X.509 certificate a keyless signature is judged by (core: a reader of
DER bytes, no cryptography: openssl checks every signature and the chain, kiln/signing.py).

Read strictly: definite lengths, one-byte tags, every element ending where its parent says,
nothing after the certificate. What is read: issuer and subject (raw, to tell a self-signed
root), the validity, the public key (SubjectPublicKeyInfo, as openssl wants it), and the
extensions by OID: the subject alternative names, the extended key usages, and Fulcio's
OIDC issuer (1.3.6.1.4.1.57264.1.1 raw, 1.3.6.1.4.1.57264.1.8 a DER UTF8String:
github.com/sigstore/fulcio, docs/oid-info.md).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import re
from dataclasses import dataclass

SAN = "2.5.29.17"
EXTENDED_KEY_USAGE = "2.5.29.37"
CODE_SIGNING = "1.3.6.1.5.5.7.3.3"
FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"  # the raw string (deprecated, still written)
FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"  # a DER UTF8String
FULCIO_USERNAME = "1.3.6.1.4.1.57264.1.7"  # an otherName SAN (a username identity)
MAX_CERTIFICATE = 64 << 10
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n]+?)"
                  r"-----END CERTIFICATE-----", re.ASCII)
_TIME = re.compile(r"([0-9]{2,4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})Z", re.ASCII)


class DerError(ValueError):
    """Bytes that are not the certificate they claim to be."""


@dataclass(frozen=True)
class Certificate:
    der: bytes
    issuer: bytes  # the Name, DER (compared as bytes: a self-signed root names itself)
    subject: bytes
    not_before: int  # seconds since the epoch
    not_after: int
    public_key: bytes  # SubjectPublicKeyInfo, DER
    extensions: dict[str, bytes]  # OID -> extnValue (the OCTET STRING's content)

    @property
    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(self.der).hexdigest()

    @property
    def self_signed(self) -> bool:
        return self.issuer == self.subject


def _element(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The element at ``pos``: its tag, where its content starts and where it ends."""
    if pos + 2 > end:
        raise DerError("truncated")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise DerError("a multi-byte tag")
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > end:
            raise DerError("an indefinite or oversized length")
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    if start + length > end:
        raise DerError("an element longer than its parent")
    return tag, start, start + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The elements between ``start`` and ``end``: (tag, content start, end) each."""
    out = []
    while start < end:
        tag, content, after = _element(data, start, end)
        out.append((tag, content, after))
        start = after
    return out


def _whole(data: bytes, start: int, end: int) -> list[bytes]:
    """The elements between ``start`` and ``end``, each with its tag and length."""
    out = []
    while start < end:
        after = _element(data, start, end)[2]
        out.append(data[start:after])
        start = after
    return out


def _oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise DerError("a broken object identifier")
    numbers, current = [], 0
    for byte in value:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            numbers.append(current)
            current = 0
    first = min(numbers[0] // 40, 2)
    return ".".join(str(n) for n in (first, numbers[0] - 40 * first, *numbers[1:]))


def _time(tag: int, value: bytes) -> int:
    match = _TIME.fullmatch(value.decode("ascii", errors="replace"))
    if match is None or (tag == 0x17) != (len(match.group(1)) == 2):
        raise DerError("a validity time that is not UTCTime or GeneralizedTime in UTC")
    year = int(match.group(1))
    if tag == 0x17:
        year += 1900 if year >= 50 else 2000
    fields = (year, *(int(match.group(n)) for n in range(2, 7)))
    return calendar.timegm(fields)


def parse(der: bytes) -> Certificate:
    """The certificate in ``der`` (DerError: it is not one, or not only one)."""
    try:
        return _parse(der)
    except (IndexError, ValueError) as exc:
        raise DerError(str(exc) or "not a certificate") from None


def _parse(der: bytes) -> Certificate:
    if len(der) > MAX_CERTIFICATE:
        raise DerError(f"{len(der)} bytes is too large for a certificate")
    tag, start, end = _element(der, 0, len(der))
    if tag != 0x30 or end != len(der):
        raise DerError("not one DER certificate")
    parts = _children(der, start, end)
    if len(parts) != 3 or parts[0][0] != 0x30:
        raise DerError("not a certificate (tbsCertificate, algorithm, signature)")
    fields = _children(der, parts[0][1], parts[0][2])
    whole = _whole(der, parts[0][1], parts[0][2])  # the same elements, tag and length kept
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields, whole = fields[1:], whole[1:]
    if len(fields) < 6 or [f[0] for f in fields[1:6]] != [0x30] * 5:
        raise DerError("a tbsCertificate without issuer, validity, subject and key")
    validity = _children(der, fields[3][1], fields[3][2])
    if len(validity) != 2:
        raise DerError("a validity that is not two times")
    times = [_time(t, der[s:e]) for t, s, e in validity]
    extensions: dict[str, bytes] = {}
    for tag, start, end in fields[6:]:
        if tag != 0xA3:  # issuerUniqueID / subjectUniqueID: not read
            continue
        (seq,) = _children(der, start, end)
        for _, ext_start, ext_end in _children(der, seq[1], seq[2]):
            items = _children(der, ext_start, ext_end)
            if items[0][0] != 0x06 or items[-1][0] != 0x04:
                raise DerError("an extension that is not (OID, [critical], OCTET STRING)")
            oid = _oid(der[items[0][1]:items[0][2]])
            if oid in extensions:
                raise DerError(f"the extension {oid} twice")
            extensions[oid] = der[items[-1][1]:items[-1][2]]
    return Certificate(der=der, issuer=whole[2], subject=whole[4], not_before=times[0],
                       not_after=times[1], public_key=whole[5], extensions=extensions)


def names(cert: Certificate) -> list[str]:
    """The subject alternative names (what cosign's identity matches): emails, URIs, DNS
    names, and Fulcio's username otherName; other kinds are not identities kiln matches."""
    value = cert.extensions.get(SAN)
    if value is None:
        return []
    tag, first, last = _element(value, 0, len(value))
    if tag != 0x30 or last != len(value):
        raise DerError("a subject alternative name that is not a sequence")
    out = []
    for tag, start, end in _children(value, first, last):
        if tag in (0x81, 0x82, 0x86):  # rfc822Name, dNSName, uniformResourceIdentifier
            out.append(value[start:end].decode("ascii"))
        elif tag == 0xA0:  # otherName: type-id, [0] EXPLICIT value
            oid, wrapped = _children(value, start, end)
            if _oid(value[oid[1]:oid[2]]) == FULCIO_USERNAME:
                (inner,) = _children(value, wrapped[1], wrapped[2])
                out.append(value[inner[1]:inner[2]].decode("utf-8"))
    return out


def key_usages(cert: Certificate) -> set[str]:
    """The extended key usages (OIDs); empty without the extension."""
    value = cert.extensions.get(EXTENDED_KEY_USAGE)
    if value is None:
        return set()
    _, start, end = _element(value, 0, len(value))
    return {_oid(value[s:e]) for t, s, e in _children(value, start, end) if t == 0x06}


def oidc_issuer(cert: Certificate) -> str | None:
    """Fulcio's OIDC issuer: the V2 extension (a UTF8String), else the V1 raw string; two that
    disagree are refused (DerError)."""
    found = set()
    if FULCIO_ISSUER_V1 in cert.extensions:
        found.add(cert.extensions[FULCIO_ISSUER_V1].decode("utf-8"))
    v2 = cert.extensions.get(FULCIO_ISSUER_V2)
    if v2 is not None:
        tag, start, end = _element(v2, 0, len(v2))
        if tag != 0x0C or end != len(v2):
            raise DerError("a Fulcio issuer (1.3.6.1.4.1.57264.1.8) that is not a UTF8String")
        found.add(v2[start:end].decode("utf-8"))
    if len(found) > 1:
        raise DerError(f"two different OIDC issuers: {sorted(found)}")
    return found.pop() if found else None


def from_pem(text: str) -> list[Certificate]:
    """Every CERTIFICATE block of ``text``, parsed (DerError names the first broken one)."""
    out = []
    for n, match in enumerate(_PEM.finditer(text), 1):
        try:
            der = base64.b64decode("".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            raise DerError(f"certificate {n} is not base64") from None
        try:
            out.append(parse(der))
        except DerError as exc:
            raise DerError(f"certificate {n}: {exc}") from None
    return out


def pem(der: bytes, kind: str = "CERTIFICATE") -> str:
    encoded = base64.b64encode(der).decode("ascii")
    body = "\n".join(encoded[i:i + 64] for i in range(0, len(encoded), 64))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


def public_key(text: str, source: str) -> bytes:
    """The DER SubjectPublicKeyInfo of the PEM public key ``text`` (DerError: none there)."""
    lines = text.splitlines()
    try:
        start = lines.index("-----BEGIN PUBLIC KEY-----")
        end = lines.index("-----END PUBLIC KEY-----", start)
        return base64.b64decode("".join(lines[start + 1:end]), validate=True)
    except (ValueError, binascii.Error):
        raise DerError(f"{source}: not a PEM public key") from None
