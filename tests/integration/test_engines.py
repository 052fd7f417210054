"""The real-engine fixtures work: a built image reaches containerd under its exact name."""

from __future__ import annotations

from pathlib import Path

import boto3
import docker

from kiln.containerd import Ctr
from tests.integration.conftest import scratch_context

REF = "registry.example.com/foundation/fixture:v1"


def test_build_save_import_keeps_ref_and_image_id(docker_client: docker.DockerClient, ctr: Ctr,
                                                   tmp_path: Path) -> None:
    context = scratch_context(tmp_path / "ctx", "fixture")
    image, _ = docker_client.images.build(path=str(context), tag=REF, rm=True)
    assert REF in image.tags

    # A named archive (get_image), streamed into ctr: no file on disk.
    ctr.import_stream(docker_client.api.get_image(REF, chunk_size=1 << 20))

    imported = ctr.images()
    assert REF in imported
    assert ctr.image_id(imported[REF].manifest_digest) == image.id
    # The CRI plugin makes the image visible to kubelet.
    assert imported[REF].labels.get("io.cri-containerd.image") == "managed"


def test_s3_endpoint_speaks_http(s3_endpoint: str, bucket: str) -> None:
    """boto3's chain holds the writer's keys: what bake and diff use."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
