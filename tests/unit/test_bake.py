"""The bake orchestration, the publish pipeline, stores and the lock, with fakes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.bake import BakeError, Baker
from kiln.config import ArchiveSource, BuildSource, Compression
from kiln.engine import EngineError, ImageInfo
from kiln.errors import Cancelled, KilnError
from kiln.ociarchive import describe
from kiln.progress import LiveReporter, PlainReporter, human
from kiln.publish import publish
from kiln.stores import blob_key
from kiln.stores.directory import DirectoryStore
from kiln.stores.s3 import MAX_PARTS, S3ObjectStore, part_size_for
from tests.helpers import docker_save, image_config, layer_tar, write_tree


class FakeEngine:
    """Images are one layer holding a payload; export writes a real `docker save` archive."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}  # image ID -> its one layer
        self.tags: dict[str, str] = {}
        self.exports: list[list[str]] = []
        self.fail: dict[str, str] = {}

    def _make(self, key: str, payload: bytes) -> str:
        if key in self.fail:
            raise EngineError(self.fail[key])
        layer = layer_tar({"payload": payload})
        image_id = "sha256:" + hashlib.sha256(image_config([layer])).hexdigest()
        self.content[image_id] = layer
        return image_id

    def build(self, source: BuildSource, ref: str, platform: str) -> str:
        return self._make(source.context.name, (source.context / "payload").read_bytes())

    def load(self, source: ArchiveSource, ref: str) -> str:
        if source.path.name in self.fail:
            raise EngineError(self.fail[source.path.name])
        data = source.path.read_bytes()
        # a `docker save` archive: its one image
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore
        (entry,) = json.loads(files["manifest.json"])
        image_id = "sha256:" + hashlib.sha256(files[entry["Config"]]).hexdigest()
        (layer,) = entry["Layers"]
        self.content[image_id] = files[layer]
        self.tags[ref] = image_id
        return image_id

    def tag(self, image_id: str, ref: str) -> None:
        self.tags[ref] = image_id

    def inspect(self, ref: str) -> ImageInfo | None:
        image_id = self.tags.get(ref) or (ref if ref in self.content else None)  # ref or ID
        if image_id is None:
            return None
        return ImageInfo(image_id, len(self.content[image_id]), "linux/amd64", (ref,), ())

    def export(self, ref: str) -> Iterator[bytes]:
        self.exports.append([ref])
        data = docker_save([(ref, [self.content[self.tags[ref]]])])
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]


IMAGES_YAML = """
version: 1
images:
  - {name: b, ref: "${registry}/f/b:v1", build: ctx-b, roles: [worker]}
  - {name: a, ref: "${registry}/f/a:v1", build: ctx-a}
  - {name: c, ref: "${registry}/f/c:v1", archive: c.tar}
environments:
  dev:
    registry: registry.example.com
    store: {type: dir, path: store}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_tree(tmp_path, {
        "images.yaml": IMAGES_YAML,
        "ctx-a/payload": "a" * 5000,
        "ctx-b/payload": "b" * 7000,
    })
    (tmp_path / "c.tar").write_bytes(
        docker_save([("vendor.example.com/c:1", [layer_tar({"payload": b"c" * 3000})])]))
    return tmp_path


def run(project: Path, engine: FakeEngine, jobs: int = 2, rebind: tuple[str, ...] = ()
        ) -> tuple[Baker, Any]:
    cfg = config_mod.load(project / "images.yaml")
    env = cfg.environment("dev")
    assert isinstance(env.store, config_mod.DirStore)
    baker = Baker(cfg, env, engine, DirectoryStore(env.store), PlainReporter(io.StringIO()),
                  project / "dist", jobs=jobs, rebind=frozenset(rebind))
    return baker, baker.run()


def test_bake_publishes_and_locks(project: Path) -> None:
    engine = FakeEngine()
    _, result = run(project, engine)
    lock = result.lock
    assert [i.name for i in lock.images] == ["a", "b", "c"]
    a = lock.images[0]
    assert a.ref == "registry.example.com/f/a:v1"
    stored = (project / "store" / a.key).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == a.sha256 and len(stored) == a.size
    (archived,) = describe(io.BytesIO(stored))
    assert (archived.ref, archived.image_id, archived.platform) == (a.ref, a.image_id,
                                                                   "linux/amd64")
    assert archived.layers[0][0] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert a.uncompressed_size > 5000
    assert lockfile.read(project / "dist/dev/images.lock.json") == lock
    assert (project / "store/locks/dev/images.lock.json").read_text() == lockfile.to_json(lock)


def test_unchanged_rebake_exports_nothing_and_rewrites_the_same_lock(project: Path) -> None:
    engine = FakeEngine()
    run(project, engine)
    before = (project / "dist/dev/images.lock.json").read_bytes()
    engine.exports.clear()
    _, result = run(project, engine)
    assert engine.exports == []
    assert result.uploaded == ()
    assert (project / "dist/dev/images.lock.json").read_bytes() == before


class CountingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.builds: list[str] = []

    def build(self, source: BuildSource, ref: str, platform: str) -> str:
        self.builds.append(ref)
        return super().build(source, ref, platform)


def test_unchanged_build_inputs_build_nothing_even_on_a_fresh_engine(project: Path) -> None:
    for folder in ("ctx-a", "ctx-b"):
        (project / folder / "Dockerfile").write_text("FROM scratch\nCOPY payload /\n")
    _, first = run(project, FakeEngine())
    assert all(i.inputs and i.inputs.startswith("sha256:")
               for i in first.lock.images if i.source == "build")
    assert next(i for i in first.lock.images if i.name == "c").inputs is None
    before = (project / "dist/dev/images.lock.json").read_bytes()
    assert b'"inputs": null' not in before  # only build entries carry it
    fresh = CountingEngine()  # a new machine: nothing in the engine, the objects in the store
    run(project, fresh)
    assert fresh.builds == [] and fresh.exports == []
    assert (project / "dist/dev/images.lock.json").read_bytes() == before
    # a changed input builds that image again (new content under the same ref: a rebind)
    (project / "ctx-a/payload").write_text("changed")
    fresh.exports.clear()
    run(project, fresh, rebind=("registry.example.com/f/a:v1",))
    assert fresh.builds == ["registry.example.com/f/a:v1"]
    assert fresh.exports == [["registry.example.com/f/a:v1"]]


def test_a_lock_without_inputs_still_reads_and_gains_them(project: Path) -> None:
    for folder in ("ctx-a", "ctx-b"):
        (project / folder / "Dockerfile").write_text("FROM scratch\nCOPY payload /\n")
    engine = FakeEngine()
    run(project, engine)
    path = project / "dist/dev/images.lock.json"
    old = "\n".join(line for line in path.read_text().splitlines() if '"inputs"' not in line)
    path.write_text(old + "\n")
    lock = lockfile.read(path)
    assert lock is not None and {i.inputs for i in lock.images} == {None}
    engine.exports.clear()
    _, result = run(project, engine)
    assert engine.exports == []  # same image IDs: nothing stored again, inputs recorded
    assert all(i.inputs for i in result.lock.images if i.source == "build")


def test_a_changed_image_or_setting_is_exported_again(project: Path) -> None:
    engine = FakeEngine()
    run(project, engine)
    (project / "ctx-a/payload").write_text("changed")
    engine.exports.clear()
    run(project, engine, rebind=("registry.example.com/f/a:v1",))
    assert engine.exports == [["registry.example.com/f/a:v1"]]
    text = (project / "images.yaml").read_text().replace(
        "path: store}\n", "path: store}\n    compression: {algorithm: gzip, level: 9}\n")
    (project / "images.yaml").write_text(text)
    engine.exports.clear()
    # other layer bytes: the same image ID under another manifest digest, so every ref moves
    _, result = run(project, engine, rebind=tuple(
        f"registry.example.com/f/{n}:v1" for n in "abc"))
    assert len(engine.exports) == 3
    assert {i.compression for i in result.lock.images} == {"gzip"}


def test_a_deleted_object_is_published_again(project: Path) -> None:
    engine = FakeEngine()
    _, first = run(project, engine)
    (project / "store" / first.lock.images[0].key).unlink()
    engine.exports.clear()
    run(project, engine)
    assert engine.exports == [["registry.example.com/f/a:v1"]]
    assert (project / "store" / first.lock.images[0].key).exists()


def test_roles_change_without_a_new_upload(project: Path) -> None:
    engine = FakeEngine()
    run(project, engine)
    text = (project / "images.yaml").read_text().replace("build: ctx-a}",
                                                         "build: ctx-a, roles: [gpu]}")
    (project / "images.yaml").write_text(text)
    engine.exports.clear()
    _, result = run(project, engine)
    assert result.lock.images[0].roles == ("gpu",)
    assert ["registry.example.com/f/a:v1"] not in engine.exports


def test_failures_are_all_named_and_no_lock_is_written(project: Path) -> None:
    engine = FakeEngine()
    engine.fail = {"ctx-a": "build failed: boom", "c.tar": "archive is broken"}
    with pytest.raises(BakeError) as info:
        run(project, engine)
    assert str(info.value).splitlines() == ["image 'a': build failed: boom",
                                            "image 'c': archive is broken"]
    assert not (project / "dist/dev/images.lock.json").exists()


def test_a_previous_lock_survives_a_failed_bake(project: Path) -> None:
    engine = FakeEngine()
    run(project, engine)
    before = (project / "dist/dev/images.lock.json").read_bytes()
    (project / "ctx-a/payload").write_text("new")
    engine.fail = {"ctx-b": "build failed"}
    with pytest.raises(BakeError):
        run(project, engine)
    assert (project / "dist/dev/images.lock.json").read_bytes() == before


# -- publish ------------------------------------------------------------------------------------


def archive_chunks(size: int = 10000) -> list[bytes]:
    data = docker_save([("r.example/a:v1", [layer_tar({"x": b"x" * size, "y": b"y" * size})])])
    return [data[i:i + 4096] for i in range(0, len(data), 4096)]


def test_publish_gzip_is_deterministic(tmp_path: Path) -> None:
    store = DirectoryStore(config_mod.DirStore(tmp_path))
    chunks = archive_chunks()
    one = publish(iter(chunks), store, Compression("gzip", 6), 20000)
    two = publish(iter(chunks), store, Compression("gzip", 6), 20000)
    assert one.sha256 == two.sha256 and one.uploaded and not two.uploaded
    (image,) = describe((tmp_path / one.key).open("rb"))
    assert image.layers[0][0].endswith("tar+gzip")
    assert one.uncompressed_size == sum(map(len, chunks))


def test_publish_aborts_on_failure_cancel_and_a_wrong_archive(tmp_path: Path) -> None:
    store = DirectoryStore(config_mod.DirStore(tmp_path))
    chunks = archive_chunks(100000)

    def broken() -> Iterator[bytes]:
        yield from chunks[:len(chunks) // 2]
        raise EngineError("export broke off")

    with pytest.raises(EngineError):
        publish(broken(), store, Compression(), 4000)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        publish(iter(chunks), store, Compression(), 1, cancel=cancel)
    with pytest.raises(KilnError, match=r"names r.example/a:v1 as sha256:.*; expected "
                                        r"r.example/a:v1 as sha256:0"):
        publish(iter(chunks), store, Compression(), 1,
                expect={"r.example/a:v1": "sha256:" + "0" * 64})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# -- stores -------------------------------------------------------------------------------------


def test_part_size_fits_large_objects() -> None:
    assert part_size_for(0) == 8 << 20
    for size in (50 * 10**9, 50 << 30, 200 << 30):
        part = part_size_for(size)
        assert part % (1 << 20) == 0
        assert size / part < MAX_PARTS * 0.95


class FakeS3:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.objects: dict[str, bytes] = {}
        self.fail_part: int | None = None
        self.on_part: Any = None

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            if name == "create_multipart_upload":
                return {"UploadId": "u1"}
            if name == "upload_part":
                if self.on_part is not None:
                    self.on_part()
                if kwargs["PartNumber"] == self.fail_part:
                    raise KilnError("part failed")
                return {"ETag": f"e{kwargs['PartNumber']}"}
            if name == "put_object":
                self.objects[kwargs["Key"]] = kwargs["Body"]
            if name == "head_object":
                import botocore.exceptions

                raise botocore.exceptions.ClientError(
                    {"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                    "HeadObject")
            return {}
        return call


def s3_store(client: FakeS3) -> S3ObjectStore:
    return S3ObjectStore(config_mod.S3Store(bucket="b", prefix="p/"), client=client)


def test_s3_small_object_goes_straight_to_its_key() -> None:
    client = FakeS3()
    published = publish(iter(archive_chunks(10)), s3_store(client), Compression(), 5)
    assert list(client.objects) == [published.key]
    assert published.key == blob_key("p/", published.sha256)
    assert not [c for c, _ in client.calls if "multipart" in c]


def multipart_writer(client: FakeS3, monkeypatch: pytest.MonkeyPatch,
                     cancel: threading.Event | None = None) -> Any:
    monkeypatch.setenv("KILN_MULTIPART_THRESHOLD", str(8 << 20))
    writer = s3_store(client).writer(0, cancel)
    for _ in range(20):
        writer.write(b"z" * (1 << 20))
    return writer


def test_s3_large_object_goes_up_in_parts_straight_to_its_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeS3()
    assert multipart_writer(client, monkeypatch).commit("p/blobs/sha256/abc")
    names = [c for c, _ in client.calls]
    sizes = [len(k["Body"]) for c, k in client.calls if c == "upload_part"]
    assert sorted(sizes) == [4 << 20, 8 << 20, 8 << 20]
    assert {k["Key"] for c, k in client.calls if c != "head_object"} == {"p/blobs/sha256/abc"}
    complete = next(k for c, k in client.calls if c == "complete_multipart_upload")
    assert [p["PartNumber"] for p in complete["MultipartUpload"]["Parts"]] == [1, 2, 3]
    assert "copy_object" not in names and "put_object" not in names


def test_s3_failed_part_aborts_the_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeS3()
    client.fail_part = 2
    with pytest.raises(KilnError, match="part failed"):
        multipart_writer(client, monkeypatch).commit("p/k")
    names = [c for c, _ in client.calls]
    assert "abort_multipart_upload" in names
    assert "complete_multipart_upload" not in names


def test_s3_cancel_before_the_upload_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeS3()
    cancel = threading.Event()
    writer = multipart_writer(client, monkeypatch, cancel)
    cancel.set()
    with pytest.raises(Cancelled):
        writer.commit("p/k")
    assert [c for c, _ in client.calls] == ["head_object"]


def test_s3_cancel_during_the_parts_aborts_the_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeS3()
    cancel = threading.Event()
    client.on_part = cancel.set  # Ctrl-C while the first part is on the wire
    writer = multipart_writer(client, monkeypatch, cancel)
    with pytest.raises(Cancelled):
        writer.commit("p/k")
    names = [c for c, _ in client.calls]
    assert "abort_multipart_upload" in names and "complete_multipart_upload" not in names


def test_directory_writer_renames_only_when_complete(tmp_path: Path) -> None:
    store = DirectoryStore(config_mod.DirStore(tmp_path))
    writer = store.writer(0)
    writer.write(b"half")
    partial = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name.startswith(".partial-") for p in partial] == [True]
    writer.abort()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# -- lock and progress --------------------------------------------------------------------------


def test_lock_round_trip_and_bad_lock(tmp_path: Path) -> None:
    lock = lockfile.Lock("dev", "r.example.com", store={"type": "dir"})
    path = tmp_path / "l.json"
    lockfile.write(path, lock)
    assert lockfile.read(path) == lock
    path.write_text("{}")
    with pytest.raises(KilnError, match="unsupported lock version"):
        lockfile.read(path)
    assert lockfile.read(tmp_path / "none.json") is None


def test_live_reporter_redraws_in_place() -> None:
    out = io.StringIO()
    live = LiveReporter(out)
    live.step("a", "building")
    live.step("b", "building")
    live.progress("a", 5 << 20, 10 << 20)
    live.finish("a", "stored")
    text = out.getvalue()
    assert "\x1b[2F" in text  # moved up over both lines to redraw them
    assert text.rsplit("\x1b[2F", 1)[1] == "\x1b[2Ka  stored\n\x1b[2Kb  building\n"
    assert human(5 << 20) == "5.0 MiB" and human(12) == "12 B"


def test_a_lock_from_an_older_kiln_is_named_and_everything_is_stored_again(
        project: Path) -> None:
    engine = FakeEngine()
    run(project, engine)
    path = project / "dist/dev/images.lock.json"
    current = path.read_text()
    for version in (1, 2, 3):  # 2: no manifest digests; 3: one entry per image
        path.write_text(current.replace('"version": 4', f'"version": {version}'))
        with pytest.raises(lockfile.OldLock,
                           match=rf"older kiln \(lock version {version}\); bake this"):
            lockfile.read(path)
    engine.exports.clear()
    _, result = run(project, engine)
    assert len(engine.exports) == 3
    assert lockfile.read(path) == result.lock


def test_a_same_size_corruption_of_a_stored_object_is_repaired(project: Path) -> None:
    """The object's bytes are overwritten, same size: the next bake hashes what it would
    reuse, sees it, stores the object again and says so. (Fails on main: reuse checked the
    size only, so every node failed its sha256 at every boot.)"""
    _, first = run(project, FakeEngine())
    image = first.lock.images[0]
    path = project / "store" / image.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _, second = run(project, FakeEngine())
    assert second.repaired == (image.key,)
    assert second.lock == first.lock
    assert hashlib.sha256(path.read_bytes()).hexdigest() == image.sha256
    _, third = run(project, FakeEngine())
    assert third.repaired == () and third.uploaded == ()
