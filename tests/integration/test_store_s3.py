"""The S3 store's side of issue 10 §3, against an S3 server over real HTTP (moto's server
process today). What moto cannot prove: that a real server keeps and returns SHA-256
checksums (kiln sends none on upload, so verify() falls back to size, or to reading the
object back with --verify-store), and real LastModified clocks; the radosgw tier covers those.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import boto3
import pytest

from kiln.config import S3Store
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
    assert bake(config, "--quiet") == 0  # size only: moto keeps no checksum
    assert "did not hold the bytes" not in capsys.readouterr().err
    assert bake(config, "--quiet", "--verify-store") == 0
    assert f"store object {image['key']} did not hold the bytes" in capsys.readouterr().err
    stored = s3.get_object(Bucket=bucket, Key=image["key"])["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == image["sha256"]
    assert read_lock(config)["images"] == [image]
    assert set(objects(s3_endpoint, bucket)) == {image["key"], "kiln/locks/it/images.lock.json"}
    assert json.loads(s3.get_object(Bucket=bucket, Key="kiln/locks/it/images.lock.json")[
        "Body"].read())["images"] == [image]
