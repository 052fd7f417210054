"""The index `push` serves for an image of several platforms (core: no edge imported).

A registry (docker-registry here, and the distribution spec's others) refuses an index that
names a manifest it does not hold (`MANIFEST_BLOB_UNKNOWN`, measured). So the upstream index
is served byte for byte (the same index digest as upstream) only when the lock holds every
manifest it lists; otherwise (the lock holds a subset of the platforms, or the images were
built) kiln writes an index of the manifests it holds: the upstream's descriptors of them, in
the upstream's order, or for what kiln built one descriptor per platform, sorted. Either way
each platform's manifest digest is the one the nodes hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kiln.errors import KilnError
from kiln.manifests import INDEX_TYPES, is_index
from kiln.ociarchive import INDEX


@dataclass(frozen=True)
class Held:
    """One platform's manifest the registry holds (pushed by digest) for an image."""

    platform: str  # os/arch[/variant]
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ToServe:
    data: bytes  # the index, as the registry will serve it
    upstream: bool  # the upstream's own bytes (its digest is the lock's index_digest)
    lacking: tuple[str, ...]  # what the upstream index lists that the lock does not hold


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _platform(platform: str) -> dict[str, str]:
    os_name, arch, *variant = platform.split("/")
    return {"architecture": arch, "os": os_name, **({"variant": variant[0]} if variant else {})}


def _listed(entry: dict[str, Any]) -> str:
    plat = entry.get("platform") or {}
    found = "/".join(str(plat.get(k)) for k in ("os", "architecture", "variant") if plat.get(k))
    return found or str(entry.get("digest", "?"))[:19]


def to_serve(upstream: bytes | None, held: list[Held]) -> ToServe:
    """The index to serve for the manifests ``held``, given the upstream index as served (None
    for what kiln built or converted)."""
    if upstream is not None:
        try:
            doc = json.loads(upstream)
            entries = [e for e in doc["manifests"] if isinstance(e, dict)]
            if not is_index(doc) or len(entries) != len(doc["manifests"]):
                raise ValueError("not an index")
        except (ValueError, KeyError, TypeError) as exc:
            raise KilnError(f"the stored upstream index is not an index ({exc})") from None
        mine = {h.digest for h in held}
        lacking = tuple(_listed(e) for e in entries if e.get("digest") not in mine)
        if not lacking:
            return ToServe(upstream, True, ())
        kept = [e for e in entries if e.get("digest") in mine]
        if {e.get("digest") for e in kept} == mine:
            media = doc.get("mediaType") if doc.get("mediaType") in INDEX_TYPES else INDEX
            return ToServe(_json({"schemaVersion": 2, "mediaType": media, "manifests": kept}),
                           False, lacking)
    return ToServe(_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": h.media_type, "digest": h.digest, "size": h.size,
         "platform": _platform(h.platform)} for h in sorted(held, key=lambda h: h.platform)]}),
        False, ())


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
