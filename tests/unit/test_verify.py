"""verify_node's verdicts, with a fake containerd."""

from __future__ import annotations

from kiln.containerd import ContainerdImage
from kiln.lock import Lock, LockedImage
from kiln.verify import (
    MISSING,
    MISSING_DIGEST_REF,
    NOT_PINNED,
    NOT_VISIBLE,
    PRESENT,
    WRONG_DIGEST,
    WRONG_ID,
    verify_node,
)


def locked(name: str, n: int, roles: tuple[str, ...] = ()) -> LockedImage:
    return LockedImage(name, f"r.example.com/f/{name}:v1", f"sha256:{n}", "linux/amd64", "s", 1,
                       2, "zstd", 1, "k", roles, "build",
                       manifest_digests=(("linux/amd64", f"m{n}"),))


LOCK = Lock("dev", "r.example.com", images=(
    locked("a", 1), locked("b", 2), locked("c", 3), locked("d", 4), locked("e", 5),
    locked("w", 6, ("worker",)), locked("g", 7), locked("h", 8), locked("u", 9)))
GOOD = {"io.cri-containerd.image": "managed", "io.cri-containerd.pinned": "pinned"}


def both(name: str, manifest: str, labels: dict[str, str], digest_labels: dict[str, str] | None
         = None) -> dict[str, ContainerdImage]:
    """The ref and its digest name, as the importer leaves them."""
    ref = f"r.example.com/f/{name}:v1"
    digest_ref = f"r.example.com/f/{name}@{manifest}"
    return {ref: ContainerdImage(ref, manifest, labels),
            digest_ref: ContainerdImage(digest_ref, manifest,
                                        labels if digest_labels is None else digest_labels)}


class Fake:
    def __init__(self) -> None:
        self.spaces = {
            "k8s.io": {
                **both("a", "m1", GOOD),
                **both("b", "m9", GOOD),  # another image under the ref
                **both("c", "m3", {"io.cri-containerd.image": "managed"}),
                **both("w", "m6", GOOD),
                # the same image (config sha256:7) under another manifest: a docker save import
                **both("g", "m7-resaved", GOOD),
                # the ref alone: an older kiln's import, no digest name
                "r.example.com/f/h:v1": ContainerdImage("r.example.com/f/h:v1", "m8", GOOD),
                **both("u", "m9", GOOD, {"io.cri-containerd.image": "managed"}),
            },
            "default": {"r.example.com/f/d:v1": ContainerdImage("r.example.com/f/d:v1", "m4",
                                                                {})},
        }

    def namespaces(self) -> list[str]:
        return list(self.spaces)

    def images(self, namespace: str) -> dict[str, ContainerdImage]:
        return self.spaces[namespace]

    def image_id(self, namespace: str, manifest_digest: str, platform: str) -> str:
        return f"sha256:{manifest_digest[1:].removesuffix('-resaved')}"


def test_every_state_is_named() -> None:
    found = {f.name: f for f in verify_node(LOCK, Fake())}
    assert found["a"].state == PRESENT and found["a"].ok
    assert "r.example.com/f/a@m1" in found["a"].detail
    assert found["b"].state == WRONG_ID and found["b"].found == "sha256:9"
    assert found["c"].state == NOT_PINNED
    assert found["d"].state == NOT_VISIBLE and "namespace default" in found["d"].detail
    assert found["e"].state == MISSING
    assert found["g"].state == WRONG_DIGEST and found["g"].found_digest == "m7-resaved"
    assert found["h"].state == MISSING_DIGEST_REF and "r.example.com/f/h@m8" in found["h"].detail
    # the ref pinned, the digest name not: kubelet's GC may still take the record
    assert found["u"].state == NOT_PINNED
    assert "f/u@m9" in found["u"].detail and "f/u:v1" not in found["u"].detail
    fake = Fake()
    fake.spaces["k8s.io"]["r.example.com/f/a:v1"] = ContainerdImage(
        "r.example.com/f/a:v1", "m1", {"io.cri-containerd.pinned": "pinned"})
    (a,) = [f for f in verify_node(LOCK, fake) if f.name == "a"]
    assert a.state == NOT_VISIBLE and "managed" in a.detail


def test_role_selects_images() -> None:
    names = [f.name for f in verify_node(LOCK, Fake(), ("control-plane",))]
    assert names == ["a", "b", "c", "d", "e", "g", "h", "u"]
    assert "w" in [f.name for f in verify_node(LOCK, Fake(), ("worker",))]


def test_a_node_of_several_roles_names_them_all() -> None:
    """A name kiln pinned for a role the node was not checked for is stale only if the node
    lacks that role: give every role, and nothing is stale; give one, and the detail says why."""
    def kilns(name: str) -> dict[str, str]:
        return {**GOOD, "io.kiln.environment": "dev", "io.kiln.name": name}

    lock = Lock("dev", "r.example.com", images=(locked("a", 1), locked("w", 6, ("worker",)),
                                                 locked("c", 3, ("control-plane",))))
    fake = Fake()
    for name, found in both("c", "m3", GOOD).items():
        fake.spaces["k8s.io"][name] = ContainerdImage(name, found.manifest_digest, kilns(name))
    stale = [f for f in verify_node(lock, fake, ("worker", "control-plane"))
             if f.state == "stale-pin"]
    assert stale == []
    stale = [f for f in verify_node(lock, fake, ("worker",)) if f.state == "stale-pin"]
    assert [f.ref for f in stale] == ["r.example.com/f/c:v1", "r.example.com/f/c@m3"]
    assert "for role control-plane only" in stale[0].detail and "--role" in stale[0].detail


def test_stale_pins_are_kilns_own_only() -> None:
    """A name the importer pinned for this environment that the lock no longer lists is a
    stale pin; a copy of it under another name (labels copied by `ctr images tag`), another
    environment's, or an unpinned one is not."""
    from kiln.verify import STALE_PIN

    def kilns(name: str, env: str = "dev", pinned: bool = True) -> dict[str, str]:
        return {**GOOD, "io.kiln.environment": env, "io.kiln.name": name,
                **({} if pinned else {"io.cri-containerd.pinned": ""})}

    fake = Fake()
    old = "r.example.com/f/a:v0"
    fake.spaces["k8s.io"].update({
        old: ContainerdImage(old, "m0", kilns(old)),
        "r.example.com/x/copy:v1": ContainerdImage("r.example.com/x/copy:v1", "m0", kilns(old)),
        "r.example.com/f/z:v1": ContainerdImage("r.example.com/f/z:v1", "m0",
                                                kilns("r.example.com/f/z:v1", env="prod")),
        "r.example.com/f/y:v1": ContainerdImage("r.example.com/f/y:v1", "m0",
                                                kilns("r.example.com/f/y:v1", pinned=False)),
    })
    stale = [f for f in verify_node(LOCK, fake) if f.state == STALE_PIN]
    assert [(f.ref, f.ok) for f in stale] == [(old, False)]


def test_ctr_listing_with_spaces_and_commas_in_label_values() -> None:
    """`ctr images ls` aligns its columns; another tool's label value may hold a space (SIZE
    does too) or a comma: kiln's own labels are still read exactly."""
    from kiln.containerd import parse_images

    digest = "sha256:" + "a" * 64
    rows = [("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"),
            ("r.example.com/f/a:v1", "application/vnd.oci.image.manifest.v1+json", digest,
             "1.2 MiB", "linux/amd64",
             "io.cri-containerd.pinned=pinned,io.kiln.name=r.example.com/f/a:v1,"
             "zz.note=held by ops, see ticket 7"),
            ("r.example.com/f/b:v1", "application/vnd.oci.image.manifest.v1+json", digest,
             "512.0 KiB", "linux/amd64,linux/arm64", "-")]
    widths = [max(len(r[i]) for r in rows) + 1 for i in range(6)]
    text = "".join("".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + "\n" for r in rows)
    found = parse_images(text)
    assert found["r.example.com/f/a:v1"].labels == {
        "io.cri-containerd.pinned": "pinned", "io.kiln.name": "r.example.com/f/a:v1",
        "zz.note": "held by ops, see ticket 7"}
    assert found["r.example.com/f/a:v1"].manifest_digest == digest
    assert found["r.example.com/f/b:v1"].labels == {}
