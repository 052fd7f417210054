"""The payload and artifact checks of kiln/provenance.py (the signature itself: openssl)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from kiln import provenance
from kiln.model import Location, Verify
from tests.helpers import write_layout

D = "sha256:" + "a" * 64
REPO = "up.example.com/team/app"


def payload(digest: str = D, reference: str = REPO, kind: str = provenance.SIGNATURE_TYPE
            ) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": kind}, "optional": None}).encode()


@pytest.mark.parametrize(("data", "why"), [
    (payload(), None),
    (payload(reference=REPO + ":v1"), None),  # cosign may name the tag too
    (payload(reference="index.docker.io/library/app"), "naming"),
    (payload(digest="sha256:" + "b" * 64), "for sha256:bbbb"),
    (payload(reference="up.example.com/team/other"), "naming up.example.com/team/other"),
    (payload(kind="something else"), "of type"),
    (b"[1, 2]", "not a cosign simple signing document"),
    (b"\xff" * 10, "not a cosign simple signing document"),
    (payload(reference="$(reboot)"), "not a repository"),
])
def test_a_payload_must_name_the_digest_and_the_repository(data: bytes, why: str | None
                                                          ) -> None:
    found = provenance.payload_names(data, D, REPO)
    assert found is None if why is None else (found is not None and why in found)


def test_docker_hub_is_one_repository_by_both_names() -> None:
    assert provenance.payload_names(payload(reference="index.docker.io/library/app"), D,
                                    "docker.io/library/app") is None


def test_the_artifact_is_read_within_bounds(tmp_path: Path) -> None:
    big = b"x" * (provenance.MAX_PAYLOAD + 1)
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "layers": [{
        "mediaType": provenance.SIMPLE_SIGNING, "digest": digest, "size": len(big),
        "annotations": {provenance.SIGNATURE_ANNOTATION: base64.b64encode(b"s").decode()}}]}
    ).encode()
    layout = write_layout(tmp_path / "sig", manifest, {
        digest: big, "sha256:" + hashlib.sha256(manifest).hexdigest(): manifest})
    with pytest.raises(provenance.NotVerified, match="not one cosign writes"):
        provenance.signatures(layout)
    seen: list[bytes] = []

    class Checks:
        def verifies(self, data: bytes, signature: bytes, key: Path) -> bool:
            seen.append(data)
            return True

        def verifies_spki(self, data: bytes, signature: bytes, key: bytes) -> bool:
            raise AssertionError("no keyless signature here")

        def chains(self, leaf: bytes, intermediates: Sequence[bytes], root: bytes, at: int
                   ) -> str | None:
            raise AssertionError("no keyless signature here")

    key = tmp_path / "k.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    unsigned = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    empty = write_layout(tmp_path / "empty", unsigned,
                         {"sha256:" + hashlib.sha256(unsigned).hexdigest(): unsigned})
    with pytest.raises(provenance.NotVerified, match="holds no cosign signature"):
        provenance.check(empty, D, REPO, Verify(key, Location("images.yaml", 1, 1)), Checks())
    assert seen == []
