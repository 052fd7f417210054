"""verify_node's verdicts, with a fake containerd."""

from __future__ import annotations

from kiln.containerd import ContainerdImage
from kiln.lock import Lock, LockedImage
from kiln.verify import MISSING, NOT_PINNED, NOT_VISIBLE, PRESENT, WRONG_ID, verify_node


def locked(name: str, n: int, roles: tuple[str, ...] = ()) -> LockedImage:
    return LockedImage(name, f"r.example.com/f/{name}:v1", f"sha256:{n}", "linux/amd64", "s", 1,
                       2, "zstd", 1, "k", roles, "build")


LOCK = Lock("dev", "r.example.com", images=(
    locked("a", 1), locked("b", 2), locked("c", 3), locked("d", 4), locked("e", 5),
    locked("w", 6, ("worker",))))
GOOD = {"io.cri-containerd.image": "managed", "io.cri-containerd.pinned": "pinned"}


class Fake:
    def __init__(self) -> None:
        self.spaces = {
            "k8s.io": {
                "r.example.com/f/a:v1": ContainerdImage("r.example.com/f/a:v1", "m1", GOOD),
                "r.example.com/f/b:v1": ContainerdImage("r.example.com/f/b:v1", "m9", GOOD),
                "r.example.com/f/c:v1": ContainerdImage(
                    "r.example.com/f/c:v1", "m3", {"io.cri-containerd.image": "managed"}),
                "r.example.com/f/w:v1": ContainerdImage("r.example.com/f/w:v1", "m6", GOOD),
            },
            "default": {"r.example.com/f/d:v1": ContainerdImage("r.example.com/f/d:v1", "m4",
                                                                {})},
        }

    def namespaces(self) -> list[str]:
        return list(self.spaces)

    def images(self, namespace: str) -> dict[str, ContainerdImage]:
        return self.spaces[namespace]

    def image_id(self, namespace: str, manifest_digest: str, platform: str) -> str:
        return f"sha256:{manifest_digest[1:]}"


def test_every_state_is_named() -> None:
    found = {f.name: f for f in verify_node(LOCK, Fake())}
    assert found["a"].state == PRESENT and found["a"].ok
    assert found["b"].state == WRONG_ID and found["b"].found == "sha256:9"
    assert found["c"].state == NOT_PINNED
    assert found["d"].state == NOT_VISIBLE and "namespace default" in found["d"].detail
    assert found["e"].state == MISSING
    fake = Fake()
    fake.spaces["k8s.io"]["r.example.com/f/a:v1"] = ContainerdImage(
        "r.example.com/f/a:v1", "m1", {"io.cri-containerd.pinned": "pinned"})
    (a,) = [f for f in verify_node(LOCK, fake) if f.name == "a"]
    assert a.state == NOT_VISIBLE and "managed" in a.detail


def test_role_selects_images() -> None:
    names = [f.name for f in verify_node(LOCK, Fake(), "control-plane")]
    assert names == ["a", "b", "c", "d", "e"]
    assert "w" in [f.name for f in verify_node(LOCK, Fake(), "worker")]
