"""docker save -> OCI archive with compressed layers: both layouts, dedup, checks, errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from kiln.config import Compression
from kiln.ociarchive import ArchiveError, convert, describe, to_docker_archive
from tests.helpers import docker_save, image_config, layer_tar

BASE = layer_tar({"etc/os-release": b"ID=kiln\n" * 100})
APP = layer_tar({"bin/app": bytes(range(256)) * 400})
TOOL = layer_tar({"bin/tool": b"tool" * 3000})


def run(data: bytes, compression: Compression | None = None) -> tuple[bytes, dict[str, str]]:
    out = bytearray()
    converted = convert([data[i:i + 777] for i in range(0, len(data), 777)],
                        compression or Compression(), out.extend)
    assert converted.raw_size == len(data)
    return bytes(out), converted.images


def image_id(layers: list[bytes]) -> str:
    return "sha256:" + hashlib.sha256(image_config(layers)).hexdigest()


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore


@pytest.mark.parametrize("oci_shaped", [False, True], ids=["legacy", "docker25"])
def test_a_bundle_becomes_one_index_with_shared_layers_stored_once(oci_shaped: bool) -> None:
    source = docker_save([("r.example/f/app:v1", [BASE, APP]),
                          ("r.example/f/tool:v2", [BASE, TOOL])], oci_shaped)
    archive, images = run(source)
    assert images == {"r.example/f/app:v1": image_id([BASE, APP]),
                      "r.example/f/tool:v2": image_id([BASE, TOOL])}
    found = {i.ref: i for i in describe(io.BytesIO(archive))}
    assert sorted(found) == ["r.example/f/app:v1", "r.example/f/tool:v2"]
    assert found["r.example/f/app:v1"].layers[0] == found["r.example/f/tool:v2"].layers[0]
    files = members(archive)
    blobs = [name for name in files if name.startswith("blobs/")]
    assert len(blobs) == len(set(blobs)) == 3 + 2 + 2  # layers, configs, manifests
    index = json.loads(files["index.json"])
    assert {d["annotations"]["io.containerd.image.name"] for d in index["manifests"]} == set(found)
    assert all(d["platform"] == {"os": "linux", "architecture": "amd64"}
               for d in index["manifests"])
    # each layer decompresses to exactly the engine's layer
    app = found["r.example/f/app:v1"]
    media, digest, _ = app.layers[1]
    assert media == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(
        files["blobs/sha256/" + digest[7:]]) == APP
    # the config is the engine's own bytes: the image ID does not change
    assert files["blobs/sha256/" + app.image_id[7:]] == image_config([BASE, APP])


def test_equal_input_gives_equal_bytes_and_gzip_layers_are_gzip() -> None:
    source = docker_save([("r.example/f/app:v1", [BASE, APP])])
    one, _ = run(source, Compression("gzip", 6))
    two, _ = run(source, Compression("gzip", 6))
    assert one == two
    (image,) = describe(io.BytesIO(one))
    assert {m for m, _, _ in image.layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}


def test_a_layer_that_comes_compressed_is_kept_as_it_is() -> None:
    packed = gzip.compress(APP, mtime=0)
    source = docker_save([("r.example/f/app:v1", [packed])], oci_shaped=True)
    archive, _ = run(source)
    (image,) = describe(io.BytesIO(archive))
    assert image.layers == (("application/vnd.oci.image.layer.v1.tar+gzip",
                             "sha256:" + hashlib.sha256(packed).hexdigest(), len(packed)),)


def test_a_layer_that_does_not_match_its_config_is_refused() -> None:
    source = docker_save([("r.example/f/app:v1", [APP])])
    tampered = source.replace(b"bin/app", b"bin/apq", 1)
    with pytest.raises(ArchiveError, match=r"layer 1 is sha256:.*its config says sha256:"):
        run(tampered)


@pytest.mark.parametrize(("data", "reason"), [
    (b"not a tar at all" * 100, "not a readable tar"),
    (layer_tar({"x": b"y"}), "no manifest.json"),
    (layer_tar({"manifest.json": b"[{]"}), "manifest.json is not"),
    (docker_save([("r.example/f/app:v1", [APP])])[:5000], "ends in the middle of a member"),
])
def test_what_is_not_a_docker_archive_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ArchiveError, match=reason):
        run(data)


def test_an_unnamed_image_is_refused() -> None:
    source = docker_save([("r.example/f/app:v1", [APP])])
    nameless = source.replace(b'"RepoTags": ["r.example/f/app:v1"]',
                              b'"RepoTags": null' + b" " * 18)
    with pytest.raises(ArchiveError, match="has no name"):
        run(nameless)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_member_names_as_go_and_gnu_write_them(fmt: int) -> None:
    folder = "x" * 120  # over ustar's 100 characters: a PAX record or a GNU long name
    config = image_config([APP])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in ((f"{folder}/layer.tar", APP), (f"{folder}/config.json", config),
                           ("manifest.json", json.dumps([{
                               "Config": f"{folder}/config.json", "RepoTags": ["r.example/a:1"],
                               "Layers": [f"{folder}/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("y" * 110)
        link.type, link.linkname = tarfile.SYMTYPE, "z" * 130  # a long link target too
        tar.addfile(link)
    _, images = run(out.getvalue())
    assert images == {"r.example/a:1": image_id([APP])}


@pytest.mark.parametrize("algorithm", ["zstd", "gzip"])
def test_a_stored_archive_becomes_a_loadable_docker_archive_with_the_same_ids(
        tmp_path: Path, algorithm: str) -> None:
    source = docker_save([("r.example/f/app:v1", [BASE, APP]),
                          ("r.example/f/tool:v2", [BASE, TOOL])])
    archive, images = run(source, Compression(algorithm, 3))
    (tmp_path / "oci.tar").write_bytes(archive)
    out = io.BytesIO()
    to_docker_archive(str(tmp_path / "oci.tar"), out)
    again, images_again = run(out.getvalue(), Compression(algorithm, 3))
    assert (again, images_again) == (archive, images)  # the very same stored bytes
    files = members(out.getvalue())
    assert sorted(name for name in files if name.endswith("/layer.tar")) == sorted(
        hashlib.sha256(layer).hexdigest() + "/layer.tar" for layer in (BASE, APP, TOOL))
    (tmp_path / "bad.tar").write_bytes(layer_tar({"index.json": b"{}"}))
    with pytest.raises(ArchiveError, match="not an OCI archive kiln wrote"):
        to_docker_archive(str(tmp_path / "bad.tar"), io.BytesIO())
