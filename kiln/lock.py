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

from kiln import grammar, refs
from kiln.errors import KilnError
from kiln.files import write_atomic

# 4: one entry per image and platform (`name` + `platform` unique), each with its own object,
# image ID and manifest digest; the entries of one pulled image share its `index_digest`.
# 3: each image records its manifest digest per platform (what containerd records, and the
# `repo@sha256:` name nodes hold) and the upstream's index digest where there is one.
# 2: objects are OCI archives with compressed layers, no digests recorded (re-stored by bake).
# 1: compressed `docker save` archives.
LOCK_VERSION = 4
AS_SERVED = 0  # compression_level of layers copied as served: not kiln's, never recompressed


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
    compression: str  # of the layers inside: "zstd" or "gzip" (copied: also "none", "mixed")
    compression_level: int  # AS_SERVED (0) for a copied image's layers
    key: str  # object key in the store
    roles: tuple[str, ...]  # empty: every role
    source: str  # build | pull | archive
    upstream: str | None = None  # pull: the upstream ref (with digest); archive: its sha256
    inputs: str | None = None  # build: digest of its inputs (kiln/buildinputs.py); else absent
    # platform -> the digest of the manifest the stored object holds for it: the upstream's for
    # a pull source (copied as served), kiln's for what it built or converted. An image of
    # several platforms has one entry (and one object) per platform: each maps its own.
    manifest_digests: tuple[tuple[str, str], ...] = ()
    index_digest: str | None = None  # pull: the upstream index the manifest was picked from
    # that index as served, stored (its sha256 is the index digest): `push` serves it again
    index_key: str | None = None
    index_size: int | None = None
    # the stored object holds that index too, named repo@<index digest>: nodes hold that name
    # (a chart pinning the index digest hits their cache); only when `push` serves that index
    # (every platform it lists is baked). False: not named; None: no index, or an older kiln
    index_named: bool | None = None
    # pull with `verify: {key}`: the key that signed it (sha256 of its DER), the signature
    # artifact's manifest digest, and the digest it signs (the index's or the manifest's)
    signed_by: str | None = None
    signature: str | None = None
    signed: str | None = None
    # the signature artifact, stored (an OCI archive `push` sends to the registry as is)
    signature_key: str | None = None
    signature_sha256: str | None = None
    signature_size: int | None = None
    # keyless (kiln/keyless.py): `signed_by` is then the Fulcio root's sha256 (DER); the
    # certificate's identity and OIDC issuer, the Rekor key (sha256 of its DER: the logID) and
    # when Rekor logged the signature (integratedTime, seconds since the epoch)
    signer_identity: str | None = None
    signer_issuer: str | None = None
    logged_by: str | None = None
    logged_at: int | None = None

    @property
    def manifest_digest(self) -> str | None:
        """The manifest digest of the image's own platform (None before a bake recorded it)."""
        return dict(self.manifest_digests).get(self.platform)

    @property
    def digest_ref(self) -> str | None:
        """``repo@sha256:<manifest digest>``: the second name nodes hold, the one the CRI
        resolves a digest-pinned reference (``repo@sha256:…``, ``repo:tag@sha256:…``) against."""
        digest = self.manifest_digest
        try:
            return None if digest is None else f"{refs.parse(self.ref).repository}@{digest}"
        except refs.ReferenceError:
            return None  # a ref kiln would not write (render refuses it by name)

    @property
    def index_unnamed(self) -> bool:
        """An object of an older kiln, picked from an index it says nothing of: made again."""
        return self.index_digest is not None and self.index_named is None

    @property
    def index_ref(self) -> str | None:
        """``repo@sha256:<index digest>``: the third name nodes hold when the stored object
        names the upstream index (a chart pinning the index digest resolves against it)."""
        if not self.index_named or self.index_digest is None:
            return None
        try:
            return f"{refs.parse(self.ref).repository}@{self.index_digest}"
        except refs.ReferenceError:
            return None


@dataclass(frozen=True)
class Rebound:
    """A ref moved on purpose (`bake --rebind REF`): from the old content to the new."""

    ref: str
    old: str  # manifest digest (or image ID) the ref was bound to
    new: str


@dataclass(frozen=True)
class Lock:
    environment: str
    registry: str
    images: tuple[LockedImage, ...] = ()
    version: int = LOCK_VERSION
    store: dict[str, str] = field(default_factory=dict)  # non-secret store facts for render
    history: tuple[Rebound, ...] = ()  # rebinds, oldest first (kiln/rebind.py)

    def image(self, name: str, platform: str | None = None) -> LockedImage | None:
        """The entry of image ``name`` for ``platform`` (None: its first platform's)."""
        return next((i for i in self.images if i.name == name
                     and (platform is None or i.platform == platform)), None)

    def platforms(self, name: str) -> tuple[str, ...]:
        """The platforms the lock holds image ``name`` for."""
        return tuple(i.platform for i in self.images if i.name == name)


def lock_path(dist: Path, env: str) -> Path:
    return dist / env / "images.lock.json"


def to_json(lock: Lock) -> str:
    data: dict[str, Any] = {
        "version": lock.version,
        "environment": lock.environment,
        "registry": lock.registry,
        "store": dict(sorted(lock.store.items())),
        "images": [_plain(asdict(i)) for i in sorted(lock.images, key=entry_key)],
    }
    if lock.history:  # written only once a ref was moved: other locks read as before
        data["history"] = [asdict(r) for r in lock.history]
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def entry_key(image: LockedImage) -> tuple[str, str]:
    """The order of the lock's entries, and what is unique in it: name, then platform."""
    return image.name, image.platform


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in entry.items()
           if not (k in OPTIONAL and v is None)}
    out["manifest_digests"] = dict(sorted((p, d) for p, d in entry["manifest_digests"]))
    return out


# written only when set: a lock without them reads as before
OPTIONAL = {"inputs", "signed_by", "signature", "signed", "signature_key", "signature_sha256",
            "signature_size", "index_key", "index_size", "index_named", "signer_identity",
            "signer_issuer", "logged_by", "logged_at"}


def from_json(text: str, where: str = "lock") -> Lock:
    try:
        data = json.loads(text)
        if isinstance(data.get("version"), int) and data["version"] < LOCK_VERSION:
            raise OldLock(f"{where} was written by an older kiln (lock version "
                          f"{data['version']}); bake this environment again to re-store its "
                          "images in the current format")
        if data.get("version") != LOCK_VERSION:
            raise KilnError(f"{where}: unsupported lock version {data.get('version')!r}")
        images = tuple(_checked(_entry(i), where) for i in data["images"])
        seen: set[tuple[str, str]] = set()
        for image in images:
            if entry_key(image) in seen:
                raise KilnError(f"{where}: image {image.name!r} is listed twice for "
                                f"{image.platform} (edited by hand?)")
            seen.add(entry_key(image))
        # a "bundles" list (older kilns) is not read: no node used one; object_names still
        # names their keys
        return Lock(environment=data["environment"], registry=data["registry"],
                    images=images, store=dict(data.get("store", {})),
                    history=tuple(_rebound(r, where) for r in data.get("history", [])))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise KilnError(f"{where}: not a kiln lock file ({type(exc).__name__}: {exc})") from None


def _entry(item: dict[str, Any]) -> LockedImage:
    digests = item["manifest_digests"]
    if not isinstance(digests, dict):
        raise TypeError(f"manifest_digests is a {type(digests).__name__}, not a mapping")
    return LockedImage(**{**item, "roles": tuple(item["roles"]),
                          "manifest_digests": tuple(sorted(digests.items()))})


def _rebound(item: dict[str, Any], where: str) -> Rebound:
    entry = Rebound(str(item["ref"]), str(item["old"]), str(item["new"]))
    if not (grammar.matches(grammar.REFERENCE, entry.ref) and grammar.matches(
            grammar.DIGEST, entry.old) and grammar.matches(grammar.DIGEST, entry.new)):
        raise KilnError(f"{where}: history entry {item!r:.200} is not what kiln writes "
                        "(edited by hand?)")
    return entry


def node_digests(image: LockedImage) -> tuple[str, ...]:
    """The digests a chart may pin for ``image`` (``ref@sha256:…`` or ``repo@sha256:…``): a
    node holds ``repo@sha256:<d>`` for each, so kubelet finds it in the cache: the manifest
    digest of the entry's platform and, when its object names it, the upstream index's."""
    held = (image.manifest_digest, image.index_digest if image.index_ref else None)
    return tuple(d for d in held if d is not None)


def _content_address(sha256: object) -> re.Pattern[str]:
    """The only key an object of ``sha256`` may have: a store prefix + blobs/sha256/<hex>."""
    return re.compile(grammar.PREFIX.pattern + "blobs/sha256/" + re.escape(str(sha256)))


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
        ("key", image.key, _content_address(image.sha256)),
        *(("roles", role, grammar.ROLE) for role in image.roles),
        *(("manifest_digests", platform, grammar.PLATFORM)
          for platform, _ in image.manifest_digests),
        *(("manifest_digests", digest, grammar.DIGEST) for _, digest in image.manifest_digests),
        *([("index_digest", image.index_digest, grammar.DIGEST)]
          if image.index_digest is not None else []),
        *([("index_key", image.index_key, re.compile(
            grammar.PREFIX.pattern + "blobs/sha256/"
            + (re.escape(image.index_digest[7:]) if image.index_digest else "(?!)")))]
          if image.index_key is not None or image.index_size is not None else []),
        *((name, value, grammar.DIGEST) for name, value in (
            ("signed_by", image.signed_by), ("signature", image.signature),
            ("signed", image.signed), ("logged_by", image.logged_by)) if value is not None),
        *((name, value, grammar.CERTIFICATE_NAME) for name, value in (
            ("signer_identity", image.signer_identity),
            ("signer_issuer", image.signer_issuer)) if value is not None),
        *([("signature_sha256", image.signature_sha256, grammar.SHA256_HEX),
           ("signature_key", image.signature_key, _content_address(image.signature_sha256))]
          if image.signature_key is not None or image.signature_sha256 is not None else []),
    ]
    for field_name, value, pattern in rules:
        if not grammar.matches(pattern, value):
            raise KilnError(f"{where}: image {str(image.name)[:64]!r}: {field_name} "
                            f"{str(value)[:100]!r} is not what kiln writes (edited by hand?)")
    if image.manifest_digest is None:
        raise KilnError(f"{where}: image {image.name!r}: no manifest digest for its platform "
                        f"{image.platform} (edited by hand?)")
    sizes: list[tuple[str, object]] = [("size", image.size),
                                       ("uncompressed_size", image.uncompressed_size)]
    if image.signature_key is not None:
        sizes.append(("signature_size", image.signature_size))
    if image.index_key is not None:
        sizes.append(("index_size", image.index_size))
    if image.logged_at is not None or image.logged_by is not None:
        sizes.append(("logged_at", image.logged_at))
    if image.index_named is not None and (not isinstance(image.index_named, bool)
                                          or image.index_digest is None):
        raise KilnError(f"{where}: image {image.name!r}: index_named {image.index_named!r} "
                        "is not what kiln writes (edited by hand?)")
    for field_name, number in sizes:
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
        out.update((str(e["signature_key"]), f"signature of image {e.get('name', '?')}")
                   for e in data.get("images", []) if e.get("signature_key"))
        out.update((str(e["index_key"]), f"index of image {e.get('name', '?')}")
                   for e in data.get("images", []) if e.get("index_key"))
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
