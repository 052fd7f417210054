"""Which lock entry a bake of a copied image (pull or OCI archive) may keep as it is: the
previous lock's, when it holds the same content under the same ref and its object is intact
(core: the store is asked through ``intact``).

The stored object of an image picked out of an upstream index names that index on nodes
(``repo@sha256:<index digest>``) only when the registry will serve that very index after
`push`: the image is baked for every platform the index lists (kiln/copied.py
``index_to_name``). So an entry is kept only when its index digest, and whether its object
names it, are what this bake would make; an entry of an earlier kiln (``index_named``
absent) is made again.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln import provenance, refs
from kiln.lock import Lock, LockedImage
from kiln.model import Image, PullSource, Verify

Intact = Callable[[str, str, int], bool]  # key, sha256, size: the store still holds it


def pinned_in_lock(previous: Lock | None, image: Image, env_verify: Verify | None,
                   intact: Intact) -> LockedImage | None:
    """The lock's entry when the pull source is pinned by a digest the lock holds (as the
    index or the manifest digest), for the same platforms, and the object is intact: no
    registry is asked."""
    source = image.source
    old = previous.image(image.name, image.platform) if previous else None
    pinned = refs.parse(source.ref).digest if isinstance(source, PullSource) else None
    policy = provenance.policy_for(source, env_verify) if isinstance(source, PullSource) else None
    if policy is not None and policy.checked and (
            old is None or not provenance.trusted_in_lock(old, policy)):
        return None  # verified under another policy, or never: ask the registry
    if (pinned is None or old is None or previous is None or old.source != source.kind
            or old.ref != image.ref or old.platform != image.platform
            or pinned not in (old.index_digest, old.manifest_digest) or old.index_unnamed
            or set(previous.platforms(image.name)) != set(image.platforms)):
        return None  # (other platforms: whether nodes get the index's name may change)
    index_kept = old.index_digest is None or (  # else (an older kiln): ask once
        old.index_key is not None and intact(old.index_key, old.index_digest[7:],
                                             old.index_size or 0))
    return old if index_kept and intact(old.key, old.sha256, old.size) else None


def reusable_copy(previous: Lock | None, image: Image, manifest_digest: str,
                  index_digest: str | None, named: bool, intact: Intact) -> LockedImage | None:
    """The lock's entry when it holds this very manifest, picked from the same index (or from
    none) and named on nodes as this bake would, under the same ref, intact."""
    old = previous.image(image.name, image.platform) if previous else None
    if (old is None or old.source != image.source.kind or old.ref != image.ref
            or old.platform != image.platform or old.manifest_digest != manifest_digest
            or old.index_digest != index_digest
            or (index_digest is not None and old.index_named is not named)):
        return None
    return old if intact(old.key, old.sha256, old.size) else None
