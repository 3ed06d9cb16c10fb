"""Reading objects back, shared by the Azure and GCS backends: resumable, checksum-verified.

A backend gives ``ResumableReader`` a function that opens the object at an offset (pinned to
the version that was stat'ed, so a replaced object fails instead of being spliced) and yields
its bytes in chunks; after a dropped connection the reader reopens at the offset it reached.
When the store keeps a whole-object digest (Azure's Content-MD5, GCS's MD5 or CRC32C), the
reader hashes what it returns and fails at the end when the digest differs.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any

from prefect_dr import interrupt
from prefect_dr.errors import DRError, StorageError

MAX_REOPENS = 5


class Crc32c:
    """A hashlib-like CRC32C (google-crc32c, which google-cloud-storage installs)."""

    def __init__(self) -> None:
        import google_crc32c

        self._crc = google_crc32c.Checksum()

    def update(self, data: bytes | memoryview) -> None:
        """Add ``data``."""
        self._crc.update(bytes(data))

    def digest(self) -> bytes:
        """The 4-byte big-endian checksum."""
        return self._crc.digest()


def hasher(algorithm: str) -> Any:
    """A new hash object for ``md5`` or ``crc32c``."""
    if algorithm == "crc32c":
        return Crc32c()
    return hashlib.new(algorithm, usedforsecurity=False)


class ResumableReader(io.RawIOBase):
    """A raw stream over ``open_at(offset)`` chunks.

    ``transient(exc)`` tells which errors reopen the stream (at most MAX_REOPENS times);
    ``wrap(exc)`` turns any other library error into a DRError. ``expected`` is
    ``(algorithm, base64 digest)`` of the whole object, or None.
    """

    def __init__(self, key: str, size: int, open_at: Callable[[int], Iterator[bytes]], *,
                 transient: Callable[[BaseException], bool],
                 wrap: Callable[[BaseException], DRError],
                 expected: tuple[str, str] | None = None) -> None:
        self._key, self._size, self._open_at = key, size, open_at
        self._transient, self._wrap = transient, wrap
        self._pos = 0
        self._chunks: Iterator[bytes] | None = None
        self._pending = memoryview(b"")
        self._reopens = 0
        self._expected = expected
        self._hash = hasher(expected[0]) if expected else None

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        while True:
            try:
                if self._chunks is None:
                    self._chunks = self._open_at(self._pos)
                return next(self._chunks, b"")
            except DRError:
                raise
            except Exception as exc:
                interrupt.raise_if_noted()
                self._chunks = None
                if not self._transient(exc) or self._reopens >= MAX_REOPENS:
                    raise self._wrap(exc) from None
                self._reopens += 1

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size:
            self._check_digest()
            return 0
        if not self._pending:
            data = self._next_chunk()
            if not data:
                raise StorageError(f"read {self._key}: stream ended at {self._pos} of "
                                   f"{self._size} bytes")
            self._pending = memoryview(data)
        n = min(len(buffer), len(self._pending), self._size - self._pos)
        buffer[:n] = self._pending[:n]
        if self._hash is not None:
            self._hash.update(self._pending[:n])
        self._pending = self._pending[n:]
        self._pos += n
        if self._pos >= self._size:
            self._check_digest()
        return n

    def _check_digest(self) -> None:
        if self._hash is None or self._expected is None:
            return
        got = base64.b64encode(self._hash.digest()).decode()
        self._hash = None  # checked once
        if got != self._expected[1]:
            raise StorageError(f"read {self._key}: {self._expected[0]} checksum mismatch "
                               "(the stored object is corrupt)")

    def close(self) -> None:
        closer = getattr(self._chunks, "close", None)
        if closer is not None:
            closer()
        self._chunks = None
        super().close()


def buffered(raw: ResumableReader) -> io.BufferedReader:
    """The reader callers get: buffered in 1 MiB."""
    return io.BufferedReader(raw, buffer_size=1024 * 1024)
