"""S3 (and S3-compatible) storage through boto3: streaming multipart writes, resumable reads."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, BinaryIO
from urllib.parse import quote

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from prefect_dr import retry
from prefect_dr.errors import DRError, NotFoundError, StorageError
from prefect_dr.storage.base import IncompleteUpload, ObjectInfo, ObjectRetention, Writer
from prefect_dr.storage.parts import CompletingPartWriter, SparePool
from prefect_dr.storage.remote import PartSizes, RemoteStorage
from prefect_dr.units import MiB

log = logging.getLogger(__name__)

#: 8 MiB, doubling every 1000 parts up to 512 MiB: 10,000 parts hold > 2 TiB
PARTS = PartSizes(first=8 * MiB, cap=512 * MiB, step=1000, most=10_000)
MIN_PART, part_size_for = PARTS.first, PARTS.size  # what tests size their data by

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                     "InvalidToken", "ExpiredToken", "Forbidden", "403"}
# Answers meaning "this object (or bucket) has no retention / legal hold": not an error.
_NO_LOCK_CODES = {"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError",
                  "NoSuchObjectLegalHold", "InvalidRequest", "NotImplemented"}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "500", "502", "503", "504", "RequestTimeTooSkewed"}


@dataclass(frozen=True)
class S3Options:
    """Per-object options applied to every upload."""

    storage_class: str | None = None
    sse: str | None = None  # "AES256" or "aws:kms"
    sse_kms_key_id: str | None = None
    object_lock_mode: str | None = None  # "GOVERNANCE" | "COMPLIANCE"
    object_lock_days: int | None = None

    def put_args(self) -> dict[str, Any]:
        """The boto3 arguments these options add to put_object/create_multipart_upload."""
        args: dict[str, Any] = {}
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.sse:
            args["ServerSideEncryption"] = self.sse
            if self.sse == "aws:kms" and self.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.object_lock_mode and self.object_lock_days:
            args["ObjectLockMode"] = self.object_lock_mode
            args["ObjectLockRetainUntilDate"] = (
                dt.datetime.now(dt.UTC) + dt.timedelta(days=self.object_lock_days))
        return args


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError (or '' for other errors)."""
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 error is worth retrying (network trouble, throttling, 5xx)."""
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectionClosedError
                  | bce.ReadTimeoutError | bce.ConnectTimeoutError):
        return True
    return error_code(exc) in _TRANSIENT_CODES


class S3Storage(RemoteStorage):
    """Storage on one bucket of S3 or an S3-compatible store."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None,
                 region: str | None = None, options: S3Options | None = None,
                 max_in_flight: int = 2, retry_deadline_s: float = 120.0,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.options = options or S3Options()
        self.max_in_flight = max_in_flight
        self.retry_deadline_s = retry_deadline_s
        #: part buffers a finished writer left for the next one (storage.parts.SparePool)
        self.spare = SparePool(max_in_flight)
        self.description = f"s3://{bucket}" + (f" at {endpoint_url}" if endpoint_url else "")
        if client is None:
            # Our retry.call owns retries (with the deadline); botocore makes one attempt,
            # and a stalled store costs at most read_timeout per attempt.
            config = Config(
                signature_version="s3v4",
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=5, read_timeout=max(5.0, min(60.0, retry_deadline_s / 4)),
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=max(10, max_in_flight * 2),
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.client = client

    # -- error mapping -------------------------------------------------------------------
    # botocore wraps any exception raised inside a request, a stop signal's too: only S3's
    # own answers (ClientError) stay errors after a stop
    client_errors = (bce.ClientError, bce.BotoCoreError)
    answer_errors = (bce.ClientError,)
    taken_codes = ("PreconditionFailed", "412", "ConditionalRequestConflict")
    retry_prefix = "S3 "
    is_transient = staticmethod(is_transient)
    error_code = staticmethod(error_code)

    def describe_error(self, exc: BaseException, doing: str) -> DRError:
        """A one-line StorageError for a boto3/botocore error (NotFoundError for a missing
        bucket)."""
        code = error_code(exc)
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return StorageError(f"{doing}: no AWS credentials found (set "
                                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)")
        if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError):
            return StorageError(f"{doing}: cannot reach the S3 endpoint")
        if code == "NoSuchBucket":
            return NotFoundError(f"{doing}: bucket {self.bucket} does not exist")
        if code in _CREDENTIAL_CODES:
            return StorageError(f"{doing}: S3 rejected the credentials ({code}); "
                                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the policy")
        if code:
            return StorageError(f"{doing}: S3 error {code}")
        return StorageError(f"{doing}: {type(exc).__name__}: {exc}")

    # -- interface -----------------------------------------------------------------------
    def open_writer(self, key: str, *, content_type: str = "application/octet-stream",
                    tags: dict[str, str] | None = None) -> Writer:
        return S3Writer(self, key, content_type, tags or {})

    def open_reader(self, key: str) -> BinaryIO:
        info = self.stat(key)
        if info is None:
            raise NotFoundError(f"no object {key} in {self.description}")
        return io.BufferedReader(_RangeReader(self, key, info), buffer_size=MiB)

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._call("stat", key, self.client.head_object, answers=_NO_OBJECT,
                          Bucket=self.bucket, Key=key)
        if head is _MISSING:
            return None
        return ObjectInfo(key=key, size=int(head["ContentLength"]),
                          last_modified=head["LastModified"], etag=head.get("ETag", ""),
                          metadata=dict(head.get("Metadata", {})))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", prefix, self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"], size=int(item["Size"]),
                                 last_modified=item["LastModified"], etag=item.get("ETag", ""))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def _create(self, key: str, data: bytes, content_type: str) -> object:
        return self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                      ContentType=content_type, IfNoneMatch="*",
                                      **self.options.put_args())

    def _holds(self, key: str, data: bytes) -> bool:
        body = self._call("read", key, self.client.get_object, answers=_NO_OBJECT,
                          Bucket=self.bucket, Key=key)
        return body is not _MISSING and body["Body"].read() == data

    def list_incomplete_uploads(self, prefix: str, *,
                                deadline_s: float | None = None) -> list[IncompleteUpload]:
        out: list[IncompleteUpload] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._call("list uploads", prefix, self.client.list_multipart_uploads,
                              deadline_s=deadline_s, **kwargs)
            for up in page.get("Uploads", []):
                out.append(IncompleteUpload(up["Key"], up["UploadId"], up["Initiated"]))
            if not page.get("IsTruncated"):
                return out
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        self.abort_upload(upload.key, upload.upload_id)

    def abort_upload(self, key: str, upload_id: str, *, deadline_s: float | None = None) -> None:
        """Abort multipart upload ``upload_id`` of ``key``; one already gone (or aborted by an
        attempt whose answer was lost) is fine. Raises StorageError."""
        self._call("abort upload", key, self.client.abort_multipart_upload,
                   answers={"NoSuchUpload": None, "404": None}, deadline_s=deadline_s,
                   Bucket=self.bucket, Key=key, UploadId=upload_id)

    @cached_property
    def object_lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock enabled (read once). Raises StorageError."""
        return self.bucket_object_lock() != "Disabled"

    def retention(self, key: str) -> ObjectRetention | None:
        """Retain-until date and legal hold of ``key``; None on buckets without Object Lock,
        for objects without either, and for missing objects. Raises StorageError when S3
        refuses to tell (grant s3:GetObjectRetention and s3:GetObjectLegalHold)."""
        if not self.object_lock_enabled:
            return None
        resp = self._lock_call("read retention", key, self.client.get_object_retention)
        if resp is _MISSING:
            return None
        found = (resp or {}).get("Retention") or {}
        until = found.get("RetainUntilDate")
        if isinstance(until, dt.datetime):
            until = until.astimezone(dt.UTC)
        hold = self._lock_call("read legal hold", key, self.client.get_object_legal_hold)
        if hold is _MISSING:
            return None
        held = ((hold or {}).get("LegalHold") or {}).get("Status") == "ON"
        if until is None and not held:
            return None
        return ObjectRetention(until=until, mode=found.get("Mode"), legal_hold=held)

    def _lock_call(self, what: str, key: str, fn: Any) -> Any:
        """One Object Lock read: None when nothing is configured, _MISSING for no object."""
        return self._call(what, key, fn, answers={**dict.fromkeys(_NO_LOCK_CODES),
                                                  **_NO_OBJECT},
                          Bucket=self.bucket, Key=key)

    # -- bucket facts for doctor ---------------------------------------------------------
    def bucket_versioning(self) -> str:
        """'Enabled', 'Suspended' or 'Disabled'. Raises StorageError."""
        resp = self._call("get versioning", "", self.client.get_bucket_versioning,
                          Bucket=self.bucket)
        return str(resp.get("Status") or "Disabled")

    def bucket_object_lock(self) -> str:
        """A description of the bucket's Object Lock configuration, 'Disabled' when none."""
        resp = self._call("get object lock", "", self.client.get_object_lock_configuration,
                          answers=dict.fromkeys(("ObjectLockConfigurationNotFoundError", "404",
                                                 "NotImplemented",
                                                 "NoSuchObjectLockConfiguration")),
                          Bucket=self.bucket)
        if resp is None:
            return "Disabled"
        conf = resp.get("ObjectLockConfiguration", {})
        if conf.get("ObjectLockEnabled") != "Enabled":
            return "Disabled"
        rule = conf.get("Rule", {}).get("DefaultRetention")
        if rule:
            span = rule.get("Days") or rule.get("Years")
            unit = "days" if rule.get("Days") else "years"
            return f"Enabled (default {rule.get('Mode')} {span} {unit})"
        return "Enabled (no default retention)"

    def head_bucket(self) -> None:
        """Raise StorageError unless the bucket exists and the credentials may use it."""
        self._call("open bucket", "", self.client.head_bucket, Bucket=self.bucket)

    def check_access(self) -> None:
        self.head_bucket()

    def facts(self) -> list[tuple[str, str]]:
        return [("s3 versioning", self.bucket_versioning()),
                ("s3 object lock", self.bucket_object_lock())]

    def credentials_source(self) -> str:
        return credentials_source()


_MISSING = object()
_CLEANUP_DEADLINE_S = 5.0  # retry budget of each clean-up call after a failed upload
_NO_OBJECT = dict.fromkeys(("404", "NoSuchKey", "NotFound"), _MISSING)


class S3Writer(CompletingPartWriter):
    """Multipart upload (storage.parts.CompletingPartWriter: parts uploaded by a small pool
    while the caller keeps writing, buffers reused). Each part carries a SHA-256 checksum, so
    buckets with Object Lock (which require one) accept it. Small objects use one PUT.
    """

    part_word = "part"
    max_parts = PARTS.most
    thread_name = "s3-part"
    client_errors = (bce.BotoCoreError, bce.ClientError)

    def __init__(self, s3: S3Storage, key: str, content_type: str, tags: dict[str, str]) -> None:
        super().__init__(s3, key)
        self._s3, self._content_type, self._tags = s3, content_type, tags
        self._upload_id: str | None = None
        self._starting = False  # a start was sent; its answer (the upload id) may be lost

    def _create_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self._s3.bucket, "Key": self._key,
                                "ContentType": self._content_type, **self._s3.options.put_args()}
        if self._tags:
            args["Tagging"] = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                                       for k, v in self._tags.items())
        return args

    def _part_size(self, number: int) -> int:
        return PARTS.size(number)

    def _start(self) -> None:
        self._starting = True
        resp = self._s3._call("start upload", self._key, self._s3.client.create_multipart_upload,
                              ChecksumAlgorithm="SHA256", **self._create_args())
        self._upload_id = resp["UploadId"]

    def _upload_part(self, number: int, body: bytearray) -> dict[str, Any]:
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        resp = retry.call(
            lambda: self._s3.client.upload_part(
                Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id,
                PartNumber=number, Body=body, ChecksumSHA256=checksum),
            transient=is_transient, what=f"S3 upload part {number}",
            deadline_s=self._s3.retry_deadline_s)
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum}

    def _put_whole(self, data: bytearray) -> None:
        self._s3._call("write", self._key, self._s3.client.put_object, Body=data,
                       **self._create_args())

    def _complete(self, parts: list[Any]) -> None:
        self._s3._call("complete upload", self._key, self._s3.client.complete_multipart_upload,
                       Bucket=self._s3.bucket, Key=self._key, UploadId=self._upload_id,
                       MultipartUpload={"Parts": parts})

    def _discard(self) -> None:
        upload_ids = [self._upload_id] if self._upload_id is not None else []
        self._upload_id = None
        # Clean-up runs on the failure path, often with S3 in trouble: a short deadline keeps
        # the failure prompt; what is left open, prune removes.
        deadline_s = min(_CLEANUP_DEADLINE_S, self._s3.retry_deadline_s)
        if not upload_ids and self._starting:
            # The start was sent but its answer never arrived (a stop signal or a dropped
            # connection): S3 may hold an upload we have no id for. The key is this run's own.
            try:
                upload_ids = [u.upload_id for u in self._s3.list_incomplete_uploads(
                    self._key, deadline_s=deadline_s) if u.key == self._key]
            except DRError as exc:
                log.warning("an upload of %s may be left open (prune removes it): %s",
                            self._key, exc.message)
        for upload_id in upload_ids:
            try:
                self._s3.abort_upload(self._key, upload_id, deadline_s=deadline_s)
            except DRError as exc:
                log.warning("could not abort upload of %s: %s", self._key, exc.message)


class _RangeReader(io.RawIOBase):
    """Reads an object as a stream; after a dropped connection it resumes at the same offset
    (Range request pinned to the ETag, so a replaced object is detected, not spliced)."""

    def __init__(self, s3: S3Storage, key: str, info: ObjectInfo) -> None:
        self._s3, self._key, self._info = s3, key, info
        self._pos = 0
        self._body: Any = None
        self._failures = 0

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self._s3.bucket, "Key": self._key}
        if self._info.etag:
            args["IfMatch"] = self._info.etag
        if self._pos:
            args["Range"] = f"bytes={self._pos}-"
        resp = self._s3._call("read", self._key, self._s3.client.get_object, **args)
        self._body = resp["Body"]

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._info.size:
            return 0
        while True:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(len(buffer))
                break
            except (bce.ReadTimeoutError, bce.ResponseStreamingError, bce.ConnectionClosedError,
                    bce.IncompleteReadError, ConnectionError) as exc:
                # IncompleteReadError: the connection was closed cleanly (FIN, not a reset)
                # before the body's Content-Length had come
                self._failures += 1
                self._body = None
                if self._failures > 5:
                    raise self._s3.wrap_error(exc, "read", self._key) from None
        if not data:
            if self._pos < self._info.size:
                raise StorageError(f"read {self._key}: stream ended at {self._pos} of "
                                   f"{self._info.size} bytes")
            return 0
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


def credentials_source() -> str:
    """Where boto3 finds credentials: the method and a masked access key, never the secret."""
    creds = boto3.session.Session().get_credentials()
    if creds is None:
        return "none found"
    key = creds.access_key or ""
    shown = f"{key[:4]}...{key[-2:]}" if len(key) > 8 else "***"
    return f"{creds.method} (access key {shown})"


def build(url: Any, settings: Any, retry_deadline_s: float) -> S3Storage:
    """The S3Storage of repository ``url`` (storage.registry): the endpoint and region from
    the URL, else the settings; the upload options from the settings."""
    options = S3Options(
        storage_class=settings.s3_storage_class or None, sse=settings.s3_sse or None,
        sse_kms_key_id=settings.s3_sse_kms_key_id or None,
        object_lock_mode=settings.s3_object_lock_mode or None,
        object_lock_days=settings.s3_object_lock_days or None)
    return S3Storage(url.container,
                     endpoint_url=url.params.get("endpoint") or settings.s3_endpoint_url,
                     region=url.params.get("region") or settings.s3_region, options=options,
                     retry_deadline_s=retry_deadline_s)
