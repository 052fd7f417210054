"""S3-compatible stores (MinIO, Ceph RGW, AWS) through boto3.

Credentials come only from boto3's standard chain. A stream too large for one request is
uploaded as a multipart upload to a staging key, parts in parallel; once its sha256 is known
it is copied server-side to its content-addressed key and the staging object is deleted, so the
final key only ever holds a complete object. Abort (an error, Ctrl-C) aborts the multipart
upload: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import math
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from kiln import config
from kiln.stores import StoreError

MIN_PART = 8 << 20
MAX_PARTS = 10_000
SINGLE_COPY_LIMIT = 5 << 30  # CopyObject's limit; larger objects are copied in parts
UPLOAD_THREADS = 6


def part_size_for(size_hint: int) -> int:
    """A part size that fits ``size_hint`` (+20%) in 9,000 parts, in whole MiB, at least 8 MiB.

    50 GB -> 7 MiB needed -> 8 MiB parts (80 GB fit); 100 GB -> 14 MiB.  Parts also double
    every 1,000 parts (see S3Writer), so an estimate that was far too low still fits.
    """
    needed = math.ceil(size_hint * 1.2 / 9000)
    return max(MIN_PART, math.ceil(needed / (1 << 20)) << 20)


def translate(exc: Exception, what: str) -> StoreError:
    """A one-line reason for a boto3/botocore failure."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StoreError(f"{what}: no S3 credentials found (set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role)")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError |
                  botocore.exceptions.ConnectTimeoutError):
        return StoreError(f"{what}: store unreachable: {exc}")
    if isinstance(exc, botocore.exceptions.SSLError):
        return StoreError(f"{what}: TLS failed (set the store's ca_bundle?): {exc}")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "403") or status == 403:
            return StoreError(f"{what}: access denied ({code or status})")
        if code in ("NoSuchBucket", "404") and "bucket" in what:
            return StoreError(f"{what}: no such bucket")
        return StoreError(f"{what}: {code or status}: {error.get('Message', '')}".rstrip(": "))
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StoreError(f"{what}: {exc}")
    raise exc


class S3Writer:
    def __init__(self, store: S3ObjectStore, size_hint: int) -> None:
        self.store = store
        self.client = store.client
        self.part_size = part_size_for(size_hint)
        self.buffer = bytearray()
        self.size = 0
        self.staging = f"{store.prefix}staging/{uuid.uuid4().hex}"
        self.upload_id: str | None = None
        self.parts: list[Future[dict[str, Any]]] = []
        self.completed = False
        self.slots = threading.BoundedSemaphore(UPLOAD_THREADS + 1)
        self.pool: ThreadPoolExecutor | None = None

    def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        self.size += len(chunk)
        while len(self.buffer) >= self.current_part_size():
            cut = self.current_part_size()
            data = bytes(self.buffer[:cut])
            del self.buffer[:cut]
            self._submit(data)

    def current_part_size(self) -> int:
        return self.part_size << (len(self.parts) // 1000)

    def _submit(self, data: bytes) -> None:
        if self.upload_id is None:
            try:
                started = self.client.create_multipart_upload(Bucket=self.store.bucket,
                                                              Key=self.staging)
            except Exception as exc:
                raise translate(exc, f"s3://{self.store.bucket}/{self.staging}") from None
            self.upload_id = started["UploadId"]
            self.pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="kiln-part")
        for done in [f for f in self.parts if f.done()]:
            done.result()  # surface a failed part now, not at the end
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise StoreError(f"object larger than {MAX_PARTS} parts")
        self.slots.acquire()
        assert self.pool is not None
        future = self.pool.submit(self._upload_part, number, data)
        future.add_done_callback(lambda _: self.slots.release())
        self.parts.append(future)

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        try:
            answer = self.client.upload_part(Bucket=self.store.bucket, Key=self.staging,
                                             UploadId=self.upload_id, PartNumber=number,
                                             Body=data)
        except Exception as exc:
            raise translate(exc, f"s3://{self.store.bucket}/{self.staging} part {number}"
                            ) from None
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def commit(self, key: str) -> bool:
        bucket = self.store.bucket
        try:
            if self.upload_id is None:  # small: one request straight to the final key
                if self.store.stat(key) == self.size:
                    return False
                self.client.put_object(Bucket=bucket, Key=key, Body=bytes(self.buffer))
                return True
            if self.buffer:
                self._submit(bytes(self.buffer))
                self.buffer.clear()
            parts = [f.result() for f in self.parts]
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=self.staging, UploadId=self.upload_id,
                MultipartUpload={"Parts": parts})
            self.completed = True
            if self.store.stat(key) == self.size:
                return False
            source = {"Bucket": bucket, "Key": self.staging}
            if self.size <= SINGLE_COPY_LIMIT:
                self.client.copy_object(Bucket=bucket, Key=key, CopySource=source)
            else:
                self.client.copy(source, bucket, key)
            return True
        except StoreError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise translate(exc, f"s3://{bucket}/{key}") from None
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.completed:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.store.bucket, Key=self.staging)
            self.completed = False

    def abort(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.upload_id is not None and not self.completed:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.staging,
                                                   UploadId=self.upload_id)
            self.upload_id = None
        self._cleanup()


class S3ObjectStore:
    def __init__(self, settings: config.S3Store, client: Any = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        if client is None:
            boto_config = botocore.config.Config(
                s3={"addressing_style": settings.addressing},
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=UPLOAD_THREADS * 4,
                connect_timeout=10, read_timeout=120,
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=settings.endpoint, region_name=settings.region,
                verify=str(settings.ca_bundle) if settings.ca_bundle else None,
                config=boto_config,
            )
        self.client = client

    def describe(self) -> str:
        where = f" at {self.settings.endpoint}" if self.settings.endpoint else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise translate(exc, f"bucket {self.bucket!r}{self._at()}") from None

    def _at(self) -> str:
        return f" at {self.settings.endpoint}" if self.settings.endpoint else ""

    def stat(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise translate(exc, f"s3://{self.bucket}/{key}") from None
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None
        return int(head["ContentLength"])

    def writer(self, size_hint: int) -> S3Writer:
        return S3Writer(self, size_hint)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None

    def facts(self) -> dict[str, str]:
        facts = {"type": "s3", "bucket": self.bucket, "prefix": self.prefix}
        if self.settings.endpoint:
            facts["endpoint"] = self.settings.endpoint
        if self.settings.url:
            facts["url"] = self.settings.url
        return facts
