"""docker save -> OCI archive with compressed layers: both layouts, dedup, checks, errors."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import signal
import tarfile
from collections.abc import Iterator

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.config import Compression
from kiln.ociarchive import ArchiveError, convert, describe
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
def test_several_images_become_one_index_with_shared_layers_stored_once(oci_shaped: bool) -> None:
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


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_compressed_layer_is_checked_against_its_config_too(kind: str) -> None:
    packed = (gzip.compress(APP, mtime=0) if kind == "gzip"
              else zstandard.ZstdCompressor().compress(APP))
    source = docker_save([("r.example/f/app:v1", [BASE, packed])], oci_shaped=True)
    run(source)  # the config names the uncompressed layer: fine
    right = hashlib.sha256(APP).hexdigest().encode()
    wrong = source.replace(right, hashlib.sha256(TOOL).hexdigest().encode())
    with pytest.raises(ArchiveError, match=r"layer 2 is sha256:.*its config says sha256:"):
        run(wrong)
    # the config listing the compressed digest (what was stored before) is refused as well
    packed_id = hashlib.sha256(packed).hexdigest().encode()
    with pytest.raises(ArchiveError, match="layer 2 is"):
        run(source.replace(right, packed_id))


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_compressed_layer_that_does_not_decompress_is_refused(kind: str) -> None:
    packed = (gzip.compress(APP, mtime=0) if kind == "gzip"
              else zstandard.ZstdCompressor(write_checksum=True).compress(APP))
    broken = packed[:len(packed) // 2] + bytes(len(packed) - len(packed) // 2)
    source = docker_save([("r.example/f/app:v1", [broken])], oci_shaped=True)
    with pytest.raises(ArchiveError, match=f"a {kind} layer"):
        run(source)


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
    (layer_tar({"manifest.json": b"[" * 100000}), "manifest.json is not"),  # RecursionError
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


# -- the reader is total: any byte string ends, fast, in a conversion or an ArchiveError -------


class Stalled(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: float = 5.0) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the reader does not end within ``seconds``."""
    def expire(signum: int, frame: object) -> None:
        raise Stalled(f"the reader did not end within {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def total(data: bytes) -> None:
    """Convert ``data``: it converts or raises ArchiveError, nothing else, within the bound."""
    with bounded(), contextlib.suppress(ArchiveError):
        convert([data[i:i + 777] for i in range(0, len(data), 777)], Compression(),
                lambda _: None)


def with_pax(records: bytes, member: bytes = b"[]") -> bytes:
    """A PAX extended header holding ``records``, before a small manifest.json member."""
    header = tarfile.TarInfo("PaxHeaders/manifest.json")
    header.type, header.size = tarfile.XHDTYPE, len(records)
    info = tarfile.TarInfo("manifest.json")
    info.size = len(member)
    return b"".join([
        header.tobuf(format=tarfile.USTAR_FORMAT), records, bytes(-len(records) % 512),
        info.tobuf(format=tarfile.USTAR_FORMAT), member, bytes(-len(member) % 512),
        bytes(1024)])


@pytest.mark.parametrize(("records", "reason"), [
    (b"0 path=x\n", "PAX record of bad length 0"),  # looped for ever
    (b"garbage", "PAX record without a decimal length"),  # ValueError
    (b"11 size=zz\n", "PAX size that is not a decimal number"),  # ValueError
    (b"5 a=b\n", "PAX record of bad length 5"),  # length shorter than its record
    (b"99 path=x\n", "PAX record of bad length 99"),  # beyond the header's data
    (b"-9 path=x\n", "without a decimal length"),
    (b"+9 path=x\n", "without a decimal length"),
    (b"8 pathx\n", "without KEY=VALUE"),
    (b"9 path=x ", "bad length 9"),  # no newline at its end
    (b"11 path=\xff\xfe\n", "not UTF-8"),
    (b"30 size=" + b"9" * 21 + b"\n", "PAX size that is not a decimal number"),
])
def test_a_malformed_pax_header_is_an_archive_error(records: bytes, reason: str) -> None:
    with bounded(), pytest.raises(ArchiveError, match=reason):
        run(with_pax(records))


def test_well_formed_pax_records_still_apply() -> None:
    _, images = run(with_pax(b"22 path=manifest.json\n" + b"9 size=2\n"))
    # the manifest is "[]": no image, so nothing is named, but the records were read
    assert images == {}


def test_oversized_or_chained_extended_headers_are_refused() -> None:
    header = tarfile.TarInfo("PaxHeaders/x")
    header.type = tarfile.XHDTYPE
    header.size = 1 << 40  # would be read into memory
    with bounded(), pytest.raises(ArchiveError, match="oversized extended header"):
        run(header.tobuf(format=tarfile.GNU_FORMAT) + bytes(4096))
    record = b"9 path=x\n"
    with bounded(), pytest.raises(ArchiveError, match="in a row"):
        run(with_pax(record)[:512 + 512] * 20)


def test_a_negative_size_is_refused() -> None:
    info = tarfile.TarInfo("manifest.json")
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    block[124:136] = b"\xff" * 12  # base-256: -1
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    with bounded(), pytest.raises(ArchiveError, match="-1 bytes"):
        run(bytes(block) + bytes(1024))


VALID = docker_save([("r.example/f/app:v1", [BASE[:2048] + bytes(1024)])])
PAXED = with_pax(b"22 path=manifest.json\n")


def test_the_fuzz_seeds_convert() -> None:
    assert run(VALID)[1] == {"r.example/f/app:v1": image_id([BASE[:2048] + bytes(1024)])}
    assert run(PAXED)[1] == {}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_end_in_an_archive_error(data: bytes) -> None:
    total(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([VALID, PAXED]),
       st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=16)),
                min_size=1, max_size=8),
       st.integers(0, 1 << 16) | st.none())
def test_any_mutated_tar_stream_ends_in_an_archive_error(
        base: bytes, edits: list[tuple[int, bytes]], cut: int | None) -> None:
    data = bytearray(base)
    for where, new in edits:
        where %= len(data)
        data[where:where + len(new)] = new
    total(bytes(data[:cut]) if cut is not None else bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "0", "1", "9", "99", "x", "-1", " "]),
                          st.sampled_from(["path", "size", "linkpath", "", "=", "x"]),
                          st.sampled_from(["=", ""]),
                          st.binary(max_size=20)), max_size=5), st.binary(max_size=8))
def test_any_pax_records_end_in_an_archive_error(
        records: list[tuple[str, str, str, bytes]], tail: bytes) -> None:
    body = b"".join(f"{length} {key}{eq}".encode() + value + b"\n"
                    for length, key, eq, value in records)
    total(with_pax(body + tail))
