"""The lock file (contract): what was baked, under which name, stored where.

``dist/<env>/images.lock.json``: sorted, stable (no timestamps), written atomically, so an
unchanged bake rewrites it byte for byte.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln import grammar
from kiln.errors import KilnError
from kiln.files import write_atomic

# 2: objects are OCI archives with compressed layers (1: compressed `docker save` archives).
# Still 2 without "bundles" (kiln wrote `"bundles": []` or a list until they were removed): a
# lock with or without the key reads in either kiln, so nothing forces a re-store.
LOCK_VERSION = 2


class OldLock(KilnError):
    """A lock from an older kiln: its objects are in a format this kiln no longer ships."""


@dataclass(frozen=True)
class LockedImage:
    name: str
    ref: str  # the literal fully-qualified string
    image_id: str  # config digest: the same in Docker, containerd and any registry copy
    platform: str
    sha256: str  # of the stored object: an OCI archive (kiln/ociarchive.py)
    size: int
    uncompressed_size: int  # of the engine's `docker save` archive
    compression: str  # of the layers inside: "zstd" or "gzip"
    compression_level: int
    key: str  # object key in the store
    roles: tuple[str, ...]  # empty: every role
    source: str  # build | pull | archive
    upstream: str | None = None  # pull: the upstream ref (with digest); archive: its sha256
    inputs: str | None = None  # build: digest of its inputs (kiln/buildinputs.py); else absent


@dataclass(frozen=True)
class Lock:
    environment: str
    registry: str
    images: tuple[LockedImage, ...] = ()
    version: int = LOCK_VERSION
    store: dict[str, str] = field(default_factory=dict)  # non-secret store facts for render

    def image(self, name: str) -> LockedImage | None:
        return next((i for i in self.images if i.name == name), None)


def lock_path(dist: Path, env: str) -> Path:
    return dist / env / "images.lock.json"


def to_json(lock: Lock) -> str:
    data = {
        "version": lock.version,
        "environment": lock.environment,
        "registry": lock.registry,
        "store": dict(sorted(lock.store.items())),
        "images": [_plain(asdict(i)) for i in sorted(lock.images, key=lambda i: i.name)],
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in entry.items()
            if not (k in OPTIONAL and v is None)}


OPTIONAL = {"inputs"}  # written only when set: a lock without them reads as before


def from_json(text: str, where: str = "lock") -> Lock:
    try:
        data = json.loads(text)
        if isinstance(data.get("version"), int) and data["version"] < LOCK_VERSION:
            raise OldLock(f"{where} was written by an older kiln (lock version "
                          f"{data['version']}); bake this environment again to re-store its "
                          "images in the current format")
        if data.get("version") != LOCK_VERSION:
            raise KilnError(f"{where}: unsupported lock version {data.get('version')!r}")
        images = tuple(
            _checked(LockedImage(**{**i, "roles": tuple(i["roles"])}), where)
            for i in data["images"]
        )
        # a "bundles" list (older kilns) is not read: no node used one; object_names still
        # names their keys
        return Lock(environment=data["environment"], registry=data["registry"],
                    images=images, store=dict(data.get("store", {})))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise KilnError(f"{where}: not a kiln lock file ({type(exc).__name__}: {exc})") from None


def _checked(image: LockedImage, where: str) -> LockedImage:
    """A lock is a file anyone can edit: each value must have the shape kiln writes. The key
    above all: it is exactly the content address of the sha256 (a bake may replace or delete
    the object at that key; `../x` or another prefix's object must never be one)."""
    rules: list[tuple[str, object, re.Pattern[str]]] = [
        ("name", image.name, grammar.NAME), ("ref", image.ref, grammar.REFERENCE),
        ("image_id", image.image_id, grammar.IMAGE_ID), ("sha256", image.sha256,
                                                        grammar.SHA256_HEX),
        ("platform", image.platform, grammar.PLATFORM),
        ("compression", image.compression, grammar.COMPRESSION),
        ("key", image.key, re.compile(grammar.PREFIX.pattern + "blobs/sha256/"
                                      + re.escape(str(image.sha256)))),
        *(("roles", role, grammar.ROLE) for role in image.roles),
    ]
    for field_name, value, pattern in rules:
        if not grammar.matches(pattern, value):
            raise KilnError(f"{where}: image {str(image.name)[:64]!r}: {field_name} "
                            f"{str(value)[:100]!r} is not what kiln writes (edited by hand?)")
    for field_name, number in (("size", image.size), ("uncompressed_size",
                                                      image.uncompressed_size)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise KilnError(f"{where}: image {image.name!r}: {field_name} {number!r} is not a "
                            "size")
    return image


def object_keys(text: str, where: str = "lock") -> set[str]:
    """The store keys a lock of any version names: what a prune must keep."""
    return set(object_names(text, where))


def object_names(text: str, where: str = "lock") -> dict[str, str]:
    """Each store key a lock of any version names, with what names it ("image dex"). The
    bundles older locks list are named too: a prune keeps them while any lock names them."""
    try:
        data = json.loads(text)
        out = {str(e["key"]): f"image {e.get('name', '?')}" for e in data.get("images", [])}
        out.update((str(b["key"]), f"bundle {b.get('role', '?')}")
                   for b in data.get("bundles", []))
        return out
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise KilnError(f"{where}: not a kiln lock file ({type(exc).__name__}: {exc})") from None


def read(path: Path) -> Lock | None:
    """The lock at ``path``, or None when there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KilnError(f"cannot read {path}: {exc.strerror}") from None
    return from_json(text, str(path))


def write(path: Path, lock: Lock) -> None:
    try:
        write_atomic(path, to_json(lock).encode())
    except OSError as exc:
        raise KilnError(f"cannot write {path}: {exc.strerror or exc}") from None


def node_roles(role: str | None) -> tuple[str, ...] | None:
    """The roles of a node named by one ``--role`` option (None without one: every image)."""
    return (role,) if role else None


def images_for_roles(lock: Lock, roles: Iterable[str] | None) -> list[LockedImage]:
    """The lock's images a node with ``roles`` gets (None: all of them): the one role rule
    (an image without roles goes to every node)."""
    if roles is None:
        return list(lock.images)
    wanted = set(roles)
    return [i for i in lock.images if not i.roles or wanted & set(i.roles)]
