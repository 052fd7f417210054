"""The configuration model: what images.yaml says, as typed values (kiln/config.py reads it).

Core: plain dataclasses and the few rules that belong to the values themselves.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kiln.errors import UsageError

SUPPORTED_VERSION = 1
REGISTRY_PLACEHOLDER = "${registry}"
DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_MUTABLE_TAGS = (
    "latest", "main", "master", "stable", "edge", "nightly", "dev", "develop", "head", "canary",
)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
LEVELS = ("error", "warning", "off")
# The lint rules' ids (kiln/lint/rules/ holds one module each): here, so that the config
# reader validates `lint: levels:` without importing the rules.
RULE_IDS = (
    "not-fully-qualified",
    "mutable-tag",
    "registry-mismatch",
    "duplicate-ref",
    "duplicate-name",
    "unpinned-upstream",
    "chart-undeclared",
    "chart-mismatch",
    "pull-policy-always",
    "image-unresolved",
    "chart-upstream",
    "chart-unreachable",
    "chart-invalid-ref",
    "chart-digest-mismatch",
    "unverified-pull",
    "recompressed-upstream",
)
_DURATION_RE = re.compile(r"([0-9]{1,9})([smhd]?)", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Location:
    """Where a value was written: reported in lint findings."""

    path: str
    line: int
    column: int


@dataclass(frozen=True)
class PathAt:
    """A path from images.yaml (resolved against its folder) and where it was written."""

    path: Path
    at: Location


@dataclass(frozen=True)
class BuildSource:
    context: Path
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    kind: Literal["build"] = "build"


@dataclass(frozen=True)
class Keyless:
    """A keyless (Fulcio certificate + Rekor bundle) signature's policy (kiln/keyless.py)."""

    identity: str  # the certificate's subject alternative name: equal, or matching whole
    issuer: str  # its OIDC issuer (Fulcio's extension): equal, or matching whole
    roots: Path  # PEM: the trusted Fulcio root(s), maybe with their intermediates
    rekor_key: Path  # PEM public key of the Rekor log whose signed entry timestamp is checked
    identity_regexp: bool = False
    issuer_regexp: bool = False


@dataclass(frozen=True)
class Verify:
    """How a pull source's upstream signature is checked (kiln/provenance.py)."""

    key: Path | None  # a PEM public key; None: keyless, or `verify: none`
    at: Location
    keyless: Keyless | None = None  # neither key nor keyless: `verify: none` (lint says so)

    @property
    def checked(self) -> bool:
        """False for `verify: none`."""
        return self.key is not None or self.keyless is not None


@dataclass(frozen=True)
class PullSource:
    ref: str
    kind: Literal["pull"] = "pull"
    verify: Verify | None = None  # None: the environment's


@dataclass(frozen=True)
class ArchiveSource:
    path: Path
    kind: Literal["archive"] = "archive"


Source = BuildSource | PullSource | ArchiveSource


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    source: Source
    platform: str  # the platform one bake of it makes: images_for/per_platform set it
    roles: tuple[str, ...]  # empty: every role
    at: Location  # the list item
    name_at: Location
    ref_at: Location
    source_at: Location
    # `platforms:` as written (empty: the environment's); Config.images_for resolves it
    platforms: tuple[str, ...] = ()
    # pull sources: True recompresses the layers with the environment's compression (kiln's
    # manifest digest: upstream digests and signatures no longer match); None: the
    # environment's `compression: pulls`
    recompress: bool | None = None
    recompress_at: Location | None = None


@dataclass(frozen=True)
class DirStore:
    path: Path
    url: str | None = None
    type: Literal["dir"] = "dir"


@dataclass(frozen=True)
class S3Store:
    bucket: str
    endpoint: str | None = None
    prefix: str = ""
    region: str | None = None
    addressing: Literal["auto", "path", "virtual"] = "auto"
    ca_bundle: Path | None = None
    url: str | None = None
    url_mode: Literal["plain", "presigned", "sigv4"] = "presigned"
    ttl_seconds: int = 24 * 3600
    type: Literal["s3"] = "s3"


Store = DirStore | S3Store


@dataclass(frozen=True)
class NodeSettings:
    ca_bundle: Path | None = None
    # downloads at once: on a link one connection fills, each more delays the first object
    # (the first import waits for it); two keep imports fed where the store limits each
    # connection (README, The node side)
    parallel: int = 2
    user_data_limit: int = 16384
    containerd_timeout: int = 300
    # A node never hangs on the store: see README, images.yaml (node:).
    stall_timeout: int = 60  # a download slower than 1 KiB/s this long is abandoned
    import_budget: int = 1800  # seconds one importer run may spend fetching, retries included
    retries: int = 8  # download attempts per image in one run
    retry_max_delay: int = 20  # cap of the jittered exponential back-off (AWS SDKs: 20 s)
    on_import_failure: Literal["hold-kubelet", "start-kubelet"] = "hold-kubelet"


# zstd -1 already halves a typical image and compresses about twice as fast as -3 on the
# 2-core machines measured (see README, Performance); raise it per environment for WAN links.
DEFAULT_ZSTD_LEVEL = 1
DEFAULT_GZIP_LEVEL = 6


@dataclass(frozen=True)
class CloudInitSnippets:
    """User additions merged into the generated user-data."""

    write_files: tuple[dict[str, Any], ...] = ()
    runcmd: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Compression:
    algorithm: Literal["zstd", "gzip"] = "zstd"
    level: int = DEFAULT_ZSTD_LEVEL
    # pull sources: copied as served, or recompressed (an opt-in; an image's own wins)
    pulls: Literal["as-served", "recompress"] = "as-served"
    pulls_at: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LintSettings:
    levels: dict[str, str] = field(default_factory=dict)
    mutable_tags: tuple[str, ...] = DEFAULT_MUTABLE_TAGS


@dataclass(frozen=True)
class ChartRelease:
    """A ``charts:`` entry ``{chart: DIR, values: [FILE, ...]}``: one chart and its overrides."""

    chart: PathAt
    values: tuple[PathAt, ...] = ()


@dataclass(frozen=True)
class Environment:
    name: str
    registry: str
    store: Store
    node: NodeSettings
    compression: Compression
    packer_sources: tuple[str, ...]
    charts: tuple[PathAt, ...]
    lint: LintSettings
    at: Location
    registry_at: Location
    cloud_init: CloudInitSnippets = CloudInitSnippets()
    registry_ca: Path | None = None  # CA bundle of the registry, for push / verify-registry
    # a lock is trusted only if its detached signature verifies with this key (kiln/signing.py)
    lock_public_key: Path | None = None
    verify: Verify | None = None  # of pull sources that name none themselves
    releases: tuple[ChartRelease, ...] = ()  # charts linted by their effective values
    platforms: tuple[str, ...] = (DEFAULT_PLATFORM,)  # of every image that names none


@dataclass(frozen=True)
class Config:
    path: str  # as the user named it: used in messages
    root: Path  # the folder relative paths are resolved against
    version: int
    images: tuple[Image, ...]
    environments: dict[str, Environment]

    def environment(self, name: str | None) -> Environment:
        """The environment called ``name``; a missing or unknown name is a UsageError."""
        known = ", ".join(sorted(self.environments)) or "none"
        if not name:
            raise UsageError(f"--env is required; environments in {self.path}: {known}")
        try:
            return self.environments[name]
        except KeyError:
            hint = did_you_mean(name, list(self.environments))
            raise UsageError(
                f"no environment {name!r} in {self.path}{hint}; environments: {known}"
            ) from None

    def images_for(self, env: Environment) -> tuple[Image, ...]:
        """The images with ``${registry}`` replaced by the environment's registry, and their
        platforms resolved (``platform`` is the first of them)."""
        out = []
        for image in self.images:
            platforms = image.platforms or env.platforms
            out.append(replace(image, ref=image.ref.replace(REGISTRY_PLACEHOLDER, env.registry),
                               platform=platforms[0], platforms=platforms))
        return tuple(out)

    def per_platform(self, env: Environment) -> tuple[Image, ...]:
        """One entry per image and platform (``platform`` set to each): what bake makes and
        the lock records, sorted by name and platform."""
        return tuple(replace(image, platform=platform)
                     for image in self.images_for(env) for platform in image.platforms)


def recompresses(image: Image, env: Environment) -> bool:
    """Is this pull source recompressed in ``env``? Its own ``recompress``, else the
    environment's ``compression: pulls``; what is not pulled is never "recompressed" (kiln
    compresses what it builds or converts anyway)."""
    if not isinstance(image.source, PullSource):
        return False
    if image.recompress is not None:
        return image.recompress
    return env.compression.pulls == "recompress"


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_duration(value: Any) -> int | None:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``; None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return None
