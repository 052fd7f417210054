"""An image index, read the same way for containerd (`verify`) and a registry."""

from __future__ import annotations

from kiln.manifests import is_index, platform_manifest

INDEX = {"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64",
                                          "variant": "v8"}},
    {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
]}


def test_the_platforms_manifest_is_picked_by_os_and_architecture() -> None:
    assert platform_manifest(INDEX, "linux/amd64") == "sha256:amd"
    assert platform_manifest(INDEX, "linux/arm64/v8") == "sha256:arm"
    assert platform_manifest(INDEX, "linux/s390x") is None
    assert platform_manifest({"manifests": [{"digest": "sha256:x"}]}, "linux/amd64") is None


def test_an_index_is_known_by_its_media_type_or_its_manifests() -> None:
    assert is_index(INDEX)
    assert is_index({"mediaType": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert is_index({"manifests": []})
    assert not is_index({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": {"digest": "sha256:c"}})
