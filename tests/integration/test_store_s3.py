"""The S3 store against a real S3 server: Ceph's radosgw (the `ceph` fixture, kiln.cephdev).
It checks signatures and access as AWS does; like most S3 servers short of AWS it keeps no
SHA-256 checksum of an object (radosgw 16), so verify() falls back to size, or to reading the
object back with --verify-store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from kiln import cephdev
from kiln.cli import main
from kiln.config import S3Store
from kiln.containerd import Ctr
from kiln.localengine import Daemon
from kiln.stores.s3 import S3ObjectStore
from tests.integration.conftest import REG, scratch_context
from tests.integration.test_bake import (  # noqa: F401  (engine_env is a fixture)
    bake,
    engine_env,
    objects,
    read_lock,
    s3_store,
    write_config,
)


def test_entries_partials_verify_and_touch(s3_endpoint: str, bucket: str) -> None:
    store = S3ObjectStore(S3Store(bucket=bucket, endpoint=s3_endpoint, prefix="kiln/"))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    good = b"an object" * 100
    sha = hashlib.sha256(good).hexdigest()
    key = f"kiln/blobs/sha256/{sha}"
    s3.put_object(Bucket=bucket, Key=key, Body=good)
    [entry] = store.entries("kiln/blobs/").values()
    assert entry.size == len(good) and abs(entry.modified - time.time()) < 300
    assert store.verify(key, sha, len(good)) is None  # size only: no server checksum
    assert store.verify(key, sha, len(good), deep=True) is True
    s3.put_object(Bucket=bucket, Key=key, Body=b"X" + good[1:])  # same size, other bytes
    assert store.verify(key, sha, len(good), deep=True) is False
    assert store.verify(key, sha, len(good) + 1) is False
    assert store.verify("kiln/blobs/sha256/" + "0" * 64, "0" * 64, 1) is False
    before = s3.head_object(Bucket=bucket, Key=key)["LastModified"]
    time.sleep(1.1)
    store.touch(key)
    assert s3.head_object(Bucket=bucket, Key=key)["LastModified"] > before
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"kiln/blobs/sha256/{'e' * 64}")
    [partial] = store.partials()
    assert partial == f"kiln/blobs/sha256/{'e' * 64}?uploadId={upload['UploadId']}"
    store.drop_partial(partial)
    assert store.partials() == {}
    store.close()


def test_a_corrupt_s3_object_is_stored_again_with_verify_store(
        tmp_path: Path, engine_env: str, s3_endpoint: str, bucket: str,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    scratch_context(tmp_path / "ctx", "s3 corruption", 64 << 10)
    config = write_config(tmp_path, f"  - {{name: one, ref: {REG}/f/one:v1, build: ctx}}\n",
                          s3_store(s3_endpoint, bucket))
    assert bake(config, "--quiet") == 0
    [image] = read_lock(config)["images"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    body = bytearray(s3.get_object(Bucket=bucket, Key=image["key"])["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=image["key"], Body=bytes(body))
    capsys.readouterr()
    assert bake(config, "--quiet") == 0  # size only: radosgw keeps no checksum
    assert "did not hold the bytes" not in capsys.readouterr().err
    assert bake(config, "--quiet", "--verify-store") == 0
    assert f"store object {image['key']} did not hold the bytes" in capsys.readouterr().err
    stored = s3.get_object(Bucket=bucket, Key=image["key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == image["sha256"]
    assert read_lock(config)["images"] == [image]
    assert set(objects(s3_endpoint, bucket)) == {image["key"], "kiln/locks/it/images.lock.json"}
    assert json.loads(s3.get_object(Bucket=bucket, Key="kiln/locks/it/images.lock.json")[
        "Body"].read())["images"] == [image]


def refusal(call: Callable[[], object]) -> str:
    """The S3 error code ``call`` was refused with, or "accepted"."""
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "accepted"


def test_the_server_checks_signatures_and_access(ceph: cephdev.Cluster, bucket: str) -> None:
    """What moto never checked, so that the tests on top of it cannot pass on a server that
    accepts anything: a wrong secret, an unknown key, and the nodes' keys trying to write."""
    writer, reader = ceph.client(), ceph.client(ceph.reader)
    writer.put_object(Bucket=bucket, Key="kiln/x", Body=b"object")
    assert reader.get_object(Bucket=bucket, Key="kiln/x")["Body"].read() == b"object"
    wrong = ceph.client(replace(ceph.reader, secret_key="W" * 40))
    assert refusal(lambda: wrong.get_object(Bucket=bucket, Key="kiln/x")) == (
        "SignatureDoesNotMatch")
    unknown = ceph.client(replace(ceph.writer, access_key="NOSUCHKEY0000000000X"))
    assert refusal(lambda: unknown.get_object(Bucket=bucket, Key="kiln/x")) == (
        "InvalidAccessKeyId")
    # the nodes' keys GET objects, and do nothing else
    for call in (lambda: reader.put_object(Bucket=bucket, Key="kiln/y", Body=b"no"),
                 lambda: reader.delete_object(Bucket=bucket, Key="kiln/x"),
                 lambda: reader.create_multipart_upload(Bucket=bucket, Key="kiln/z"),
                 lambda: reader.list_objects_v2(Bucket=bucket),
                 lambda: reader.create_bucket(Bucket=f"{bucket}-r")):
        assert refusal(call) == "AccessDenied"
    assert [o["Key"] for o in writer.list_objects_v2(Bucket=bucket)["Contents"]] == ["kiln/x"]


def test_a_multipart_bake_over_https_reaches_a_node_with_read_only_keys(
        tmp_path: Path, engine_env: str, ceph: cephdev.Cluster, bucket: str,  # noqa: F811
        fresh_containerd: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 path as it runs in production, over TLS with a private CA: bake uploads in
    parts; render (sigv4) writes only the nodes' keys; the real importer downloads the object
    with curl --aws-sigv4 --cacert and imports it. (boto3 >= 1.36 sends aws-chunked uploads
    with trailing checksums over HTTPS, which radosgw 16 refuses: MissingContentLength.)"""
    assert ceph.tls_endpoint and ceph.ca_bundle
    shutil.copy(ceph.ca_bundle, tmp_path / "ca.pem")
    scratch_context(tmp_path / "ctx", "multipart", 20 << 20)  # random: 8 + 8 + ~5 MiB parts
    store = (f"{{type: s3, endpoint: '{ceph.tls_endpoint}', bucket: {bucket}, prefix: kiln/, "
             f"region: {ceph.region}, addressing: path, url_mode: sigv4, ca_bundle: ca.pem}}")
    config = write_config(tmp_path, f"  - {{name: mp, ref: {REG}/f/mp:v1, build: ctx}}\n",
                          store, "    node: {containerd_timeout: 60, ca_bundle: ca.pem}\n")
    monkeypatch.setenv("KILN_MULTIPART_THRESHOLD", str(8 << 20))
    assert bake(config, "--quiet") == 0
    [image] = read_lock(config)["images"]
    head = ceph.client().head_object(Bucket=bucket, Key=image["key"])
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == image["size"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph.reader.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph.reader.secret_key)
    assert main(["render", "--env", "it", "--config", str(config)]) == 0
    data = (tmp_path / "dist/it/node/images.data").read_text()
    assert ceph.reader.secret_key in data and ceph.writer.secret_key not in data
    assert f" {ceph.tls_endpoint}/{bucket}/kiln/blobs/sha256/" in data
    done = subprocess.run(["sh", str(tmp_path / "dist/it/node/import-images")],
                          env={**os.environ, "CONTAINERD_ADDRESS": str(fresh_containerd.socket)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    ctr = Ctr(str(fresh_containerd.socket))
    found = ctr.images()[image["ref"]]
    assert ctr.image_id(found.manifest_digest) == image["image_id"]
