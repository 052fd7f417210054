"""Check a containerd against the lock: is every image where kubelet will look for it?

A node is right when each image of its role is in namespace k8s.io under its exact ref,
resolves to the lock's image ID (the config digest; never compare manifest digests), is pinned
so the CRI never garbage-collects it, and carries the CRI plugin's managed label (kubelet only
sees what the CRI plugin has taken in).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kiln.lock import Lock, images_for_roles, node_roles
from kiln.ports import K8S_NAMESPACE, MANAGED_LABEL, PIN_LABEL, Containerd, ContainerdImage

PRESENT = "present"
MISSING = "missing"
WRONG_ID = "wrong-image-id"
NOT_PINNED = "not-pinned"
NOT_VISIBLE = "not-visible-to-cri"


@dataclass(frozen=True)
class NodeImage:
    name: str
    ref: str
    state: str
    want: str  # the lock's image ID
    found: str | None  # the image ID containerd has under the ref, if any
    detail: str

    @property
    def ok(self) -> bool:
        return self.state == PRESENT


def verify_node(lock: Lock, client: Containerd, role: str | None = None) -> list[NodeImage]:
    k8s = client.images(K8S_NAMESPACE)
    others: dict[str, dict[str, ContainerdImage]] | None = None
    out = []
    for image in images_for_roles(lock, node_roles(role)):
        found = k8s.get(image.ref)
        if found is None:
            if others is None:
                others = {ns: client.images(ns) for ns in client.namespaces()
                          if ns != K8S_NAMESPACE}
            where = [ns for ns, refs in others.items() if image.ref in refs]
            if where:
                out.append(NodeImage(image.name, image.ref, NOT_VISIBLE, image.image_id, None,
                                     f"in namespace {', '.join(where)}; kubelet only sees "
                                     f"{K8S_NAMESPACE}"))
            else:
                out.append(NodeImage(image.name, image.ref, MISSING, image.image_id, None,
                                     "not in containerd"))
            continue
        have = client.image_id(K8S_NAMESPACE, found.manifest_digest, image.platform)
        if have != image.image_id:
            state, detail = WRONG_ID, f"the ref resolves to {have}, the lock says {image.image_id}"
        elif found.labels.get(MANAGED_LABEL) != "managed":
            state, detail = NOT_VISIBLE, f"no {MANAGED_LABEL}=managed label: the CRI has not " \
                                         "taken it in (is the CRI plugin enabled?)"
        elif found.labels.get(PIN_LABEL) != "pinned":
            state, detail = NOT_PINNED, f"no {PIN_LABEL}=pinned label: kubelet's image GC may " \
                                        "delete it"
        else:
            state, detail = PRESENT, "pinned"
        out.append(NodeImage(image.name, image.ref, state, image.image_id, have, detail))
    return out


def as_dicts(found: list[NodeImage]) -> list[dict[str, object]]:
    return [{**asdict(f), "ok": f.ok} for f in found]
