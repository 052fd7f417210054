"""Image references: the distribution grammar and containerd's normalisation.

The grammar is distribution/reference's (regexp.go); the normalisation is what
containerd's CRI plugin and kubelet apply before they look an image up
(``ParseNormalizedNamed`` + ``TagNameOnly``, and ``ParseDockerRef`` dropping the
tag of a reference that also has a digest).  kiln's promise rests on one test:
a reference is *fully qualified* when normalising it changes nothing, so the
string in images.yaml is the string containerd stores and kubelet asks for.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:({_DOMAIN})/)?({_REMOTE_NAME})"

NAME_PATTERN = _NAME  # a repository (domain/path), as a regular expression's source
REFERENCE_RE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_REFERENCE_RE = REFERENCE_RE
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_HEX_RE = re.compile(r"^[a-f0-9]+$")


class ReferenceError(ValueError):
    """A string that is not a valid image reference; the message says why."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``domain`` is None when the string named none."""

    domain: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """``domain/path``, or just the path when there is no domain."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse(text: str) -> Reference:
    """Parse ``text`` exactly as written (no defaults added); raise ReferenceError."""
    if not isinstance(text, str):
        raise ReferenceError(f"a reference must be a string, not {type(text).__name__}")
    if text == "":
        raise ReferenceError("repository name must have at least one component")
    match = _REFERENCE_RE.fullmatch(text)
    if match is None:
        if _REFERENCE_RE.fullmatch(text.lower()) is not None:
            raise ReferenceError(f"repository name must be lowercase: {text!r}")
        raise ReferenceError(f"invalid reference format: {text!r}")
    name, domain, path, tag, digest = match.groups()
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError(
            f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    if digest is not None:
        _validate_digest(digest)
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _validate_digest(digest: str) -> None:
    algorithm, _, hexpart = digest.partition(":")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise ReferenceError(f"unsupported digest algorithm: {algorithm!r}")
    if len(hexpart) != expected or not _DIGEST_HEX_RE.fullmatch(hexpart):
        raise ReferenceError(
            f"invalid digest: {algorithm} needs {expected} lowercase hex digits"
        )


def split_domain(text: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: the registry a short name resolves to, and the rest."""
    first, slash, _ = text.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, text
    else:
        domain, remainder = first, text[len(first) + 1 :]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def normalize(text: str) -> Reference:
    """The reference containerd stores for ``text`` (what kubelet asks the CRI for).

    ``nginx`` -> ``docker.io/library/nginx:latest``; ``repo/x`` -> ``docker.io/repo/x:latest``;
    a reference with both tag and digest keeps only the digest (containerd's ParseDockerRef).
    """
    if not isinstance(text, str):
        raise ReferenceError(f"a reference must be a string, not {type(text).__name__}")
    return _normalized(text)


@functools.lru_cache(maxsize=4096)
def _normalized(text: str) -> Reference:
    # remembered: lint compares each chart string with every declared image, and charts
    # repeat the same few strings thousands of times
    if _IDENTIFIER_RE.fullmatch(text):
        raise ReferenceError(
            f"invalid repository name ({text}): cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = split_domain(text)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise ReferenceError(f"repository name must be lowercase: {remote!r}")
    ref = parse(f"{domain}/{remainder}")
    if ref.digest is not None:
        return Reference(ref.domain, ref.path, None, ref.digest)
    if ref.tag is None:
        return Reference(ref.domain, ref.path, DEFAULT_TAG, None)
    return ref


def is_fully_qualified(text: str) -> bool:
    """True when containerd would store ``text`` unchanged (False for invalid input)."""
    try:
        return str(normalize(text)) == text
    except ReferenceError:
        return False
