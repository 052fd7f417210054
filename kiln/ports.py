"""Ports: the small interfaces the core asks of each edge, and the values that cross them.

The adapters live at the edges (kiln/engine.py: the Docker SDK; kiln/upstream.py: skopeo for
images copied as served; kiln/containerd.py: `ctr`; kiln/stores/: the object stores, whose
port is kiln/stores/__init__.py) and are imported only by the commands that need them. Tests
hand fakes to the core through these Protocols.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kiln.errors import KilnError
from kiln.model import ArchiveSource, BuildSource

K8S_NAMESPACE = "k8s.io"  # the containerd namespace kubelet (through the CRI) sees
PIN_LABEL = "io.cri-containerd.pinned"
MANAGED_LABEL = "io.cri-containerd.image"
OWNER_LABEL = "io.kiln.environment"  # the node importer's, on every name it pins
LOCK_LABEL = "io.kiln.lock"  # the sha256 of the lock the name was last pinned from
NAME_LABEL = "io.kiln.name"  # the name itself: a `ctr images tag` copy keeps labels, not names
ADOPTED_LABEL = "io.kiln.pinned-before"  # on a name someone else had pinned before kiln did


# -- the image engine (build, pull, load, export) --------------------------------------------


class EngineError(KilnError):
    """The engine is unreachable, or refused a build, pull, load or export."""


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    size: int  # uncompressed bytes of all layers (the export is about this big)
    platform: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]


class Engine(Protocol):
    def build(self, source: BuildSource, ref: str, platform: str) -> str: ...

    def load(self, source: ArchiveSource, ref: str) -> str: ...

    def tag(self, image_id: str, ref: str) -> None: ...

    def inspect(self, ref: str) -> ImageInfo | None: ...

    def export(self, ref: str) -> Iterator[bytes]: ...


# -- upstream registries and OCI archives, copied as they are ---------------------------------


class UpstreamError(KilnError):
    """A registry or archive could not be read or copied (unreachable, denied, not found)."""


class Upstream(Protocol):
    def manifest(self, ref: str) -> bytes:
        """The manifest or index ``ref`` resolves to, byte for byte as the registry serves it."""
        ...

    def config(self, ref: str) -> bytes:
        """The config blob of the image manifest ``ref`` (``repo@sha256:…``), as served."""
        ...

    def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                   compression: tuple[str, int] | None = None) -> None:
        """``ref`` (``repo@sha256:<manifest digest>``) as served, into the OCI layout folder
        ``layout``: manifest, config and compressed layers byte for byte. ``cancel`` set ends
        the copy (Cancelled). ``compression`` (algorithm, level): the opt-in recompression
        instead (kiln's manifest, the upstream's config)."""
        ...

    def copy_archive(self, archive: Path, layout: Path, cancel: threading.Event | None = None,
                     platform: str | None = None) -> None:
        """The image of the OCI archive ``archive`` into ``layout``, byte for byte; of an
        archive holding an index, its ``platform`` image."""
        ...

    def copy_signature(self, repository: str, tag: str, layout: Path,
                       cancel: threading.Event | None = None) -> bool:
        """A signature artifact (cosign's ``sha256-H.sig`` tag) as served, into ``layout``;
        False when the registry has no such tag."""
        ...


class SignatureChecks(Protocol):
    """The cryptography of upstream signatures (kiln/signing.py: openssl); kiln/provenance.py
    and kiln/keyless.py decide what is checked against what."""

    def verifies(self, data: bytes, signature: bytes, public_key: Path) -> bool:
        """Does ``signature`` (DER) of sha256(``data``) verify with the PEM key file?"""
        ...

    def verifies_spki(self, data: bytes, signature: bytes, public_key: bytes) -> bool:
        """The same with the key as DER SubjectPublicKeyInfo (a certificate's key)."""
        ...

    def chains(self, leaf: bytes, intermediates: Sequence[bytes], root: bytes, at: int
               ) -> str | None:
        """Why the DER certificate ``leaf`` does not chain to the DER ``root`` through
        ``intermediates`` with every certificate valid at ``at`` (seconds since the epoch);
        None: it does."""
        ...


# -- a node's containerd ------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerdImage:
    ref: str
    manifest_digest: str
    labels: dict[str, str]


class Containerd(Protocol):
    def namespaces(self) -> list[str]: ...

    def images(self, namespace: str) -> dict[str, ContainerdImage]: ...

    def image_id(self, namespace: str, manifest_digest: str, platform: str) -> str: ...
