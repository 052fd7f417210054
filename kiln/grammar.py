"""Whole-string grammars for every value that can reach a node.

kiln's output runs as root on every node at boot, so a value that lands in user-data, the
data file, a unit or the Packer build must be exactly what its grammar allows: matched with
``fullmatch`` on ASCII (``$`` would also accept a trailing newline, ``\\w`` any script).
images.yaml and the inventory are checked against these when they are read; render checks the
lock's values again, since a lock is a file anyone can edit.
"""

from __future__ import annotations

import re

from kiln import refs

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}", re.ASCII)  # image and environment names
ROLE = re.compile(r"[a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?", re.ASCII)
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
HOSTNAME_MAX = 253  # RFC 1123 / 1035: the whole name, dots included
PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?", re.ASCII)
SHA256_HEX = re.compile(r"[0-9a-f]{64}", re.ASCII)
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
DIGEST = IMAGE_ID  # a manifest or index digest: the same shape as an image ID
COUNT = re.compile(r"0|[1-9][0-9]{0,17}", re.ASCII)
# The layers' compression: kiln's zstd or gzip, or a copied image's as served.
COMPRESSION = re.compile(r"zstd|gzip|none|mixed", re.ASCII)
# A registry host: DNS labels or a bracketed IPv6 address, an optional port.
REGISTRY = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?", re.ASCII)
# RFC 3986 characters only: no space, quote, backslash, control character or non-ASCII.
URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/?#\-]*)?",
                 re.ASCII)
# A base URL from images.yaml (store url, endpoint): object keys are appended to it, so no
# query, fragment or shell-looking character: scheme, host, port, a plain path.
BASE_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!+,=:@%/-]*)?",
                      re.ASCII)
OBJECT_KEY = re.compile(r"[A-Za-z0-9!_.*'()/-]{1,1024}", re.ASCII)  # S3's safe characters
PREFIX = re.compile(r"(?:[A-Za-z0-9!_.*'()-]+/)*", re.ASCII)
BUCKET = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?", re.ASCII)
REGION = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?", re.ASCII)
# Credentials reach curl inside double quotes in a -K config: no quote, backslash or space.
CREDENTIAL = re.compile(r"[A-Za-z0-9/+=._~:-]{1,2048}", re.ASCII)
PACKER_SOURCE = re.compile(r"source\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.ASCII)
FILE_MODE = re.compile(r"0?[0-7]{3,4}", re.ASCII)
OWNER = re.compile(r"[a-z_][a-z0-9_-]{0,31}(?::[a-z_][a-z0-9_-]{0,31})?", re.ASCII)
# A reference as containerd stores it: distribution's grammar, nothing around it.
REFERENCE = refs.REFERENCE_RE
# ``repo@sha256:<hex>``: the digest name nodes hold beside the ref (no tag: the CRI drops it).
DIGEST_REFERENCE = re.compile(rf"{refs.NAME_PATTERN}@sha256:[0-9a-f]{{64}}", re.ASCII)
# the upstream index's digest name, when nodes hold one, else ``-``
INDEX_REFERENCE = re.compile(rf"-|{DIGEST_REFERENCE.pattern}", re.ASCII)
# A keyless signer's identity or OIDC issuer as a certificate names it: no control character.
CERTIFICATE_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,4096}")
NODE_PATH = re.compile(r"/[A-Za-z0-9._+@%=,:~/-]{0,4095}", re.ASCII)


def matches(pattern: re.Pattern[str], value: object) -> bool:
    """True when ``value`` is a string that ``pattern`` matches whole."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def hostname_ok(value: object) -> bool:
    return matches(HOSTNAME, value) and len(str(value)) <= HOSTNAME_MAX


def control_characters(text: str, allowed: str = "\t\n") -> list[str]:
    """The C0/C1 control characters, DEL, line separators and lone surrogates in ``text``."""
    bad = []
    for char in text:
        code = ord(char)
        if char in allowed:
            continue
        if (code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029)
                or 0xD800 <= code < 0xE000):
            bad.append(char)
    return bad
