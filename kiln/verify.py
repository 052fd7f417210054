"""Check a containerd against the lock: is every image where kubelet will look for it?

A node is right when each image of its role is in namespace k8s.io under its exact ref and
under ``repo@sha256:<manifest digest>`` (the name the CRI resolves a digest-pinned reference
against), both on the lock's manifest, whose config is the lock's image ID; both pinned so
the CRI never garbage-collects them, and both carrying the CRI plugin's managed label (kubelet
only sees what the CRI plugin has taken in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kiln import platforms
from kiln.lock import Lock, LockedImage, images_for_roles
from kiln.ports import (
    K8S_NAMESPACE,
    MANAGED_LABEL,
    NAME_LABEL,
    OWNER_LABEL,
    PIN_LABEL,
    Containerd,
    ContainerdImage,
)

PRESENT = "present"
MISSING = "missing"
WRONG_ID = "wrong-image-id"
WRONG_DIGEST = "wrong-digest"
MISSING_DIGEST_REF = "missing-digest-ref"
MISSING_PLATFORM = "missing-platform"  # the lock has the image for other platforms only
NOT_PINNED = "not-pinned"
NOT_VISIBLE = "not-visible-to-cri"
STALE_PIN = "stale-pin"  # kiln pinned it for this environment; the lock no longer lists it


@dataclass(frozen=True)
class NodeImage:
    name: str
    ref: str
    state: str
    want: str  # the lock's image ID
    found: str | None  # the image ID containerd has under the ref, if any
    detail: str
    digest: str | None = None  # the lock's manifest digest
    found_digest: str | None = None  # the manifest containerd has under the ref, if any

    @property
    def ok(self) -> bool:
        return self.state == PRESENT


def verify_node(lock: Lock, client: Containerd, roles: Sequence[str] = (),
                platform: str | None = None) -> list[NodeImage]:
    """Each image a node of ``roles`` (every role's: none given) and ``platform`` gets, as
    containerd holds it, then the stale pins: names kiln pinned for this environment that
    such a node no longer gets (the node's roles are all of them: a name of a role not given
    counts as stale)."""
    k8s = client.images(K8S_NAMESPACE)
    others: dict[str, dict[str, ContainerdImage]] | None = None
    ours, lacking = platforms.for_platform(images_for_roles(lock, roles or None), platform)
    refs = {i.name: i.ref for i in lock.images}
    out = [NodeImage(name, refs[name], MISSING_PLATFORM, "", None,
                     f"the lock has no image for this node's platform {platform}")
           for name in lacking]
    for image in ours:
        found = k8s.get(image.ref)
        if found is None:
            if others is None:
                others = {ns: client.images(ns) for ns in client.namespaces()
                          if ns != K8S_NAMESPACE}
            where = [ns for ns, refs in others.items() if image.ref in refs]
            if where:
                out.append(NodeImage(image.name, image.ref, NOT_VISIBLE, image.image_id, None,
                                     f"in namespace {', '.join(where)}; kubelet only sees "
                                     f"{K8S_NAMESPACE}", image.manifest_digest))
            else:
                out.append(NodeImage(image.name, image.ref, MISSING, image.image_id, None,
                                     "not in containerd", image.manifest_digest))
            continue
        have = client.image_id(K8S_NAMESPACE, found.manifest_digest, image.platform)
        state, detail = _judge(image, found, have, k8s.get(image.digest_ref or ""),
                               k8s.get(image.index_ref or ""))
        out.append(NodeImage(image.name, image.ref, state, image.image_id, have, detail,
                             image.manifest_digest, found.manifest_digest))
    return out + stale_pins(lock, k8s, roles)


def stale_pins(lock: Lock, k8s: dict[str, ContainerdImage], roles: Sequence[str] = ()
               ) -> list[NodeImage]:
    """Names the importer pinned for this environment that the lock (for ``roles``) no longer
    lists: an earlier release's, which kubelet's image GC can never reclaim while pinned. The
    importer releases them after its next successful run."""
    listed = {n for i in images_for_roles(lock, roles or None)
              for n in (i.ref, i.digest_ref, i.index_ref)}
    everywhere = {n: i for i in lock.images for n in (i.ref, i.digest_ref, i.index_ref) if n}
    return [NodeImage("", name, STALE_PIN, "", None, _stale_why(lock, everywhere.get(name)),
                      None, found.manifest_digest)
            for name, found in sorted(k8s.items())
            if found.labels.get(OWNER_LABEL) == lock.environment
            and found.labels.get(NAME_LABEL) == name
            and found.labels.get(PIN_LABEL) == "pinned" and name not in listed]


def _stale_why(lock: Lock, other: LockedImage | None) -> str:
    if other is None:
        return (f"pinned by kiln for {lock.environment}, no longer in the lock: the next import "
                "run releases it")
    return (f"pinned by kiln for {lock.environment}; the lock lists it for role "
            f"{', '.join(other.roles)} only: give every role of this node (--role, repeated), "
            "or the next import run releases it")


def _judge(image: LockedImage, found: ContainerdImage, have: str,
           by_digest: ContainerdImage | None, by_index: ContainerdImage | None
           ) -> tuple[str, str]:
    """The state of an image present under its ref, and why."""
    if have != image.image_id:
        return WRONG_ID, f"the ref resolves to {have}, the lock says {image.image_id}"
    if found.manifest_digest != image.manifest_digest:
        return WRONG_DIGEST, (f"the ref is manifest {found.manifest_digest}, the lock says "
                              f"{image.manifest_digest} (the same image from another archive: "
                              "a digest-pinned reference misses it)")
    if by_digest is None or by_digest.manifest_digest != image.manifest_digest:
        return MISSING_DIGEST_REF, (f"no {image.digest_ref}: a digest-pinned reference "
                                    "misses the cache")
    if image.index_ref and (by_index is None or by_index.manifest_digest != image.index_digest):
        return MISSING_DIGEST_REF, (f"no {image.index_ref}: a chart pinning the upstream index "
                                    "digest misses the cache")
    names = (found, by_digest, *((by_index,) if by_index else ()))
    if any(n.labels.get(MANAGED_LABEL) != "managed" for n in names):
        return NOT_VISIBLE, (f"no {MANAGED_LABEL}=managed label: the CRI has not taken it in "
                             "(is the CRI plugin enabled?)")
    if any(n.labels.get(PIN_LABEL) != "pinned" for n in names):
        unpinned = ", ".join(n.ref for n in names if n.labels.get(PIN_LABEL) != "pinned")
        return NOT_PINNED, f"no {PIN_LABEL}=pinned label on {unpinned}: kubelet's image GC " \
                           "may delete it"
    also = " and ".join(n for n in (image.digest_ref, image.index_ref) if n)
    return PRESENT, f"pinned, also as {also}"


def as_dicts(found: list[NodeImage]) -> list[dict[str, object]]:
    return [{**asdict(f), "ok": f.ok} for f in found]
