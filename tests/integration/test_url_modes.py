"""Nodes fetch from S3 over real HTTP, from a real radosgw that checks what moto never did:
SigV4 signatures (curl --aws-sigv4), presigned URLs' expiry, and the nodes' read-only keys.
Every node here renders and runs with the reader's keys alone (GET on the bucket's objects)."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kiln import cephdev
from kiln import config as config_mod
from kiln.localengine import Daemon
from kiln.render import PresignedLocator, SigV4Locator, locator_for, render
from tests.integration.nodes import Node, assert_imported, curl_spy, make_node


@pytest.fixture
def s3_node(baked: Path, tmp_path: Path, fresh_containerd: Daemon, ceph: cephdev.Cluster,
            bucket: str) -> Iterator[tuple[Node, config_mod.Environment]]:
    """The baked objects in a bucket, as an S3 bake would leave them."""
    s3 = ceph.client()
    for blob in (baked / "store/blobs/sha256").iterdir():
        s3.upload_file(str(blob), bucket, f"kiln/blobs/sha256/{blob.name}")
    for node in make_node(baked, tmp_path, fresh_containerd):
        env = config_mod.load(tmp_path / "images.yaml").environment("it")
        store = config_mod.S3Store(bucket=bucket, endpoint=ceph.endpoint, prefix="kiln/",
                                   region=ceph.region, addressing="path")
        lock = replace(node.lock, images=tuple(
            replace(i, key=f"kiln/{i.key}") for i in node.lock.images))
        node.lock = lock
        yield node, replace(env, store=store)


def reader_environ(ceph: cephdev.Cluster, secret: str | None = None) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ceph.reader.access_key,
            "AWS_SECRET_ACCESS_KEY": secret or ceph.reader.secret_key}


def test_presigned_urls(s3_node: tuple[Node, config_mod.Environment], ceph: cephdev.Cluster,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    node, env = s3_node
    env = replace(env, store=replace(env.store, url_mode="presigned", ttl_seconds=600))
    for key, value in reader_environ(ceph).items():  # presigned by the read-only user
        monkeypatch.setenv(key, value)
    locator = locator_for(env)
    assert isinstance(locator, PresignedLocator)
    render(env, node.lock, node.folder / "dist", locator)
    data_file = node.folder / "dist/it/node/images.data"
    data = data_file.read_text()
    assert "X-Amz-Signature=" in data and "X-Amz-Expires=600" in data
    assert ceph.reader.access_key in data and ceph.writer.access_key not in data
    # a presigned URL is a credential until it expires: 0600, and never in curl's argv
    assert stat.S_IMODE(data_file.stat().st_mode) == 0o600
    spy, argv_log = curl_spy(node.folder)
    done = node.run(env=spy)
    assert done.returncode == 0, done.stderr
    assert_imported(node, {"small", "big"})
    argv = argv_log.read_text()
    assert argv.count("-K -") == 2 and "X-Amz-Signature" not in argv, argv


def test_an_expired_presigned_url_is_refused(
        s3_node: tuple[Node, config_mod.Environment], ceph: cephdev.Cluster) -> None:
    node, env = s3_node
    env = replace(env, store=replace(env.store, url_mode="presigned", ttl_seconds=1))
    render(env, node.lock, node.folder / "dist",
           PresignedLocator(ceph.client(ceph.reader), env.store.bucket, 1))
    time.sleep(2.5)
    done = node.run(env={"KILN_RETRIES": "1"})
    assert done.returncode == 1
    assert done.stderr.count("FAILED: download failed after 1 tries") == 2, done.stderr
    assert "403" in done.stderr
    assert_imported(node, set())


def test_sigv4_with_read_only_credentials_from_the_environment(
        s3_node: tuple[Node, config_mod.Environment], ceph: cephdev.Cluster) -> None:
    """radosgw (like AWS) refuses a SigV4 request without x-amz-content-sha256, which
    curl 7.88's --aws-sigv4 does not send: the importer must."""
    node, env = s3_node
    env = replace(env, store=replace(env.store, url_mode="sigv4"))
    locator = locator_for(env, environ=reader_environ(ceph))
    assert isinstance(locator, SigV4Locator)
    result = render(env, node.lock, node.folder / "dist", locator)
    data = node.folder / "dist/it/node/images.data"
    secret = ceph.reader.secret_key
    assert f"set sigv4_user {ceph.reader.access_key}:{secret}" in data.read_text()
    assert "set sigv4 aws:amz:default:s3" in data.read_text()
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert result.secret
    spy, argv_log = curl_spy(node.folder)
    done = node.run(env=spy)
    assert done.returncode == 0, done.stderr
    assert secret not in done.stderr  # never logged
    assert secret not in argv_log.read_text()  # nor on curl's command line
    assert_imported(node, {"small", "big"})


def test_sigv4_with_a_wrong_secret_is_refused(
        s3_node: tuple[Node, config_mod.Environment], ceph: cephdev.Cluster) -> None:
    node, env = s3_node
    env = replace(env, store=replace(env.store, url_mode="sigv4"))
    wrong = "W" * len(ceph.reader.secret_key)
    render(env, node.lock, node.folder / "dist", locator_for(env, reader_environ(ceph, wrong)))
    done = node.run(env={"KILN_RETRIES": "1"})
    assert done.returncode == 1
    assert done.stderr.count("FAILED: download failed after 1 tries") == 2, done.stderr
    assert "403" in done.stderr and wrong not in done.stderr
    assert_imported(node, set())
