"""Recompressing a pull source is an explicit opt-in (kiln/recompressed.py): per image or per
environment, refused beside `verify: {key}`, warned about by lint, a rebind when turned on for
a locked ref; a rebake keeps the lock. A fake upstream recompresses as skopeo does."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard

from kiln import config as config_mod
from kiln import lock as lockfile
from kiln.cli import main
from kiln.errors import ConfigError, KilnError
from kiln.rebind import RebindRefused
from tests.helpers import image_index, registry_image, write_layout
from tests.unit.test_copied import UP, FakeUpstream, bake, project

LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Recompressing(FakeUpstream):
    """skopeo without --preserve-digests: an OCI manifest, each layer decompressed and
    compressed again; a Docker manifest's config is rewritten on the way (as skopeo converts
    it to OCI). ``config`` replaces the copy's config: a broken copy."""

    def __init__(self) -> None:
        super().__init__()
        self.config_override: bytes | None = None

    def config(self, ref: str) -> bytes:
        self.calls.append(("config", ref))
        return self.blobs[json.loads(self.served[ref])["config"]["digest"]]

    def copy_image(self, ref: str, layout: Path, cancel: threading.Event | None = None,
                   compression: tuple[str, int] | None = None) -> None:
        if compression is None:
            return super().copy_image(ref, layout, cancel)
        self.calls.append(("recompress", f"{ref} {compression[0]} -{compression[1]}"))
        served = json.loads(self.served[ref])
        config = self.blobs[served["config"]["digest"]]
        if served["mediaType"] != OCI_MANIFEST:
            config = json.dumps(json.loads(config), separators=(",", ":")).encode()
        config = self.config_override or config
        layers = [zstandard.ZstdCompressor(level=compression[1]).compress(
            gzip.decompress(self.blobs[d["digest"]])) for d in served["layers"]]
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_ZSTD, "digest": digest(b), "size": len(b)}
                       for b in layers]}).encode()
        write_layout(layout, manifest, {digest(b): b for b in (config, manifest, *layers)})
        return None


def oci_image(payload: bytes, arch: str = "amd64") -> tuple[bytes, dict[str, bytes]]:
    """registry_image's image with an OCI manifest (skopeo keeps its config as is)."""
    manifest, blobs = registry_image(payload, arch)
    doc = json.loads(manifest)
    doc["mediaType"], doc["config"]["mediaType"] = OCI_MANIFEST, \
        "application/vnd.oci.image.config.v1+json"
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    oci = json.dumps(doc).encode()
    return oci, {**{d: b for d, b in blobs.items() if b != manifest}, digest(oci): oci}


def image_id_of(manifest: bytes) -> str:
    return str(json.loads(manifest)["config"]["digest"])


def lint(folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["lint", "--env", "dev", "--config", str(folder / "images.yaml")]) == 0
    return capsys.readouterr().out


def test_an_image_opts_in_and_a_rebake_keeps_its_lock(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = Recompressing()
    manifest, blobs = oci_image(b"one " * 500)
    pinned = f"{UP}:v1@{upstream.push(f'{UP}:v1', manifest, blobs)}"
    folder = project(tmp_path, f'pull: "{pinned}", recompress: true')
    (image,) = bake(folder, upstream).images
    assert upstream.calls[-1] == ("recompress", f"{UP}@{digest(manifest)} zstd -3")
    assert image.image_id == image_id_of(manifest)  # the upstream's config: no need to ask
    assert [c[0] for c in upstream.calls] == ["manifest", "recompress"]
    assert image.manifest_digest not in (None, digest(manifest))  # kiln's manifest
    assert (image.compression, image.compression_level) == ("zstd", 3)
    assert (image.index_digest, image.signed_by, image.upstream) == (None, None, pinned)
    lock_text = (folder / "dist/dev/images.lock.json").read_text()

    upstream.calls.clear()  # pinned and recompressed before: no registry is asked
    assert bake(folder, upstream).images == (image,)
    assert upstream.calls == []
    assert (folder / "dist/dev/images.lock.json").read_text() == lock_text

    out = lint(folder, capsys)
    assert "[warning] recompressed-upstream pull source" in out and "recompress: true" in out
    where = out.split(": [warning] recompressed-upstream")[0].splitlines()[-1]
    line, column = (int(n) for n in where.rsplit(":", 2)[1:])
    text = (folder / "images.yaml").read_text().splitlines()[line - 1]
    assert text[column - 1:].startswith("recompress: true")  # at the key


def test_an_unpinned_rebake_asks_the_registry_only(tmp_path: Path) -> None:
    upstream = Recompressing()
    upstream.push(f"{UP}:v1", *registry_image(b"unpinned"))
    folder = project(tmp_path, f'pull: "{UP}:v1", recompress: true')
    (image,) = bake(folder, upstream).images
    upstream.calls.clear()
    assert bake(folder, upstream).images == (image,)
    assert [c[0] for c in upstream.calls] == ["manifest"]  # the same image: not copied


def test_the_environment_opts_in_and_an_image_opts_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = Recompressing()
    up = upstream.push(f"{UP}:v1", *registry_image(b"env"))
    folder = project(tmp_path, f'pull: "{UP}:v1"')
    text = (folder / "images.yaml").read_text()
    (folder / "images.yaml").write_text(text.replace("level: 3}", "level: 3, pulls: recompress}"))
    (image,) = bake(folder, upstream).images
    assert image.manifest_digest != up and image.compression_level == 3
    assert "environment dev: compression pulls: recompress" in lint(folder, capsys)

    opted_out = text.replace('pull: "', 'recompress: false, pull: "')
    (folder / "images.yaml").write_text(opted_out.replace("level: 3}",
                                                          "level: 3, pulls: recompress}"))
    assert "recompressed-upstream" not in lint(folder, capsys)
    (image,) = bake(folder, upstream, rebind=(image.ref,)).images  # back to the upstream's
    assert (image.manifest_digest, image.compression_level) == (up, lockfile.AS_SERVED)


def test_one_platform_of_an_index_is_recompressed_without_the_index(tmp_path: Path) -> None:
    upstream = Recompressing()
    amd, amd_blobs = oci_image(b"amd")
    arm, arm_blobs = oci_image(b"arm", "arm64")
    for name, (m, b) in {"amd": (amd, amd_blobs), "arm": (arm, arm_blobs)}.items():
        upstream.push(f"{UP}:{name}", m, b)
    upstream.push(f"{UP}:multi", image_index([(amd, "linux/amd64"), (arm, "linux/arm64")]), {})
    folder = project(tmp_path, f'pull: "{UP}:multi", recompress: true, '
                               'platforms: [linux/amd64, linux/arm64]')
    images = bake(folder, upstream).images
    assert [(i.platform, i.image_id, i.index_digest, i.index_key) for i in images] == [
        ("linux/amd64", image_id_of(amd), None, None),
        ("linux/arm64", image_id_of(arm), None, None)]
    assert {i.manifest_digest for i in images}.isdisjoint({digest(amd), digest(arm)})


def test_a_docker_manifest_gets_kiln_s_config_with_the_upstream_s_layers(
        tmp_path: Path) -> None:
    upstream = Recompressing()
    manifest, blobs = registry_image(b"docker")
    upstream.push(f"{UP}:v1", manifest, blobs)
    folder = project(tmp_path, f'pull: "{UP}:v1", recompress: true')
    (image,) = bake(folder, upstream).images
    assert image.image_id != image_id_of(manifest)  # skopeo rewrote the config
    assert image.inputs == digest(manifest)  # what it was made from
    assert upstream.calls[-1] == ("config", f"{UP}@{digest(manifest)}")  # layers compared


@pytest.mark.parametrize(("manifest", "config", "why"), [
    (oci_image, {"architecture": "amd64", "os": "linux"}, "is image sha256:"),
    (registry_image, {"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}, "other layers"),
    (registry_image, {"architecture": "arm64", "os": "linux"}, "other layers"),
])
def test_a_copy_of_another_image_is_refused(tmp_path: Path, manifest: Any,
                                            config: dict[str, Any], why: str) -> None:
    upstream = Recompressing()
    upstream.push(f"{UP}:v1", *manifest(b"one"))
    upstream.config_override = json.dumps(config).encode()
    folder = project(tmp_path, f'pull: "{UP}:v1", recompress: true')
    with pytest.raises(KilnError, match=why):
        bake(folder, upstream)
    assert not (folder / "dist/dev/images.lock.json").exists()
    assert not [p for p in (folder / "store").rglob("*") if p.is_file()]  # nothing stored


def test_turning_it_on_for_a_locked_ref_moves_the_ref(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = Recompressing()
    up = upstream.push(f"{UP}:v1", *registry_image(b"locked"))
    folder = project(tmp_path, f'pull: "{UP}:v1@{up}"')
    (served,) = bake(folder, upstream).images
    text = (folder / "images.yaml").read_text()
    (folder / "images.yaml").write_text(text.replace('pull: "', 'recompress: true, pull: "'))
    config = ["--env", "dev", "--config", str(folder / "images.yaml"),
              "--dist", str(folder / "dist")]
    assert main(["diff", *config, "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)["changes"]
    assert [(c["kind"], c["detail"]) for c in changes] == [
        ("recompressed", "gzip as served -> zstd -3"),
        ("rebind", f"{served.ref} is bound to {up}: new content under it is refused unless "
                   f"bake --rebind {served.ref}")]
    with pytest.raises(RebindRefused, match=f"{served.ref} is bound to {up} in the lock"):
        bake(folder, upstream)
    assert lockfile.read(folder / "dist/dev/images.lock.json").images == (served,)  # untouched
    lock = bake(folder, upstream, rebind=(served.ref,))
    assert lock.history[-1].old == up and lock.history[-1].new == lock.images[0].manifest_digest


@pytest.mark.parametrize(("image", "env", "at", "message"), [
    ("pull: up.example.com/a:1, recompress: yes please", "", "yes please}",
     "recompress must be true or false"),
    ("build: ctx, recompress: true", "", "recompress: true",
     "recompress applies to pull sources only"),
    ("archive: a.tar, recompress: false", "", "recompress: false",
     "recompress applies to pull sources only"),
    ("pull: up.example.com/a:1, recompress: true, verify: {key: k.pub}", "", "recompress: true",
     "image 'a': recompress: true and its own verify: {key} exclude each other: a "
     "recompressed image has kiln's manifest digest"),
    ("pull: up.example.com/a:1, recompress: true", "verify: {key: k.pub}, ", "recompress: true",
     "image 'a': recompress: true and environment dev's verify: {key} exclude each other"),
    ("pull: up.example.com/a:1", "verify: {key: k.pub}, compression: {pulls: recompress}, ",
     "recompress}", "image 'a': environment dev's compression pulls: recompress and "
                    "environment dev's verify: {key}"),
    ("pull: up.example.com/a:1, verify: {key: k.pub}", "compression: {pulls: recompress}, ",
     "{key: k.pub}", "image 'a': environment dev's compression pulls: recompress and its own"),
    ("pull: up.example.com/a:1", "compression: {pulls: always}, ", "always}",
     "compression pulls must be one of as-served, recompress, not 'always'"),
])
def test_bad_settings_are_refused_where_they_are_written(
        tmp_path: Path, image: str, env: str, at: str, message: str) -> None:
    (tmp_path / "k.pub").write_text(PEM)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "images.yaml").write_text(
        "version: 1\nimages:\n  # one image\n"
        f"  - {{name: a, ref: registry.example.com/foundation/a:v1, {image}}}\n"
        "environments:\n  # one environment\n"
        f"  dev: {{registry: registry.example.com, {env}store: {{type: dir, path: store}}}}\n")
    with pytest.raises(ConfigError) as caught:
        config_mod.load(tmp_path / "images.yaml", "images.yaml")
    (problem,) = caught.value.problems
    assert problem.message[:len(message)] == message
    text = (tmp_path / "images.yaml").read_text().splitlines()[problem.line - 1]
    assert text[problem.column - 1:].startswith(at)


def test_a_keyless_policy_and_recompression_are_refused_together(tmp_path: Path) -> None:
    data = Path(__file__).parents[1] / "data/keyless"
    shutil.copy(data / "fulcio_v1.crt.pem", tmp_path / "roots.pem")
    shutil.copy(data / "rekor.pub", tmp_path / "rekor.pub")
    (tmp_path / "images.yaml").write_text(
        "version: 1\nimages:\n"
        "  - {name: a, ref: r.example.com/f/a:v1, pull: up.example.com/a:1, recompress: true}\n"
        "environments:\n  dev: {registry: r.example.com, store: {type: dir, path: store},\n"
        "        verify: {identity: me@example.com, issuer: 'https://issuer.example.com',\n"
        "                 roots: roots.pem, rekor_key: rekor.pub}}\n")
    with pytest.raises(ConfigError) as caught:
        config_mod.load(tmp_path / "images.yaml", "images.yaml")
    (problem,) = caught.value.problems
    assert problem.message.startswith("image 'a': recompress: true and environment dev's "
                                      "keyless verify exclude each other")
    assert (problem.line, problem.column) == (3, 68)  # at `recompress: true`


def test_a_verified_pull_that_opts_out_loads(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text(PEM)
    (tmp_path / "images.yaml").write_text(
        "version: 1\nimages:\n"
        "  - {name: a, ref: r.example.com/f/a:v1, pull: up.example.com/a:1, recompress: false}\n"
        "  - {name: b, ref: r.example.com/f/b:v1, pull: up.example.com/b:1, verify: none}\n"
        "environments:\n  dev: {registry: r.example.com, verify: {key: k.pub}, "
        "compression: {pulls: recompress}, store: {type: dir, path: store}}\n")
    cfg = config_mod.load(tmp_path / "images.yaml")
    assert [i.recompress for i in cfg.images] == [False, None]
