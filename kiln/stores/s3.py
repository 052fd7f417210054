"""S3-compatible stores (MinIO, Ceph RGW, AWS) through boto3.

Credentials come only from boto3's standard chain. The compressed stream is spooled (memory,
then a temp file) until its sha256, and so its content-addressed key, is known (bytes already
on disk are read again from there instead: put_source); then it goes up in one PUT, or as a
multipart upload with parts in parallel straight to that key (S3 shows a multipart object only
once complete, so the key never holds part of one). Abort (an error, Ctrl-C) aborts the
multipart upload: nothing is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import math
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO, cast

import boto3
import botocore.config
import botocore.exceptions

from kiln import config
from kiln.errors import Cancelled, KilnError
from kiln.files import spool, spool_dir
from kiln.stores import Entry, Source, SourceStream, StoreError, sha256_of

MIN_PART = 8 << 20
MAX_PARTS = 10_000
MULTIPART_THRESHOLD = 128 << 20  # above this, a parallel multipart upload; else one PUT
UPLOAD_THREADS = 6
THRESHOLD_ENV = "KILN_MULTIPART_THRESHOLD"


def multipart_threshold() -> int:
    """Objects above this many bytes go up in parallel parts ($KILN_MULTIPART_THRESHOLD)."""
    value = os.environ.get(THRESHOLD_ENV, "")
    return max(MIN_PART, int(value)) if value.isdigit() else MULTIPART_THRESHOLD


def part_size_for(size: int) -> int:
    """A part size that fits ``size`` in 9,000 parts, in whole MiB, at least 8 MiB.

    50 GB -> 6 MiB needed -> 8 MiB parts (80 GB would fit); 200 GB -> 22 MiB.
    """
    needed = math.ceil(size / 9000)
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
    """Spools the compressed stream (memory, then a temp file), then uploads under its key.

    The key is the stream's sha256, known only at the end. Spooling the *compressed* bytes
    locally costs a little disk; the alternative, streaming to a staging key and copying it
    server-side, makes the storage cluster rewrite every object (50 GB for a 50 GB image).
    Bytes that already lie on disk need no spool: put_source reads them again from there.
    """

    def __init__(self, store: S3ObjectStore, cancel: threading.Event | None) -> None:
        self.store = store
        self.cancel = cancel
        # The writer owns the spool from write() to commit()/abort(), which close it.
        self.spool = spool()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self.spool.write(chunk)
        except OSError as exc:
            reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise StoreError(f"{reason} while spooling to {spool_dir()}") from None
        self.size += len(chunk)

    def commit(self, key: str) -> bool:
        try:
            self.spool.flush()
            return self.store.put_source(key, _Spooled(self.spool, self.size), self.cancel)
        finally:
            self.spool.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.spool.close()


class _Spooled:
    """A spool as a Source: the PUT reads it as a stream, parts read it at their offsets."""

    def __init__(self, spooled: tempfile.SpooledTemporaryFile[bytes], size: int) -> None:
        self.spool = spooled
        self.size = size
        self._fd: int | None = None
        self._lock = threading.Lock()

    def open(self, cancel: threading.Event | None = None) -> SourceStream:
        self.spool.seek(0)
        return self.spool

    def read_at(self, offset: int, size: int) -> bytes:
        with self._lock:
            if self._fd is None:
                self.spool.rollover()  # a real file, so that parts can be read at offsets
                self._fd = self.spool.fileno()
        return os.pread(self._fd, size, offset)


class _Upload:
    """One object to its content address: in one PUT, or in parallel parts straight to the
    key (S3 shows a multipart object only once complete); aborted on error or Ctrl-C."""

    def __init__(self, store: S3ObjectStore, key: str, source: Source,
                 cancel: threading.Event | None) -> None:
        self.store = store
        self.client = store.client
        self.key = key
        self.source = source
        self.size = source.size
        self.cancel = cancel or threading.Event()
        self.upload_id: str | None = None

    def run(self) -> bool:
        key = self.key
        try:
            if (self.store.stat(key) == self.size
                    and self.store.verify(key, key.rsplit("/", 1)[-1], self.size) is not False):
                self.store.touch(key)  # reused now: a prune's grace period starts again
                return False
            if self.cancel.is_set():
                raise Cancelled("interrupted")
            if self.size <= multipart_threshold():
                self.client.put_object(Bucket=self.store.bucket, Key=key,
                                       Body=self.source.open(self.cancel),
                                       ContentLength=self.size)
            else:
                self._multipart(key)
            if self.cancel.is_set():
                # interrupted while the last request landed: the key was absent before
                # (stat above), so taking it away leaves the store as it was
                self.client.delete_object(Bucket=self.store.bucket, Key=key)
                raise Cancelled("interrupted")
            return True
        except KilnError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise translate(exc, f"s3://{self.store.bucket}/{key}") from None
        except BaseException:
            self.abort()
            raise

    def _multipart(self, key: str) -> None:
        """Parts in parallel straight to ``key``: S3 shows it only once complete."""
        part = part_size_for(self.size)
        started = self.client.create_multipart_upload(Bucket=self.store.bucket, Key=key)
        self.upload_id = started["UploadId"]
        futures = [
            self.store.submit(self._upload_part, number, offset, min(part, self.size - offset))
            for number, offset in enumerate(range(0, self.size, part), start=1)
        ]
        try:
            while not all(f.done() for f in futures):
                if self.cancel.is_set():
                    raise Cancelled("interrupted")
                wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                for failed in (f for f in futures if f.done() and f.exception()):
                    failed.result()
            parts = [f.result() for f in futures]
            if self.cancel.is_set():  # interrupted while the last parts landed
                raise Cancelled("interrupted")
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # no part may land after the abort
            raise
        self.client.complete_multipart_upload(Bucket=self.store.bucket, Key=key,
                                              UploadId=self.upload_id,
                                              MultipartUpload={"Parts": parts})
        self.upload_id = None

    def _upload_part(self, number: int, offset: int, length: int) -> dict[str, Any]:
        if self.cancel.is_set():
            raise Cancelled("interrupted")
        data = self.source.read_at(offset, length)
        try:
            answer = self.client.upload_part(Bucket=self.store.bucket, Key=self.key,
                                             UploadId=self.upload_id, PartNumber=number,
                                             Body=data)
        except Exception as exc:
            raise translate(exc, f"s3://{self.store.bucket}/{self.key} part {number}") from None
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key,
                                                   UploadId=self.upload_id)
            self.upload_id = None


class S3ObjectStore:
    def __init__(self, settings: config.S3Store, client: Any = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        if client is None:
            boto_config = botocore.config.Config(
                s3={"addressing_style": settings.addressing},
                signature_version="s3v4",  # presigned URLs too: SigV2 is gone from AWS
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=UPLOAD_THREADS * 4,
                connect_timeout=10, read_timeout=120,
                # by default botocore >= 1.36 sends each upload over HTTPS as aws-chunked with
                # a trailing checksum, which S3 servers short of the newest refuse (radosgw 16:
                # MissingContentLength): checksums only where the operation requires one
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=settings.endpoint, region_name=settings.region,
                verify=str(settings.ca_bundle) if settings.ca_bundle else None,
                config=boto_config,
            )
        self.client = client
        # One pool and one bound on parts in flight for every writer: memory stays bounded
        # however many images are baked at once.
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(UPLOAD_THREADS + 2)
        self._pool_lock = threading.Lock()

    def submit(self, fn: Callable[..., dict[str, Any]], *args: Any) -> Future[dict[str, Any]]:
        """Run ``fn(*args)`` on the upload pool; blocks while too many parts are in flight."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="kiln-part")
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

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

    def head(self, key: str, **extra: str) -> dict[str, Any] | None:
        """HEAD of ``key``: its headers, or None when there is no such object."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key, **extra))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise translate(exc, f"s3://{self.bucket}/{key}") from None
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None

    def stat(self, key: str) -> int | None:
        head = self.head(key)
        return None if head is None else int(head["ContentLength"])

    def writer(self, size_hint: int, cancel: threading.Event | None = None) -> S3Writer:
        return S3Writer(self, cancel)

    def put_source(self, key: str, source: Source, cancel: threading.Event | None = None) -> bool:
        return _Upload(self, key, source, cancel).run()

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

    def list(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[str(item["Key"])] = int(item["Size"])
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{prefix}") from None
        return found

    def entries(self, prefix: str) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[str(item["Key"])] = Entry(int(item["Size"]),
                                                    item["LastModified"].timestamp())
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{prefix}") from None
        return found

    def partials(self) -> dict[str, Entry]:
        """Unfinished multipart uploads under the prefix, as ``KEY?uploadId=ID``."""
        found: dict[str, Entry] = {}
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Uploads", []):
                    upload = f"{item['Key']}?uploadId={item['UploadId']}"
                    found[upload] = Entry(0, item["Initiated"].timestamp())
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{self.prefix} uploads") from None
        return found

    def drop_partial(self, upload: str) -> None:
        key, marker, upload_id = upload.partition("?uploadId=")
        if not marker:
            raise StoreError(f"{upload} is not an unfinished upload")
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None

    def verify(self, key: str, sha256: str, size: int, deep: bool = False) -> bool | None:
        """The server's own SHA-256 checksum when it kept a whole-object one (an upload made
        with one; a multipart upload's is a checksum of part checksums, "...-N", not
        comparable); else, with ``deep``, the object read and hashed; else None."""
        head = self.head(key, ChecksumMode="ENABLED")
        if head is None or int(head["ContentLength"]) != size:
            return False
        checksum = str(head.get("ChecksumSHA256") or "")
        if checksum and "-" not in checksum:
            return checksum == base64.b64encode(bytes.fromhex(sha256)).decode()
        if not deep:
            return None
        with self.open_read(key) as stream:
            return sha256_of(stream) == sha256

    def modified(self, key: str) -> float | None:
        head = self.head(key)
        return None if head is None else float(head["LastModified"].timestamp())

    def touch(self, key: str) -> None:
        """Copy the object onto itself: its LastModified becomes now (one server-side copy;
        objects over 5 GiB, which one copy cannot take, are left as they are)."""
        size = self.stat(key)
        if size is None or size > 5 << 30:
            return
        try:
            self.client.copy_object(Bucket=self.bucket, Key=key, MetadataDirective="REPLACE",
                                    CopySource={"Bucket": self.bucket, "Key": key})
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None

    def open_read(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:
            raise translate(exc, f"s3://{self.bucket}/{key}") from None
        return cast(BinaryIO, body)

    def facts(self) -> dict[str, str]:
        facts = {"type": "s3", "bucket": self.bucket, "prefix": self.prefix}
        if self.settings.endpoint:
            facts["endpoint"] = self.settings.endpoint
        if self.settings.url:
            facts["url"] = self.settings.url
        return facts
