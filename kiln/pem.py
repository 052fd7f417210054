"""CA bundles that go to nodes: PEM certificates and nothing else.

A bundle is copied into every node's user-data and trust store, so it is read strictly:
only ``CERTIFICATE`` blocks, each starting at the first column, whose body is base64 of one
complete DER SEQUENCE. Text between blocks (the ``# Issuer:`` lines of system bundles) is
allowed and dropped; a private key, an indented or broken block is refused with the file's
name and line. What nodes get is the certificates re-emitted in canonical form.
"""

from __future__ import annotations

import base64
import binascii
import re
import stat
import textwrap
from pathlib import Path

from kiln.errors import KilnError

_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----", re.ASCII)
_END = "-----END {}-----"
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
MAX_BUNDLE_BYTES = 4 << 20


class BundleError(KilnError):
    """A CA bundle kiln will not send to nodes."""


def _der_complete(der: bytes) -> bool:
    """True when ``der`` is exactly one DER SEQUENCE (the outer shape of a certificate)."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        length, header = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            return False
        length, header = int.from_bytes(der[2:2 + count], "big"), 2 + count
    return header + length == len(der)


def certificates(text: str, source: str) -> list[str]:
    """The certificates of a PEM bundle, canonical; BundleError says what is wrong and where."""
    if len(text) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{source}: {len(text)} bytes is too large for a CA bundle")
    out: list[str] = []
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        line = lines[n]
        n += 1
        stripped = line.strip()
        if "-----BEGIN" in line or "-----END" in line:
            begin = _BEGIN.fullmatch(line.rstrip())
            if begin is None:
                raise BundleError(f"{source}:{n}: a PEM marker must start the line, alone: "
                                  f"{stripped[:60]!r}")
            kind = begin.group(1)
            if kind != "CERTIFICATE":
                what = "a private key" if "PRIVATE KEY" in kind else f"a {kind} block"
                raise BundleError(f"{source}:{n}: holds {what}; a CA bundle for nodes holds "
                                  "certificates only")
            start = n
            body: list[str] = []
            while n < len(lines) and lines[n].rstrip() != _END.format(kind):
                piece = lines[n].rstrip()
                n += 1
                if not _BASE64_LINE.fullmatch(piece):
                    raise BundleError(f"{source}:{n}: not base64 inside the certificate "
                                      f"that starts at line {start}")
                body.append(piece)
            if n >= len(lines):
                raise BundleError(f"{source}:{start}: the certificate has no END line")
            n += 1
            try:
                der = base64.b64decode("".join(body), validate=True)
            except (binascii.Error, ValueError):
                der = b""
            if not _der_complete(der):
                raise BundleError(f"{source}:{start}: the certificate is truncated or not DER")
            encoded = base64.b64encode(der).decode("ascii")
            out.append("-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(encoded, 64))
                       + "\n-----END CERTIFICATE-----\n")
    if not out:
        raise BundleError(f"{source}: holds no PEM certificate")
    return out


def read_bundle(path: Path) -> str:
    """The canonical PEM text of the CA bundle at ``path``."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"the CA bundle {path} is not a regular file")
        if info.st_size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path}: {info.st_size} bytes is too large for a CA bundle")
        with path.open("rb") as stream:
            data = stream.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"cannot read the CA bundle {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BundleError(f"{path}: a PEM bundle is ASCII text") from None
    return "".join(certificates(text, str(path)))
