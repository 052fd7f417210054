"""Pull sources and OCI archives are copied as served: bake with a fake upstream, no engine."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.bake import BakeError, Baker
from kiln.lock import Rebound
from kiln.ociarchive import describe
from kiln.ports import UpstreamError
from kiln.progress import PlainReporter
from kiln.rebind import RebindRefused
from kiln.stores.directory import DirectoryStore
from tests.helpers import image_index, registry_image, write_layout, write_tree

UP = "upstream.example.com/dexidp/dex"
REF = "registry.example.com/foundation/dex:v1"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class NoEngine:
    """Copied images never reach an engine: any call fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked to {name}")


class FakeUpstream:
    """A registry (reference -> the bytes it serves) and skopeo's copies out of it."""

    def __init__(self) -> None:
        self.served: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.tamper: bytes | None = None  # a copy whose first layer holds these bytes instead

    def push(self, reference: str, manifest: bytes, blobs: dict[str, bytes]) -> str:
        repository = reference.rsplit(":", 1)[0]
        self.served[reference] = self.served[f"{repository}@{digest(manifest)}"] = manifest
        self.blobs.update(blobs)
        return digest(manifest)

    def manifest(self, ref: str) -> bytes:
        self.calls.append(("manifest", ref))
        if ref not in self.served:
            raise UpstreamError(f"cannot read {ref}: manifest unknown")
        return self.served[ref]

    def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                   compression: tuple[str, int] | None = None) -> None:
        assert compression is None  # as served
        self.calls.append(("copy", ref))
        manifest = self.served[ref]
        blobs = {d: b for d, b in self.blobs.items() if d[7:] in manifest.decode() or
                 d == digest(manifest)}
        if self.tamper is not None:
            layer = json.loads(manifest)["layers"][0]["digest"]
            blobs[layer] = self.tamper
        write_layout(layout, manifest, blobs)

    def copy_archive(self, archive: Path, layout: Path,
                     cancel: threading.Event | None = None,
                     platform: str | None = None) -> None:
        self.calls.append(("archive", archive.name))
        with tarfile.open(archive) as tar:
            tar.extractall(layout, filter="data")


def project(tmp_path: Path, source: str) -> Path:
    write_tree(tmp_path, {"images.yaml": f"""
        version: 1
        images:
          - {{name: dex, ref: "{REF}", {source}}}
        environments:
          dev:
            registry: registry.example.com
            store: {{type: dir, path: store}}
            compression: {{algorithm: zstd, level: 3}}
        """})
    return tmp_path


def bake(folder: Path, upstream: FakeUpstream, rebind: tuple[str, ...] = ()) -> lockfile.Lock:
    cfg = config_mod.load(folder / "images.yaml")
    env = cfg.environment("dev")
    assert isinstance(env.store, config_mod.DirStore)
    baker = Baker(cfg, env, NoEngine(), DirectoryStore(env.store),  # type: ignore[arg-type]
                  PlainReporter(io.StringIO()), folder / "dist", upstream=upstream,
                  rebind=frozenset(rebind))
    return baker.run().lock


def stored_members(folder: Path, key: str) -> dict[str, bytes]:
    with tarfile.open(folder / "store" / key) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore


def test_a_pull_source_is_stored_byte_for_byte_without_an_engine(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    manifest, blobs = registry_image(b"dex " * 1000)
    manifest_digest = upstream.push(f"{UP}:v2.41.1", manifest, blobs)
    folder = project(tmp_path, f'pull: "{UP}:v2.41.1"')
    (image,) = bake(folder, upstream).images
    config_digest = json.loads(manifest)["config"]["digest"]
    assert (image.image_id, image.manifest_digest, image.index_digest) == (
        config_digest, manifest_digest, None)
    assert image.digest_ref == f"registry.example.com/foundation/dex@{manifest_digest}"
    # the layers are the upstream's gzip ones: the environment's zstd -3 is not applied
    assert (image.compression, image.compression_level) == ("gzip", lockfile.AS_SERVED)
    assert upstream.calls == [("manifest", f"{UP}:v2.41.1"),
                              ("copy", f"{UP}@{manifest_digest}")]
    members = stored_members(folder, image.key)
    for blob_digest, data in blobs.items():  # manifest (indented as served), config, layer
        assert members[f"blobs/sha256/{blob_digest[7:]}"] == data
    (archived,) = describe((folder / "store" / image.key).open("rb"))
    assert (archived.ref, archived.image_id, archived.manifest_digest) == (
        REF, config_digest, manifest_digest)
    index = json.loads(members["index.json"])["manifests"][0]
    assert index["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert index["annotations"]["io.containerd.image.name"] == REF
    on_disk = lockfile.read(folder / "dist/dev/images.lock.json")
    assert on_disk is not None and on_disk.images == (image,)


def test_a_pinned_source_is_checked_and_an_air_gapped_rebake_asks_no_registry(
        tmp_path: Path) -> None:
    upstream = FakeUpstream()
    manifest, blobs = registry_image(b"pinned")
    pinned = upstream.push(f"{UP}:v1", manifest, blobs)
    folder = project(tmp_path, f'pull: "{UP}:v1@{pinned}"')
    (image,) = bake(folder, upstream).images
    assert image.manifest_digest == pinned
    assert upstream.calls[0] == ("manifest", f"{UP}@{pinned}")  # the tag is informative
    before = (folder / "dist/dev/images.lock.json").read_bytes()
    offline = FakeUpstream()  # no registry at all: every lookup would fail
    bake(folder, offline)
    assert offline.calls == []
    assert (folder / "dist/dev/images.lock.json").read_bytes() == before


def test_a_registry_that_serves_other_bytes_than_the_pin_is_refused(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    manifest, _ = registry_image(b"wanted")
    pinned = digest(manifest)
    other, other_blobs = registry_image(b"something else")
    upstream.push(f"{UP}:v1", other, other_blobs)
    upstream.served[f"{UP}@{pinned}"] = other  # a mirror or proxy that lies
    folder = project(tmp_path, f'pull: "{UP}:v1@{pinned}"')
    with pytest.raises(BakeError, match=rf"image 'dex': {UP}:v1@{pinned}: the registry served "
                                        rf"{digest(other)}, not the pinned {pinned}$"):
        bake(folder, upstream)
    assert [p for p in (folder / "store").rglob("*") if p.is_file()] == []
    assert not (folder / "dist/dev/images.lock.json").exists()


def test_an_unpinned_rebake_copies_only_when_the_tag_moved(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    first = upstream.push(f"{UP}:v1", *registry_image(b"one"))
    folder = project(tmp_path, f'pull: "{UP}:v1"')
    bake(folder, upstream)
    upstream.calls.clear()
    (image,) = bake(folder, upstream).images
    assert upstream.calls == [("manifest", f"{UP}:v1")] and image.manifest_digest == first
    moved = upstream.push(f"{UP}:v1", *registry_image(b"two"))
    # the upstream tag moved: binding the same ref to it is refused, nothing written ...
    lock_file = folder / "dist/dev/images.lock.json"
    before = lock_file.read_bytes()
    objects = sorted((folder / "store").rglob("*"))
    with pytest.raises(RebindRefused, match=f"is bound to {first} in the lock; this bake "
                                            f"made {moved}"):
        bake(folder, upstream)
    assert lock_file.read_bytes() == before
    assert sorted((folder / "store").rglob("*")) == objects  # what it stored, taken away
    # ... unless the user moves it on purpose: the lock remembers
    ref = image.ref
    (image,) = (lock := bake(folder, upstream, rebind=(ref,))).images
    assert upstream.calls[-1] == ("copy", f"{UP}@{moved}") and image.manifest_digest == moved
    assert lock.history == (Rebound(ref, first, moved),)


def test_an_index_gives_its_platform_manifest_and_its_own_digest(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    amd64, amd64_blobs = registry_image(b"amd64")
    arm64, arm64_blobs = registry_image(b"arm64", arch="arm64")
    upstream.push(f"{UP}:amd64", amd64, amd64_blobs)
    upstream.push(f"{UP}:arm64", arm64, arm64_blobs)
    index = image_index([(arm64, "linux/arm64"), (amd64, "linux/amd64")])
    index_digest = upstream.push(f"{UP}:v1", index, {})
    folder = project(tmp_path, f'pull: "{UP}:v1@{index_digest}"')
    (image,) = bake(folder, upstream).images
    assert (image.manifest_digest, image.index_digest) == (digest(amd64), index_digest)
    assert upstream.calls[-1] == ("copy", f"{UP}@{digest(amd64)}")
    # pinned by its index digest, the air-gapped rebake needs no registry either
    offline = FakeUpstream()
    assert bake(folder, offline).images == (image,) and offline.calls == []

    only_arm = upstream.push(f"{UP}:arm", image_index([(arm64, "linux/arm64")]), {})
    other = project(tmp_path / "other", f'pull: "{UP}:arm@{only_arm}"')
    with pytest.raises(BakeError, match=r"its index sha256:\w+ has no linux/amd64 image \(it "
                                        r"lists linux/arm64\)"):
        bake(other, upstream)


def test_the_upstream_index_is_stored_as_served_and_an_older_lock_gains_it_once(
        tmp_path: Path) -> None:
    upstream = FakeUpstream()
    amd64, amd64_blobs = registry_image(b"amd64")
    upstream.push(f"{UP}:amd64", amd64, amd64_blobs)
    index = image_index([(amd64, "linux/amd64")])
    index_digest = upstream.push(f"{UP}:v1", index, {})
    folder = project(tmp_path, f'pull: "{UP}:v1@{index_digest}"')
    (image,) = bake(folder, upstream).images
    assert image.index_key == f"blobs/sha256/{index_digest[7:]}"
    assert (folder / "store" / image.index_key).read_bytes() == index  # push serves it again
    assert image.index_size == len(index)
    lock_file = folder / "dist/dev/images.lock.json"
    stored = lock_file.read_bytes()
    # a lock an older kiln wrote (no index stored): the pinned rebake asks the registry once
    older = json.loads(stored)
    for entry in older["images"]:
        del entry["index_key"], entry["index_size"]
    lock_file.write_text(json.dumps(older))
    (folder / "store" / image.index_key).unlink()
    asked = FakeUpstream()
    asked.served, asked.blobs = upstream.served, upstream.blobs
    bake(folder, asked)
    assert asked.calls == [("manifest", f"{UP}@{index_digest}")]  # nothing copied again
    assert lock_file.read_bytes() == stored
    offline = FakeUpstream()
    bake(folder, offline)
    assert offline.calls == [] and lock_file.read_bytes() == stored


def test_the_object_names_the_index_for_nodes_only_when_push_serves_it(tmp_path: Path) -> None:
    """Nodes hold repo@<index digest> when the image is baked for every platform the index
    lists (push serves that very index); for one platform of it, or part of it, they do not;
    an entry of an older kiln (index_named absent) is made again; when the tag moves to
    another index (or off an index) the object is made again, never kept with a stale name."""
    upstream = FakeUpstream()
    amd64, amd64_blobs = registry_image(b"amd64")
    arm64, arm64_blobs = registry_image(b"arm64", "arm64")
    s390x, s390x_blobs = registry_image(b"s390x", "s390x")
    for tag, (manifest, blobs) in {"amd": (amd64, amd64_blobs), "arm": (arm64, arm64_blobs),
                                   "s390x": (s390x, s390x_blobs)}.items():
        upstream.push(f"{UP}:{tag}", manifest, blobs)
    index = image_index([(amd64, "linux/amd64"), (arm64, "linux/arm64")])
    index_digest = upstream.push(f"{UP}:v1", index, {})
    both = 'pull: "' + UP + ':v1", platforms: [linux/amd64, linux/arm64]'
    folder = project(tmp_path, both)
    images = bake(folder, upstream).images
    assert [i.index_named for i in images] == [True, True]
    repo = REF.rsplit(":", 1)[0]
    assert {i.index_ref for i in images} == {f"{repo}@{index_digest}"}
    with tarfile.open(folder / "store" / images[0].key) as tar:
        listed = json.loads(tar.extractfile("index.json").read())["manifests"]  # type: ignore
        assert tar.extractfile(f"blobs/sha256/{index_digest[7:]}").read() == index  # type: ignore
    assert {(m["digest"], m["annotations"]["io.containerd.image.name"]) for m in listed} == {
        (digest(amd64), REF), (index_digest, f"{repo}@{index_digest}")}
    lock_file = folder / "dist/dev/images.lock.json"
    stored = lock_file.read_text()
    assert bake(folder, upstream).images == images and lock_file.read_text() == stored

    # an older kiln's lock (its objects hold no index): the next bake makes them again
    older = json.loads(stored)
    for entry in older["images"]:
        del entry["index_named"]
    lock_file.write_text(json.dumps(older))
    upstream.calls.clear()
    assert bake(folder, upstream).images == images
    assert ("copy", f"{UP}@{digest(amd64)}") in upstream.calls
    assert lock_file.read_text() == stored

    # the tag moves to an index of three platforms, amd64 and arm64 unchanged: the lock's
    # platforms are no longer all it lists, so the objects are made again, naming nothing
    bigger = image_index([(amd64, "linux/amd64"), (arm64, "linux/arm64"),
                          (s390x, "linux/s390x")])
    bigger_digest = upstream.push(f"{UP}:v1", bigger, {})
    moved = bake(folder, upstream).images
    assert [(i.index_digest, i.index_named, i.index_ref) for i in moved] == [
        (bigger_digest, False, None)] * 2
    assert all(i.key != j.key for i, j in zip(moved, images, strict=True))
    with tarfile.open(folder / "store" / moved[0].key) as tar:
        names = json.loads(tar.extractfile("index.json").read())["manifests"]  # type: ignore
    assert [m["digest"] for m in names] == [digest(amd64)]
    text = lock_file.read_text()
    assert bake(folder, upstream).images == moved and lock_file.read_text() == text  # stable

    # one platform of an index: push serves its manifest, so no index name either
    one = project(tmp_path / "one", f'pull: "{UP}:v1"')
    (single,) = bake(one, upstream).images
    assert (single.index_digest, single.index_named, single.index_ref) == (
        bigger_digest, False, None)
    # the tag moves off the index to the manifest itself: made again, a lock that reads
    upstream.push(f"{UP}:v1", amd64, amd64_blobs)
    (plain,) = bake(one, upstream).images
    assert (plain.index_digest, plain.index_named) == (None, None)
    assert lockfile.read(one / "dist/dev/images.lock.json").images == (plain,)


def test_an_image_of_another_platform_is_refused(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    upstream.push(f"{UP}:v1", *registry_image(b"arm", arch="arm64"))
    folder = project(tmp_path, f'pull: "{UP}:v1"')
    with pytest.raises(BakeError, match=r"is a linux/arm64 image; images.yaml asks for "
                                        r"linux/amd64"):
        bake(folder, upstream)


def test_a_copied_layer_that_is_not_its_digest_stores_nothing(tmp_path: Path) -> None:
    upstream = FakeUpstream()
    manifest, blobs = registry_image(b"layer")
    upstream.push(f"{UP}:v1", manifest, blobs)
    layer = json.loads(manifest)["layers"][0]
    upstream.tamper = bytes(layer["size"])  # same size, other bytes
    folder = project(tmp_path, f'pull: "{UP}:v1"')
    with pytest.raises(BakeError, match=rf"layer {layer['digest']} of {REF} holds "
                                        rf"{digest(bytes(layer['size']))}"):
        bake(folder, upstream)
    assert [p for p in (folder / "store").rglob("*") if p.is_file()] == []


def test_an_oci_archive_keeps_its_digests(tmp_path: Path) -> None:
    manifest, blobs = registry_image(b"vendor")
    layout = write_layout(tmp_path / "layout", manifest, blobs)
    folder = project(tmp_path / "p", "archive: vendor.tar")
    with tarfile.open(folder / "vendor.tar", "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, str(path.relative_to(layout)), recursive=False)
    shutil.rmtree(layout)
    upstream = FakeUpstream()
    (image,) = bake(folder, upstream).images
    assert upstream.calls == [("archive", "vendor.tar")]
    assert (image.manifest_digest, image.image_id, image.source, image.upstream) == (
        digest(manifest), json.loads(manifest)["config"]["digest"], "archive", None)
    assert stored_members(folder, image.key)[f"blobs/sha256/{digest(manifest)[7:]}"] == manifest


def test_skopeo_errors_become_one_line_without_their_frame() -> None:
    from kiln.upstream import reason

    stderr = ('time="2026-11-28T17:15:34Z" level=fatal msg="Error parsing image name '
              '\\"docker://r.example/x@sha256:00\\": pinging container registry r.example: '
              'Get \\"https://r.example/v2/\\": x509: certificate signed by unknown authority"\n')
    assert reason(stderr) == ('pinging container registry r.example: Get "https://r.example/'
                              'v2/": x509: certificate signed by unknown authority')
    assert reason("warning\nplain last line\n") == "plain last line"
    assert reason("") == "failed"


def test_diff_never_calls_a_copied_image_recompressed(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Its layers are as served (gzip here), the environment says zstd -3: nothing to do."""
    from kiln.cli import main

    upstream = FakeUpstream()
    upstream.push(f"{UP}:v1", *registry_image(b"as served"))
    folder = project(tmp_path, f'pull: "{UP}:v1"')
    bake(folder, upstream)
    capsys.readouterr()
    assert main(["diff", "--env", "dev", "--config", str(folder / "images.yaml"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == []
