"""Streaming stages: source -> sha256 -> zstd -> age -> sha256 -> storage writer (and back).

Nothing is staged on disk or held whole in memory: memory is bounded by the compressor's
window, age's 64 KiB chunks and the storage writer's in-flight parts. The source (pg_dump's
stdout), zstd's worker threads and the upload pool run concurrently with the encrypting thread.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from prefect_dr import crypto
from prefect_dr.errors import VerificationError
from prefect_dr.storage.base import Writer

READ_SIZE = 1024 * 1024
MAX_ZSTD_THREADS = 4  # zstd memory grows with workers; 4 saturate a 2-4 CPU container
ZSTD_JOB_SIZE = 2 * 1024 * 1024  # per-worker job; the 8 MiB default costs ~40 MiB more RSS


def available_cpus() -> int:
    """CPUs this process may really use: the cgroup v2 CPU quota if any, else the affinity mask
    (on Kubernetes the affinity is the whole node; the quota is the pod's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        if quota != "max":
            cpus = min(cpus or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


def zstd_threads() -> int:
    """Compression worker threads: the available CPUs, at most MAX_ZSTD_THREADS."""
    return min(available_cpus(), MAX_ZSTD_THREADS)


class Progress:
    """Thread-safe byte counters of a running transfer, with an optional listener."""

    def __init__(self, listener: Callable[[dict[str, int]], None] | None = None, *,
                 on_phase: Callable[[str, str, int | None], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self._listener = listener
        self._on_phase = on_phase

    def begin(self, label: str, primary: str, total: int | None = None) -> None:
        """Start a new phase of the operation (a restore's safety backup after its download):
        the counters start again from zero, and the display (``on_phase``) names the phase
        ``label`` and counts its ``primary`` stage, of ``total`` bytes when known."""
        with self._lock:
            self.counters = {}
        if self._on_phase is not None:
            self._on_phase(label, primary, total)

    def add(self, name: str, n: int) -> None:
        """Add ``n`` bytes to counter ``name`` and tell the listener."""
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n
            snapshot = dict(self.counters)
        if self._listener is not None:
            self._listener(snapshot)


class CountingReader(io.RawIOBase):
    """Reads from ``inner``, reporting what passes to ``progress`` under ``counter``."""

    def __init__(self, inner: Any, progress: Progress | None = None,
                 counter: str = "read") -> None:
        super().__init__()
        self._inner, self._progress, self._counter = inner, progress, counter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._seen(data)
        if self._progress is not None and n:
            self._progress.add(self._counter, n)
        return n

    def _seen(self, data: bytes) -> None:
        """Called with every chunk read (subclasses hash it)."""


class HashingReader(CountingReader):
    """Reads from ``inner``, hashing and counting what passes."""

    def __init__(self, inner: BinaryIO, progress: Progress | None = None,
                 counter: str = "read") -> None:
        super().__init__(inner, progress, counter)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def _seen(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)


class HashingWriter(io.RawIOBase):
    """Writes to ``inner``, hashing and counting what passes."""

    def __init__(self, inner: Any, progress: Progress | None = None,
                 counter: str = "written") -> None:
        super().__init__()
        self._inner = inner
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._progress, self._counter = progress, counter

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._inner.write(view)
        self.sha256.update(view)
        n = len(view)
        self.size += n
        if self._progress is not None and n:
            self._progress.add(self._counter, n)
        return n


@dataclass(frozen=True)
class StreamStats:
    """Sizes and digests of one stream, before and after compression + encryption."""

    plaintext_size: int
    plaintext_sha256: str
    size: int
    sha256: str


def encrypt_to(source: BinaryIO, writer: Writer, recipients: list[crypto.Recipient], *,
               zstd_level: int | None = 3, progress: Progress | None = None) -> StreamStats:
    """Stream ``source`` through zstd (unless ``zstd_level`` is None) and age into ``writer``.

    Does not close ``writer``. Errors of the source, the compressor or the writer propagate.
    """
    plain = HashingReader(source, progress, "dumped")
    stream: Any = plain
    if zstd_level is not None:
        params = zstandard.ZstdCompressionParameters.from_level(
            zstd_level, threads=zstd_threads(), job_size=ZSTD_JOB_SIZE, write_checksum=True)
        compressed = zstandard.ZstdCompressor(compression_params=params).stream_reader(
            plain, read_size=READ_SIZE)
        stream = CountingReader(compressed, progress, "compressed")
    out = HashingWriter(writer, progress, "uploaded")
    crypto.encrypt_stream(stream, out, recipients)
    return StreamStats(plain.size, plain.sha256.hexdigest(), out.size, out.sha256.hexdigest())


def decrypt_from(source: BinaryIO, sink: Any, identities: list[crypto.Identity], *,
                 compressed: bool, expect: StreamStats | None = None,
                 progress: Progress | None = None) -> StreamStats:
    """Stream an artifact from ``source`` through age (and zstd) into ``sink``.

    With ``expect``, sizes and digests are checked; raises VerificationError on a mismatch
    (CryptoKeyError/DRError from decryption propagate).
    """
    cipher = HashingReader(source, progress, "downloaded")
    plain = HashingWriter(sink, progress, "restored")
    if compressed:
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_writer(plain, closefd=False, write_size=READ_SIZE) as zwriter:
            crypto.decrypt_stream(cipher, zwriter, identities)
    else:
        crypto.decrypt_stream(cipher, plain, identities)
    stats = StreamStats(plain.size, plain.sha256.hexdigest(), cipher.size,
                        cipher.sha256.hexdigest())
    if expect is not None:
        check(stats, expect)
    return stats


def check(got: StreamStats, expect: StreamStats) -> None:
    """Raise VerificationError naming the first of size/digest that differs."""
    for field, label in (("size", "size"), ("sha256", "ciphertext sha256"),
                         ("plaintext_size", "plaintext size"),
                         ("plaintext_sha256", "plaintext sha256")):
        if getattr(got, field) != getattr(expect, field):
            raise VerificationError(f"{label} mismatch: expected {getattr(expect, field)}, "
                                    f"got {getattr(got, field)}")
