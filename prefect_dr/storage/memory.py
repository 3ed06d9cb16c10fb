"""An in-memory Storage for unit tests; honours the same contract as S3."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from prefect_dr.errors import NotFoundError, StorageError
from prefect_dr.storage.base import (
    IncompleteUpload,
    ObjectInfo,
    ObjectRetention,
    Storage,
    Writer,
)


class MemoryWriter(Writer):
    """Buffers in memory; the object appears on ``close``."""

    def __init__(self, store: MemoryStorage, key: str, content_type: str) -> None:
        self._store, self._key, self._content_type = store, key, content_type
        self._buf = io.BytesIO()
        self._done = False
        self._upload = IncompleteUpload(key, uuid.uuid4().hex, store.now())
        store.uploads[self._upload.upload_id] = self._upload

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise StorageError(f"write after close/abort of {self._key}")
        if self._store.fail_writes:
            raise StorageError(f"injected write failure for {self._key}")
        n = self._buf.write(data)
        self.bytes_written += n
        return n

    def close(self) -> ObjectInfo:
        if self._done:
            raise StorageError(f"{self._key} already closed")
        self._done = True
        self._store.uploads.pop(self._upload.upload_id, None)
        return self._store.store(self._key, self._buf.getvalue(), self._content_type)

    def abort(self) -> None:
        self._done = True
        self._store.uploads.pop(self._upload.upload_id, None)


class MemoryStorage(Storage):
    """Objects in a dict; thread-safe; ``fail_writes`` injects write failures.

    Tests put Object Lock states in ``retentions``; deleting an object they lock raises
    StorageError (like deleting a locked object version on S3).
    """

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self.uploads: dict[str, IncompleteUpload] = {}
        self.fail_writes = False
        self.retentions: dict[str, ObjectRetention] = {}
        self.description = "memory"
        self._lock = threading.Lock()
        self._tick = 0

    def now(self) -> dt.datetime:
        """A strictly increasing timestamp, so last_modified orders writes."""
        with self._lock:
            self._tick += 1
            return dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=self._tick)

    def store(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        """Make an object visible (used by writers)."""
        info = ObjectInfo(key=key, size=len(data), last_modified=self.now(),
                          etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                          metadata={"content-type": content_type})
        with self._lock:
            self.objects[key] = (bytes(data), info)
        return info

    def open_writer(self, key: str, *, content_type: str = "application/octet-stream",
                    tags: dict[str, str] | None = None) -> Writer:
        return MemoryWriter(self, key, content_type)

    def open_reader(self, key: str) -> BinaryIO:
        with self._lock:
            item = self.objects.get(key)
        if item is None:
            raise NotFoundError(f"no object {key}")
        return io.BytesIO(item[0])

    def stat(self, key: str) -> ObjectInfo | None:
        with self._lock:
            item = self.objects.get(key)
        return item[1] if item else None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            infos = [info for key, (_, info) in self.objects.items() if key.startswith(prefix)]
        yield from sorted(infos, key=lambda i: i.key)

    def delete(self, key: str) -> None:
        lock = self.retentions.get(key)
        if lock is not None and key in self.objects and lock.blocks_delete(
                dt.datetime.now(dt.UTC)):
            raise StorageError(f"delete {key}: AccessDenied (Object Lock: {lock.describe()})")
        with self._lock:
            self.objects.pop(key, None)

    def put_if_absent(self, key: str, data: bytes,
                      content_type: str = "application/json") -> bool:
        with self._lock:
            if key in self.objects:
                return False
            self.objects[key] = (bytes(data), ObjectInfo(key, len(data), dt.datetime.now(dt.UTC)))
        return True

    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        return [u for u in self.uploads.values() if u.key.startswith(prefix)]

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        self.uploads.pop(upload.upload_id, None)

    def retention(self, key: str) -> ObjectRetention | None:
        return self.retentions.get(key)
