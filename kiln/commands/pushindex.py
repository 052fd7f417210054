"""`push` of an image of several platforms: each platform's manifest by its digest, then one
index under the ref (kiln/indexes.py says which: the upstream's own when the lock holds all
it lists), so the registry serves each platform the manifest its nodes hold."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

from kiln import indexes, refs
from kiln.errors import KilnError
from kiln.lock import LockedImage
from kiln.ociarchive import INDEX
from kiln.publish import fetch_to
from kiln.registry import Registry, RegistryError
from kiln.stores import Store


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def served_as_locked(entries: list[LockedImage], registry: Registry) -> bool:
    """Does the ref serve an index giving every platform the lock's manifest and image?"""
    for entry in entries:
        served = registry.served(entry.ref, entry.platform)
        if (served is None or served.index_digest is None
                or (served.manifest_digest, served.image_id)
                != (entry.manifest_digest, entry.image_id)):
            return False
    return True


def push_platform(entry: LockedImage, store: Store, registry: Registry, work: Path,
                  quiet: bool) -> bytes:
    """The platform's manifest in the registry under ``repo@digest`` (pushed from the stored
    object unless it is there already); its bytes as served."""
    by_digest = f"{refs.parse(entry.ref).repository}@{entry.manifest_digest}"
    raw = registry.manifest(by_digest)
    if raw is None:
        _say(f"kiln: {entry.name}: pushing {by_digest} ({entry.platform}) from {entry.key}",
             quiet)
        archive = work / f"{entry.sha256}.tar"
        with store.open_read(entry.key) as stream:
            fetch_to(stream, entry.sha256, archive)
        registry.push(archive, by_digest)
        archive.unlink()
        raw = registry.manifest(by_digest)
    if raw is None or indexes.digest_of(raw) != entry.manifest_digest:
        raise RegistryError(f"after the push {by_digest} is not served")
    return raw


def upstream_index(entries: list[LockedImage], store: Store) -> bytes | None:
    """The upstream index as stored at bake (None: built, or baked by an older kiln)."""
    entry = next((e for e in entries if e.index_key and e.index_digest), None)
    if entry is None or entry.index_key is None or entry.index_digest is None:
        return None
    with store.open_read(entry.index_key) as stream:
        data = stream.read()
    if "sha256:" + hashlib.sha256(data).hexdigest() != entry.index_digest:
        raise KilnError(f"the stored index {entry.index_key} is not {entry.index_digest}")
    return data


def push_several(entries: list[LockedImage], store: Store, registry: Registry,
                 quiet: bool) -> str:
    """Push an image of several platforms; "present" when the registry served it already."""
    ref, name = entries[0].ref, entries[0].name
    if served_as_locked(entries, registry):
        _say(f"kiln: {name}: {ref} already served as an index of "
             f"{', '.join(e.platform for e in entries)}", quiet)
        return "present"
    with tempfile.TemporaryDirectory(prefix="kiln-push-") as folder:
        work = Path(folder)
        held: list[indexes.Held] = []
        blobs = work / "layout/blobs/sha256"
        blobs.mkdir(parents=True)
        for entry in entries:
            raw = push_platform(entry, store, registry, work, quiet)
            assert entry.manifest_digest is not None
            media = str(json.loads(raw).get("mediaType") or INDEX)
            held.append(indexes.Held(entry.platform, entry.manifest_digest, len(raw), media))
            (blobs / entry.manifest_digest[7:]).write_bytes(raw)
        chosen = indexes.to_serve(upstream_index(entries, store), held)
        if chosen.lacking:
            _say(f"kiln: warning: {name}: the upstream index {entries[0].index_digest} also "
                 f"lists {', '.join(chosen.lacking)}, which the lock does not hold: the "
                 f"registry serves kiln's index of {', '.join(h.platform for h in held)} "
                 f"({indexes.digest_of(chosen.data)}) under {ref}", quiet)
        digest = indexes.digest_of(chosen.data)
        (blobs / digest[7:]).write_bytes(chosen.data)
        media = json.loads(chosen.data).get("mediaType") or INDEX
        (work / "layout/oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (work / "layout/index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": media, "digest": digest, "size": len(chosen.data),
             "annotations": {"org.opencontainers.image.ref.name": "image"}}]}))
        _say(f"kiln: {name}: pushing {ref} as the index {digest}"
             f"{' (the upstream one)' if chosen.upstream else ''}", quiet)
        registry.push_index(work / "layout", ref)
    if registry.digest(ref) != digest or not served_as_locked(entries, registry):
        raise RegistryError(f"after the push {ref} is not the index {digest}")
    return "pushed"
