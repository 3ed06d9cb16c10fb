"""The upload writer of the part-based stores: S3 (multipart upload), Azure Blob (staged
blocks) and GCS (the chunks of a resumable session). The buffers, the write loop, the pool that
uploads parts while the caller keeps writing, ``close`` and ``abort`` are here once; each
backend keeps only its store's calls.

A store whose ``max_in_flight`` is 0 (GCS: a resumable session takes its chunks in order)
uploads each part in the caller's thread, from one buffer.
"""

from __future__ import annotations

import abc
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect_dr.errors import DRError, StorageError
from prefect_dr.storage.base import ObjectInfo, Writer, check_written


class SparePool:
    """Part buffers a finished writer left for the store's next writer (a backup writes its
    artifacts one after another): at most ``max_in_flight`` + 1, all of the first part's
    size, so the memory of a backup stays that of one upload."""

    def __init__(self, max_in_flight: int) -> None:
        self._max = max_in_flight
        self._buffers: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes: a kept one of that size, else a new one."""
        try:
            buf = self._buffers.get_nowait()
        except queue.Empty:
            return bytearray(size)
        return buf if len(buf) == size else bytearray(size)

    def keep(self, buffers: list[bytearray], size: int) -> None:
        """Keep those of ``buffers`` that are ``size`` bytes long, up to the pool's bound."""
        for buf in buffers:
            if len(buf) == size and self._buffers.qsize() <= self._max:
                self._buffers.put(buf)


class PartWriter(Writer):
    """A streaming upload in parts, uploaded by a small pool while the caller keeps writing.

    Memory is (max_in_flight + 1) part buffers, allocated once and reused: the caller fills one
    while the others upload, and ``write`` waits for a free buffer. With ``max_in_flight`` 0
    there is no pool: each part is uploaded in ``write`` itself, in order, from one buffer. An
    object smaller than the first part is one whole write (``_put_whole``); a larger one is
    started (``_start``), its parts uploaded (``_upload_part``) and, on ``close``, its last part
    sent and the object completed (``_finish``; :class:`CompletingPartWriter` for a store that
    completes an object from the list of its parts).
    ``abort`` (also after a failed ``close``) shuts the pool down and lets the backend discard
    what it started (``_discard``); after ``close`` or ``abort`` it does nothing.

    A closed or aborted writer leaves its buffers to the store's next writer (``store.spare``)
    and drops its futures (whose callbacks refer to it),
    so that nothing waits for the cycle collector: the artifacts of a backup, written one after
    another, share one set of buffers. The last part is the current buffer cut short in place.

    ``store`` is the backend (its ``max_in_flight``, its ``spare`` :class:`SparePool` and
    ``wrap_error(exc, action, key)``).
    """

    #: what the store calls a part, for messages
    part_word = "part"
    #: the most parts one object may have
    max_parts = 10_000
    #: name prefix of the pool's threads
    thread_name = "part"
    #: the client library's errors: a part that failed with one is a StorageError on close
    client_errors: tuple[type[BaseException], ...] = ()
    #: wait for the first part's upload inside ``write`` (the upload exists, and is listed,
    #: once ``write`` returns: what S3's start gives at once)
    wait_for_first = False

    def __init__(self, store: Any, key: str) -> None:
        self._store, self._key = store, key
        self._cur: bytearray | None = None
        self._fill = 0
        self._number = 1
        self._futures: list[Future[Any]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._started = False  # the upload was started (``_start``): there may be parts
        self._open = False  # ``_start`` returned (after it failed, the next part starts again)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._allocated = 0
        self._done = False
        self._failed: BaseException | None = None

    # -- the store's calls -------------------------------------------------------------------
    @abc.abstractmethod
    def _part_size(self, number: int) -> int:
        """Size of part ``number`` (1-based)."""

    def _start(self) -> None:
        """Start the upload, before the first part is submitted. Raises StorageError."""

    @abc.abstractmethod
    def _upload_part(self, number: int, body: bytearray) -> Any:
        """Upload part ``number`` (runs in the pool); what completing the object needs of it."""

    @abc.abstractmethod
    def _put_whole(self, data: bytearray) -> None:
        """Write a whole object smaller than one part. Raises StorageError."""

    @abc.abstractmethod
    def _finish(self, tail: bytearray) -> None:
        """Upload the last part (``tail``, possibly empty) of a started upload and make the
        object visible. Raises StorageError."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Clean up what an aborted upload left in the store; never raises (what is left,
        prune removes)."""

    def _seen(self, data: memoryview) -> None:
        """Every byte written passes here once, in order (a whole-object digest)."""

    # -- the writer --------------------------------------------------------------------------
    def _buffer(self, size: int) -> bytearray:
        """A part buffer of ``size`` bytes: a new one while fewer than max_in_flight + 1 exist,
        else the next one an upload gives back (waiting for it)."""
        if self._allocated <= self._store.max_in_flight:
            self._allocated += 1
            return self._store.spare.take(size)
        buf = self._free.get()
        return buf if len(buf) == size else bytearray(size)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise StorageError(f"write after close/abort of {self._key}")
        view = memoryview(data).cast("B")
        n = len(view)
        self._seen(view)
        while view:
            if self._failed is not None:
                raise self._failure()
            if self._cur is None:
                self._cur, self._fill = self._buffer(self._part_size(self._number)), 0
            take = min(len(view), len(self._cur) - self._fill)
            self._cur[self._fill:self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._cur):
                buf, self._cur = self._cur, None
                self._submit(buf)
        self.bytes_written += n
        return n

    def _submit(self, buf: bytearray) -> None:
        if self._number > self.max_parts:
            raise StorageError(f"upload {self._key}: more than {self.max_parts} "
                               f"{self.part_word}s")
        if not self._open:
            self._started = True
            self._start()
            self._open = True
            if self._store.max_in_flight:
                self._pool = ThreadPoolExecutor(self._store.max_in_flight,
                                                thread_name_prefix=self.thread_name)
        number = self._number
        self._number += 1
        if self._pool is None:  # in order, in the caller's thread: its buffer is free after
            try:
                result = self._run(number, buf)
            except Exception:
                raise self._failure() from None
            finally:
                self._free.put(buf)
            self._futures.append(_done(result))
            return
        fut = self._pool.submit(self._run, number, buf)
        fut.add_done_callback(lambda f: self._free.put(buf))
        self._futures.append(fut)
        if number == 1 and self.wait_for_first:
            self._result(fut)

    def _failure(self) -> DRError:
        """The error of the part that failed (``_failed``), as a DRError."""
        failed = self._failed
        if isinstance(failed, DRError):
            return failed
        return self._store.wrap_error(failed, "upload", self._key)

    def _run(self, number: int, buf: bytearray) -> Any:
        try:
            return self._upload_part(number, buf)
        except BaseException as exc:
            self._failed = exc
            raise

    def _result(self, fut: Future[Any]) -> Any:
        try:
            return fut.result()
        except self.client_errors as exc:
            raise self._store.wrap_error(exc, "upload", self._key) from None

    def close(self) -> ObjectInfo:
        if self._done:
            raise StorageError(f"{self._key} already closed")
        # the last part is the current buffer cut short in place: no copy of up to a part
        tail, self._cur = (self._cur if self._cur is not None else bytearray()), None
        del tail[self._fill:]
        try:
            if not self._started:
                self._put_whole(tail)
            elif self._pool is None and self._failed is not None:
                raise self._failure()  # a part sent by ``write`` failed: the object is not whole
            else:
                self._finish(tail)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._shutdown()
        return check_written(self._store, self._key, self.bytes_written)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures = []  # their done-callbacks refer to this writer: no cycle left
        buffers = []
        while True:
            try:
                buffers.append(self._free.get_nowait())
            except queue.Empty:
                break
        self._store.spare.keep(buffers, self._part_size(1))

    def abort(self) -> None:
        if self._done:
            return  # closed or aborted already: nothing is open
        self._done = True
        self._cur = None
        self._shutdown()
        self._discard()


def _done(result: Any) -> Future[Any]:
    """A future holding ``result`` (a part uploaded in the caller's thread)."""
    fut: Future[Any] = Future()
    fut.set_result(result)
    return fut


class CompletingPartWriter(PartWriter):
    """A :class:`PartWriter` for a store that makes an object visible from the list of its
    uploaded parts in one last call (S3's CompleteMultipartUpload, Azure's block list): the
    last part is one more part, then ``_complete`` gets every part's result, in order."""

    @abc.abstractmethod
    def _complete(self, parts: list[Any]) -> None:
        """Make the object of the uploaded ``parts`` visible. Raises StorageError."""

    def _finish(self, tail: bytearray) -> None:
        if tail:
            self._submit(tail)
        self._complete([self._result(fut) for fut in self._futures])
