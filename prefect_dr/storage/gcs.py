"""Google Cloud Storage through google-cloud-storage (``gs://BUCKET/PREFIX``).

Large objects are resumable uploads (storage.parts.PartWriter): a session is opened, 8 MiB
chunks are sent in order (one in memory at a time), and the object appears when the last chunk
is sent; a chunk whose answer is lost is resent from the offset the session reports. The CRC32C
of the whole object is computed while writing and compared with the stored one; reads are
resumable range requests pinned to the object's generation, checked against the stored CRC32C
at the end.

GCS cannot list open resumable sessions, so each writer that opens one leaves a small marker
object under ``.prefect-dr-uploads/`` (outside every repository prefix) until it closes or
aborts; those markers are this backend's incomplete uploads. A marker never holds the session
URL (which would let its reader finish the upload); an abandoned session is never visible and
expires after a week.

Credentials are Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, workload
identity on GKE, the metadata server, ``gcloud auth application-default login``); with
``STORAGE_EMULATOR_HOST`` set, the emulator is used without credentials.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud import storage as gcs

from prefect_dr import interrupt, retry
from prefect_dr.errors import DRError, NotFoundError, StorageError
from prefect_dr.storage import streams
from prefect_dr.storage.base import (
    IncompleteUpload,
    ObjectInfo,
    ObjectRetention,
    Storage,
    put_if_absent_retried,
)
from prefect_dr.storage.parts import PartWriter, SparePool

MiB = 1024 * 1024
CHUNK = 8 * MiB  # a multiple of 256 KiB, as resumable uploads require
READ_CHUNK = 4 * MiB
UPLOADS = ".prefect-dr-uploads/"
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """Whether a GCS error is worth retrying (network trouble, throttling, 5xx)."""
    if isinstance(exc, requests.ConnectionError | requests.Timeout | auth_exc.TransportError):
        return True
    if isinstance(exc, gexc.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    return isinstance(exc, _SessionError) and exc.status in _TRANSIENT_STATUS


class _SessionError(Exception):
    """An unexpected answer of a resumable session."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class GCSStorage(Storage):
    """Storage in one Google Cloud Storage bucket."""

    def __init__(self, bucket: str, *, retry_deadline_s: float = 120.0,
                 emulator_host: str | None = None, client: Any = None) -> None:
        self.bucket_name = bucket
        self.retry_deadline_s = retry_deadline_s
        #: a resumable session takes its chunks in order: each is sent by the writing thread,
        #: from the writer's one buffer (storage.parts.PartWriter)
        self.max_in_flight = 0
        self.spare = SparePool(self.max_in_flight)  # the buffer a finished writer left
        self.timeout = (5.0, max(5.0, min(60.0, retry_deadline_s / 4)))
        emulator_host = emulator_host or os.environ.get("STORAGE_EMULATOR_HOST")
        if client is None:
            try:
                if emulator_host:
                    from google.auth.credentials import AnonymousCredentials

                    client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                                        credentials=AnonymousCredentials(),
                                        client_options={"api_endpoint": emulator_host})
                    self._source = f"none (emulator at {emulator_host})"
                else:
                    client = gcs.Client()
                    self._source = "application default credentials"
            except auth_exc.DefaultCredentialsError:
                raise StorageError(f"open gs://{bucket}: no Google credentials found (set "
                                   "GOOGLE_APPLICATION_CREDENTIALS, use workload identity or "
                                   "`gcloud auth application-default login`)") from None
        else:
            self._source = "given client"
        self.client = client
        self.bucket = client.bucket(bucket)
        self.description = f"gs://{bucket}" + (f" at {emulator_host}" if emulator_host else "")

    # -- error mapping -------------------------------------------------------------------
    def wrap_error(self, exc: BaseException, action: str, key: str = "") -> DRError:
        """A one-line StorageError for a GCS error; after a stop signal a client-side error is
        the stop."""
        stop = interrupt.pending()
        if stop is not None and not isinstance(exc, gexc.GoogleAPICallError):
            return stop
        where = f"{self.description}/{key}" if key else self.description
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return StorageError(f"{action} {where}: cannot reach the Google Cloud Storage "
                                "endpoint")
        if isinstance(exc, auth_exc.GoogleAuthError):
            return StorageError(f"{action} {where}: no usable Google credentials "
                                f"({type(exc).__name__})")
        if isinstance(exc, gexc.NotFound) and not key:
            return NotFoundError(f"{action} {where}: bucket {self.bucket_name} does not exist")
        if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
            return StorageError(f"{action} {where}: Google rejected the credentials "
                                f"({exc.code}); check the service account's role "
                                "(roles/storage.objectAdmin on the bucket)")
        if isinstance(exc, gexc.GoogleAPICallError):
            return StorageError(f"{action} {where}: GCS error {exc.code}")
        return StorageError(f"{action} {where}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, key: str, fn: Any, *, answers: dict[type, Any] | None = None,
              deadline_s: float | None = None) -> Any:
        """``fn()`` with transient errors retried until the deadline; an exception type
        listed in ``answers`` is an answer (its value is returned)."""
        try:
            return retry.call(fn, transient=is_transient, what=what,
                              deadline_s=self.retry_deadline_s if deadline_s is None
                              else deadline_s)
        except (gexc.GoogleAPICallError, requests.RequestException, auth_exc.GoogleAuthError,
                _SessionError) as exc:
            for kind, value in (answers or {}).items():
                if isinstance(exc, kind):
                    return value
            raise self.wrap_error(exc, what, key) from None

    def _blob(self, key: str) -> Any:
        if key.startswith(UPLOADS):
            raise StorageError(f"{self.description}: {key!r} is reserved for upload markers")
        return self.bucket.blob(key)

    def _reload(self, key: str) -> Any:
        blob = self._blob(key)
        found = self._call("stat", key, lambda: blob.reload(timeout=self.timeout, retry=None),
                           answers={gexc.NotFound: _MISSING})
        return None if found is _MISSING else blob

    # -- interface -----------------------------------------------------------------------
    def open_writer(self, key: str, *, content_type: str = "application/octet-stream",
                    tags: dict[str, str] | None = None) -> GCSWriter:
        return GCSWriter(self, key, content_type)

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self._reload(key)
        return None if blob is None else _info(blob)

    def open_reader(self, key: str) -> BinaryIO:
        blob = self._reload(key)
        if blob is None:
            raise NotFoundError(f"no object {key} in {self.description}")
        size, generation = int(blob.size or 0), blob.generation
        expected = ("crc32c", blob.crc32c) if blob.crc32c else None
        pinned = self.bucket.blob(key, generation=generation)  # a replaced object fails

        def open_at(offset: int) -> Iterator[bytes]:
            pos = offset
            while pos < size:
                end = min(size, pos + READ_CHUNK) - 1
                data = pinned.download_as_bytes(start=pos, end=end, checksum=None,
                                                retry=None, timeout=self.timeout)
                pos += len(data)
                yield data

        raw = streams.ResumableReader(key, size, open_at, transient=is_transient,
                                      wrap=lambda exc: self.wrap_error(exc, "read", key),
                                      expected=expected)
        return streams.buffered(raw)

    def _pages(self, what: str, prefix: str) -> Iterator[Any]:
        pages = self._call(what, prefix, lambda: self.client.list_blobs(
            self.bucket_name, prefix=prefix, retry=None, timeout=self.timeout).pages)
        while True:
            page = self._call(what, prefix, lambda: list(next(pages, [_MISSING])))
            if page == [_MISSING]:
                return
            yield from page

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for blob in self._pages("list", prefix):
            if not blob.name.startswith(UPLOADS):
                yield _info(blob)

    def delete(self, key: str) -> None:
        blob = self._blob(key)
        self._call("delete", key, lambda: blob.delete(timeout=self.timeout, retry=None),
                   answers={gexc.NotFound: None})

    def put_if_absent(self, key: str, data: bytes,
                      content_type: str = "application/json") -> bool:
        blob = self._blob(key)
        taken = object()
        return put_if_absent_retried(
            lambda: blob.upload_from_string(data, content_type=content_type,
                                            if_generation_match=0, checksum="crc32c",
                                            retry=None, timeout=self.timeout),
            lambda attempt: self._call("write", key, attempt, answers={
                gexc.PreconditionFailed: taken}) is not taken,
            lambda: self.get_bytes(key) == data)

    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        out = []
        for blob in self._pages("list uploads", UPLOADS + prefix):
            key, _, upload_id = blob.name[len(UPLOADS):].rpartition("/")
            if key.startswith(prefix):
                out.append(IncompleteUpload(key, upload_id, _utc(blob.time_created)))
        return out

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        """Remove the marker of an abandoned upload. The session URL is a capability to
        finish the upload, so it is never stored: the session itself (never visible) expires
        after a week."""
        marker = self.bucket.blob(f"{UPLOADS}{upload.key}/{upload.upload_id}")
        self._call("abort upload", upload.key, lambda: marker.delete(retry=None),
                   answers={gexc.NotFound: None})

    def _cancel(self, session: str, key: str) -> None:
        """Cancel a resumable session (GCS answers 499; a finished or expired one 404/410)."""
        def cancel() -> None:
            resp = self.client._http.request("DELETE", session, timeout=self.timeout)
            if resp.status_code not in (200, 204, 404, 410, 499):
                raise _SessionError(resp.status_code)

        self._call("abort upload", key, cancel, deadline_s=min(5.0, self.retry_deadline_s))

    def retention(self, key: str) -> ObjectRetention | None:
        """Bucket retention policy (per object: its retention expiration), object retention,
        and temporary or event-based holds; None when nothing forbids deleting it."""
        blob = self._reload(key)
        if blob is None:
            return None
        until = _utc(blob.retention_expiration_time)
        mode = "retention policy" if until else None
        own = getattr(blob, "retention", None)
        retain = _utc(getattr(own, "retain_until_time", None)) if own is not None else None
        if retain and (until is None or retain > until):
            until, mode = retain, getattr(own, "mode", None) or "object retention"
        held = bool(blob.temporary_hold) or bool(blob.event_based_hold)
        if until is None and not held:
            return None
        return ObjectRetention(until=until, mode=mode, legal_hold=held)

    # -- what doctor asks ----------------------------------------------------------------
    def _bucket(self) -> Any:
        self._call("open bucket", "", lambda: self.bucket.reload(timeout=self.timeout,
                                                                 retry=None))
        return self.bucket

    def check_access(self) -> None:
        self._bucket()

    def facts(self) -> list[tuple[str, str]]:
        bucket = self._bucket()
        versioning = "Enabled" if bucket.versioning_enabled else "Disabled"
        period = bucket.retention_period
        if period:
            locked = "locked" if bucket.retention_policy_locked else "unlocked"
            policy = f"retention policy {int(period) // 86400} days ({locked})"
        else:
            policy = "no retention policy"
        holds = "default event-based hold" if bucket.default_event_based_hold else "no holds"
        return [("gcs versioning", versioning), ("gcs retention", f"{policy}; {holds}")]

    def credentials_source(self) -> str:
        return self._source


_MISSING = object()


def _utc(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value if isinstance(value, dt.datetime) else None


def _info(blob: Any) -> ObjectInfo:
    return ObjectInfo(key=blob.name, size=int(blob.size or 0),
                      last_modified=_utc(blob.updated) or dt.datetime.now(dt.UTC),
                      etag=str(blob.generation or blob.etag or ""))


class GCSWriter(PartWriter):
    """A small object is one upload, a larger one a resumable session whose 8 MiB chunks go in
    order from one buffer (storage.parts.PartWriter with ``max_in_flight`` 0); the last chunk,
    sent on ``close``, makes the object appear, and its CRC32C is compared with what was sent.
    """

    part_word = "chunk"
    max_parts = sys.maxsize  # a resumable session takes any number of chunks

    def __init__(self, store: GCSStorage, key: str, content_type: str) -> None:
        super().__init__(store, key)
        self._content_type = content_type
        self._blob = store._blob(key)
        self._sent = 0  # bytes the session holds
        self._session: str | None = None
        self._marker: Any = None
        self._crc = streams.Crc32c()

    def _part_size(self, number: int) -> int:
        return CHUNK

    def _seen(self, data: memoryview) -> None:
        self._crc.update(data)

    def _start(self) -> None:
        upload_id = uuid.uuid4().hex
        self._session = self._store._call(
            "start upload", self._key, lambda: self._blob.create_resumable_upload_session(
                content_type=self._content_type, timeout=self._store.timeout,
                checksum=None, retry=None))
        marker = self._store.bucket.blob(f"{UPLOADS}{self._key}/{upload_id}")
        body = json.dumps({"key": self._key, "started": dt.datetime.now(dt.UTC).isoformat()
                           }).encode()
        self._store._call("start upload", self._key, lambda: marker.upload_from_string(
            body, content_type="application/json", retry=None, timeout=self._store.timeout))
        self._marker = marker

    def _upload_part(self, number: int, body: bytearray) -> None:
        self._send(body, final=False)

    def _put_whole(self, data: bytearray) -> None:
        whole = bytes(data)
        self._store._call("write", self._key, lambda: self._blob.upload_from_string(
            whole, content_type=self._content_type, checksum="crc32c", retry=None,
            timeout=self._store.timeout))

    def _finish(self, tail: bytearray) -> None:
        crc = base64.b64encode(self._crc.digest()).decode()
        meta = self._send(tail, final=True) or {}
        if meta.get("crc32c") and meta["crc32c"] != crc:
            self._store.delete(self._key)
            raise StorageError(f"upload {self._key}: the stored object's CRC32C "
                               "differs from what was sent; it was deleted")
        self._session = None  # finished: nothing to cancel
        self._drop_marker()

    def _send(self, buf: bytearray, *, final: bool) -> dict[str, Any] | None:
        """Send ``buf`` to the session (resending from what the session holds after a lost
        answer); returns the object's metadata after the final chunk."""
        start, length = self._sent, len(buf)
        total = str(start + length) if final else "*"

        tried = False

        def put() -> dict[str, Any] | None:
            nonlocal tried
            held, finished = self._held(start + length) if tried else (start, None)
            tried = True
            if finished is not None:  # the last chunk landed; its answer was lost
                return finished
            if held < 0:  # the session is gone: finished (if the object is all there) or dead
                done = self._store._reload(self._key) if final else None
                if done is not None and int(done.size or 0) == start + length:
                    return {"crc32c": done.crc32c}
                raise _SessionError(404)
            if held >= start + length and not final:
                return None
            crange = (f"bytes {held}-{start + length - 1}/{total}" if length > held - start
                      else f"bytes */{total}")
            with memoryview(buf) as view:
                body = bytes(view[held - start:length])
            resp = self._store.client._http.request(
                "PUT", self._session, data=body, headers={"Content-Range": crange},
                timeout=self._store.timeout)
            if resp.status_code in (200, 201):
                return resp.json()
            if resp.status_code == 308 and not final:
                return None
            raise _SessionError(resp.status_code)

        result = self._store._call("upload", self._key, put)
        self._sent += length
        return result

    def _held(self, end: int) -> tuple[int, dict[str, Any] | None]:
        """How many bytes the session holds, and the object's metadata when the upload is
        already finished (``end`` bytes: asked after a lost answer)."""
        resp = self._store.client._http.request(
            "PUT", self._session, headers={"Content-Range": "bytes */*"},
            timeout=self._store.timeout)
        if resp.status_code == 308:
            rng = resp.headers.get("Range", "")
            return (int(rng.rpartition("-")[2]) + 1 if rng else 0), None
        if resp.status_code in (200, 201):
            return end, resp.json()
        if resp.status_code in (404, 410):  # some servers forget a finished session
            return -1, None
        raise _SessionError(resp.status_code)

    def _drop_marker(self) -> None:
        marker, self._marker = self._marker, None
        if marker is not None:
            self._store._call("finish upload", self._key, lambda: marker.delete(retry=None),
                              answers={gexc.NotFound: None},
                              deadline_s=min(5.0, self._store.retry_deadline_s))

    def _discard(self) -> None:
        try:
            if self._session is not None:
                self._store._cancel(self._session, self._key)
            self._drop_marker()
        except DRError:  # clean-up of a failing write: prune removes a marker left behind
            return


def build(url: Any, settings: Any, retry_deadline_s: float) -> GCSStorage:
    """The GCSStorage of repository ``url`` (storage.registry)."""
    return GCSStorage(url.container, retry_deadline_s=retry_deadline_s)
