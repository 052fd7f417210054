"""The index push serves (kiln/indexes.py) and the lock's stored upstream index."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from kiln import lock as lockfile
from kiln.errors import KilnError
from kiln.indexes import Held, digest_of, to_serve

M = "application/vnd.oci.image.manifest.v1+json"
D = ["sha256:" + c * 64 for c in "abc"]


def upstream(*entries: tuple[str, str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType":
                       "application/vnd.docker.distribution.manifest.list.v2+json",
                       "manifests": [{"mediaType": M, "digest": d, "size": 7,
                                      "platform": {"os": "linux", "architecture": a},
                                      "annotations": {"kept": "yes"}} for d, a in entries]},
                      indent=3).encode()


def test_the_upstream_index_is_served_as_is_when_every_manifest_it_lists_is_held() -> None:
    raw = upstream((D[0], "amd64"), (D[1], "arm64"))
    chosen = to_serve(raw, [Held("linux/arm64", D[1], 7, M), Held("linux/amd64", D[0], 7, M)])
    assert (chosen.data, chosen.upstream, chosen.lacking) == (raw, True, ())


def test_a_subset_gets_kilns_index_of_the_upstream_descriptors_it_holds() -> None:
    raw = upstream((D[2], "s390x"), (D[0], "amd64"), (D[1], "arm64"))
    chosen = to_serve(raw, [Held("linux/amd64", D[0], 7, M), Held("linux/arm64", D[1], 7, M)])
    doc = json.loads(chosen.data)
    assert not chosen.upstream and chosen.lacking == ("linux/s390x",)
    assert doc["mediaType"] == json.loads(raw)["mediaType"]
    assert doc["manifests"] == json.loads(raw)["manifests"][1:]  # verbatim, upstream order
    again = to_serve(raw, [Held("linux/arm64", D[1], 7, M), Held("linux/amd64", D[0], 7, M)])
    assert digest_of(again.data) == digest_of(chosen.data)  # deterministic


def test_what_kiln_built_gets_one_descriptor_per_platform_sorted() -> None:
    chosen = to_serve(None, [Held("linux/arm/v7", D[1], 9, M), Held("linux/amd64", D[0], 8, M)])
    doc = json.loads(chosen.data)
    assert [(m["digest"], m["size"], m["platform"]) for m in doc["manifests"]] == [
        (D[0], 8, {"os": "linux", "architecture": "amd64"}),
        (D[1], 9, {"os": "linux", "architecture": "arm", "variant": "v7"})]
    assert chosen.lacking == () and not chosen.upstream


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"manifests": 3}',
                                 b'{"schemaVersion": 2, "manifests": ["x"]}'])
def test_a_stored_index_that_is_not_one_is_refused_in_a_line(raw: bytes) -> None:
    with pytest.raises(KilnError, match="not an index"):
        to_serve(raw, [Held("linux/amd64", D[0], 7, M)])


def entry(**extra: object) -> dict[str, object]:
    return {"name": "app", "ref": "r.example.com/app:v1", "image_id": D[0],
            "platform": "linux/amd64", "sha256": "d" * 64, "size": 1, "uncompressed_size": 1,
            "compression": "gzip", "compression_level": 0, "key": "blobs/sha256/" + "d" * 64,
            "roles": [], "source": "pull", "manifest_digests": {"linux/amd64": D[1]}, **extra}


def lock_text(*entries: dict[str, object]) -> str:
    return json.dumps({"version": lockfile.LOCK_VERSION, "environment": "dev",
                       "registry": "r.example.com", "images": list(entries)})


def test_the_stored_index_is_in_the_lock_and_kept_by_prune() -> None:
    text = lock_text(entry(index_digest=D[2], index_key="blobs/sha256/" + "c" * 64,
                           index_size=40))
    image = lockfile.from_json(text).images[0]
    assert (image.index_key, image.index_size) == ("blobs/sha256/" + "c" * 64, 40)
    assert lockfile.object_names(text)["blobs/sha256/" + "c" * 64] == "index of image app"
    assert lockfile.from_json(lockfile.to_json(lockfile.from_json(text))) == \
        lockfile.from_json(text)
    assert "index_key" not in lockfile.to_json(lockfile.from_json(lock_text(entry())))


@pytest.mark.parametrize("extra", [
    {"index_digest": D[2], "index_key": "blobs/sha256/" + "a" * 64, "index_size": 4},
    {"index_digest": D[2], "index_key": "../../etc/passwd", "index_size": 4},
    {"index_key": "blobs/sha256/", "index_size": 4},
    {"index_digest": D[2], "index_key": "blobs/sha256/" + "c" * 64, "index_size": -1},
    {"index_digest": D[2], "index_key": "blobs/sha256/" + "c" * 64},
    {"index_digest": D[2], "index_named": "yes"}, {"index_digest": D[2], "index_named": 1},
    {"index_named": True},
])
def test_an_index_key_that_is_not_the_index_digests_address_is_refused(
        extra: dict[str, object]) -> None:
    """(and an index_named that is not kiln's: a bool, beside an index digest)"""
    with pytest.raises(KilnError, match=r"edited by hand|not a size"):
        lockfile.from_json(lock_text(entry(**extra)))


def _tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_push_hands_skopeo_the_image_alone_and_refuses_what_kiln_did_not_write(
        tmp_path: Path) -> None:
    from kiln.registry import RegistryError, one_image

    image = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D[1]}
    index = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": D[2]}
    both = json.dumps({"schemaVersion": 2, "manifests": [image, index]}).encode()
    archive = _tar(tmp_path / "a.tar", [("oci-layout", b"{}"), ("blobs/sha256/x", b"blob"),
                                        ("index.json", both)])
    one_image(archive)
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["oci-layout", "blobs/sha256/x", "index.json"]
        listed = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        assert listed["manifests"] == [image]
        assert tar.extractfile("blobs/sha256/x").read() == b"blob"  # type: ignore[union-attr]
    untouched = archive.read_bytes()
    one_image(archive)  # one image already: as it is
    assert archive.read_bytes() == untouched
    for bad in ([("oci-layout", b"{}")], [("index.json", None)],
                [("index.json", both), ("index.json", both)], [("index.json", b"[1]")],
                [("index.json", b"{not json")]):
        with pytest.raises(RegistryError, match=r"a\.tar: not"):
            one_image(_tar(tmp_path / "a.tar", bad))
