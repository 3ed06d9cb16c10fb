"""The storage interface every backend implements, and the value types it returns.

Semantics every backend honours (tests/test_storage_contract.py checks them against each one):
- an object written through ``open_writer`` is invisible until ``Writer.close`` returns; ``abort``
  (or an exception inside ``with``) leaves nothing behind;
- ``stat`` of a missing key returns None, ``open_reader``/``get_bytes`` raise NotFoundError;
- ``list`` yields every object under a prefix in key order, across pages;
- ``delete`` of a missing key is not an error;
- ``put_if_absent`` writes only when no object has the key and says whether it did;
- ``retention`` tells whether a lock (S3 Object Lock, an Azure immutability policy or legal
  hold, a GCS retention policy or hold) forbids deleting an object (None: nothing does);
- ``check_access``, ``facts`` and ``credentials_source`` answer ``doctor`` and ``config show``
  for the backend, so no caller needs to know which backend it has.

"Incomplete uploads" are whatever a backend leaves behind from a write that was neither closed
nor aborted (S3 multipart uploads, uncommitted Azure blocks, GCS resumable sessions, temporary
files): each backend lists and removes its own.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

from prefect_dr.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows of one object."""

    key: str
    size: int
    last_modified: dt.datetime
    etag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: dt.datetime


@dataclass(frozen=True)
class ObjectRetention:
    """The Object Lock state of one object: a retain-until date and/or a legal hold."""

    until: dt.datetime | None = None
    mode: str | None = None  # "GOVERNANCE" | "COMPLIANCE"
    legal_hold: bool = False

    def blocks_delete(self, now: dt.datetime) -> bool:
        """Whether deleting the object is forbidden at ``now``."""
        return self.legal_hold or (self.until is not None and self.until > now)

    def describe(self) -> str:
        """A short human description, e.g. 'COMPLIANCE until 2027-01-01T00:00:00+00:00'."""
        parts = []
        if self.until is not None:
            parts.append(f"{self.mode or 'retention'} until {self.until.isoformat()}")
        if self.legal_hold:
            parts.append("legal hold")
        return ", ".join(parts) or "no lock"


class Writer(abc.ABC):
    """A streaming upload. Use as a context manager: an exception aborts it."""

    bytes_written: int = 0

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length. Raises StorageError on failure."""

    @abc.abstractmethod
    def close(self) -> ObjectInfo:
        """Finish the upload and make the object visible. Raises StorageError on failure."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; never raises."""

    def writable(self) -> bool:
        """File-like protocol: a Writer is writable."""
        return True

    def flush(self) -> None:  # noqa: B027 - deliberately a no-op for every backend
        """File-like protocol: nothing to flush until ``close``."""

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


def check_written(storage: Storage, key: str, written: int) -> ObjectInfo:
    """The stored object's info after an upload, checked: it must exist and hold exactly the
    ``written`` bytes. Raises StorageError otherwise (or when the store cannot be read)."""
    info = storage.stat(key)
    if info is None or info.size != written:
        raise StorageError(f"upload {key}: store reports "
                           f"{info.size if info else 'no object'} bytes, wrote {written}")
    return info


def put_if_absent_retried(put: Callable[[], object],
                          written: Callable[[Callable[[], object]], bool],
                          holds: Callable[[], bool]) -> bool:
    """``put_if_absent`` for a store reached over a network, where a write's answer can be
    lost. ``written(attempt)`` runs ``attempt`` (which calls ``put``) with the backend's
    retries and says whether the store took the write (False: its answer was "the key is
    taken"). Taken after a retry, the object may be our own first attempt, which landed before
    its answer was lost: it is ours when ``holds()`` (it holds exactly our bytes)."""
    attempts = 0

    def attempt() -> object:
        nonlocal attempts
        attempts += 1
        return put()

    if written(attempt):
        return True
    return attempts > 1 and holds()


class Storage(abc.ABC):
    """An object store holding one repository's objects."""

    #: A human description (the repository URL, endpoint) for messages; never holds credentials.
    description: str = ""
    #: The repository URL this storage was opened for ("" when built by hand, as in tests).
    url: str = ""

    @abc.abstractmethod
    def open_writer(self, key: str, *, content_type: str = "application/octet-stream",
                    tags: dict[str, str] | None = None) -> Writer:
        """Start a streaming upload to ``key``."""

    @abc.abstractmethod
    def open_reader(self, key: str) -> BinaryIO:
        """Open ``key`` for streaming reads. Raises NotFoundError when absent."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or None when absent."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes,
                      content_type: str = "application/json") -> bool:
        """Write ``data`` at ``key`` only if nothing is there; return whether it was written."""

    @abc.abstractmethod
    def list_incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        """Return the multipart uploads under ``prefix`` never completed nor aborted."""

    @abc.abstractmethod
    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        """Abort one incomplete upload."""

    def retention(self, key: str) -> ObjectRetention | None:
        """The Object Lock state of ``key``, or None when nothing forbids deleting it.

        Backends without Object Lock return None. Raises StorageError when the state cannot
        be read (a caller about to delete must not guess).
        """
        return None

    def check_access(self) -> None:
        """Raise StorageError (NotFoundError for a missing bucket/container/directory) unless
        the repository exists and the credentials may use it."""
        self.stat(".prefect-dr-access-check")

    def facts(self) -> list[tuple[str, str]]:
        """(name, description) pairs of what protects the repository (versioning, locks,
        immutability), for ``doctor``. Raises StorageError when one cannot be read."""
        return []

    def credentials_source(self) -> str:
        """Where this backend's credentials come from, masked (never a secret)."""
        return "none needed"

    def put_bytes(self, key: str, data: bytes,
                  content_type: str = "application/octet-stream") -> ObjectInfo:
        """Write a whole small object."""
        with self.open_writer(key, content_type=content_type) as writer:
            writer.write(data)
            return writer.close()

    def get_bytes(self, key: str) -> bytes:
        """Read a whole small object. Raises NotFoundError when absent."""
        with self.open_reader(key) as reader:
            return reader.read()
