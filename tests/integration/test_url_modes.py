"""Nodes fetch from S3 over real HTTP: presigned URLs and curl --aws-sigv4 (moto server)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from kiln import config as config_mod
from kiln.localengine import Daemon
from kiln.render import PresignedLocator, SigV4Locator, locator_for, render
from tests.integration.nodes import Node, assert_imported, curl_spy, make_node


@pytest.fixture
def s3_node(baked: Path, tmp_path: Path, fresh_containerd: Daemon, s3_endpoint: str,
            bucket: str) -> Iterator[tuple[Node, config_mod.Environment]]:
    """The baked objects in a bucket, as an S3 bake would leave them."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for blob in (baked / "store/blobs/sha256").iterdir():
        s3.upload_file(str(blob), bucket, f"kiln/blobs/sha256/{blob.name}")
    for node in make_node(baked, tmp_path, fresh_containerd):
        env = config_mod.load(tmp_path / "images.yaml").environment("it")
        store = config_mod.S3Store(bucket=bucket, endpoint=s3_endpoint, prefix="kiln/",
                                   region="us-east-1", addressing="path")
        lock = replace(node.lock, images=tuple(
            replace(i, key=f"kiln/{i.key}") for i in node.lock.images))
        node.lock = lock
        yield node, replace(env, store=store)


def test_presigned_urls(s3_node: tuple[Node, config_mod.Environment]) -> None:
    node, env = s3_node
    env = replace(env, store=replace(env.store, url_mode="presigned", ttl_seconds=600))
    locator = locator_for(env)
    assert isinstance(locator, PresignedLocator)
    render(env, node.lock, node.folder / "dist", locator)
    data_file = node.folder / "dist/it/node/images.data"
    data = data_file.read_text()
    assert "X-Amz-Signature=" in data and "X-Amz-Expires=600" in data
    # a presigned URL is a credential until it expires: 0600, and never in curl's argv
    assert stat.S_IMODE(data_file.stat().st_mode) == 0o600
    spy, argv_log = curl_spy(node.folder)
    done = node.run(env=spy)
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    argv = argv_log.read_text()
    assert argv.count("-K -") == 2 and "X-Amz-Signature" not in argv, argv


def test_sigv4_with_credentials_from_the_environment(
        s3_node: tuple[Node, config_mod.Environment]) -> None:
    node, env = s3_node
    env = replace(env, store=replace(env.store, url_mode="sigv4"))
    locator = locator_for(env, environ={"AWS_ACCESS_KEY_ID": "readonly",
                                        "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert isinstance(locator, SigV4Locator)
    result = render(env, node.lock, node.folder / "dist", locator)
    data = node.folder / "dist/it/node/images.data"
    assert "set sigv4_user readonly:s3cr3t" in data.read_text()
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert result.secret
    spy, argv_log = curl_spy(node.folder)
    done = node.run(env=spy)
    assert done.returncode == 0, done.stderr
    assert "s3cr3t" not in done.stderr  # never logged
    assert "s3cr3t" not in argv_log.read_text()  # nor on curl's command line
    assert_imported(node, {"small", "big"})
