"""storage.parts.PartWriter, the writer of the part-based stores, on a store kept in memory:
parts uploaded from a pool (S3, Azure) or in order in the caller's thread (GCS:
``max_in_flight`` 0), with the buffers it promises and nothing completed after a failed part.
(The real stores run the same writer in tests/test_storage_contract.py.)"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from prefect_dr.errors import DRError, StorageError
from prefect_dr.storage.memory import MemoryStorage
from prefect_dr.storage.parts import CompletingPartWriter, SparePool

PART = 1024


class _Store(MemoryStorage):
    def __init__(self, max_in_flight: int) -> None:
        super().__init__()
        self.max_in_flight = max_in_flight
        self.spare = SparePool(max_in_flight)

    def wrap_error(self, exc: BaseException, action: str, key: str = "") -> DRError:
        return StorageError(f"{action} {key}: {exc}")


class _Writer(CompletingPartWriter):
    """Records each part: its number, the thread that sent it and the buffer it came in."""

    def __init__(self, store: _Store, key: str, fail_at: int | None = None) -> None:
        super().__init__(store, key)
        self.store, self.fail_at = store, fail_at
        self.sent: dict[int, bytes] = {}
        self.threads: set[str] = set()
        self.buffers: set[int] = set()
        self.lock = threading.Lock()
        self.events: list[str] = []

    def _part_size(self, number: int) -> int:
        return PART

    def _start(self) -> None:
        self.events.append("start")

    def _upload_part(self, number: int, body: bytearray) -> int:
        if number == self.fail_at:
            raise OSError("connection reset")
        with self.lock:
            self.sent[number] = bytes(body)
            self.threads.add(threading.current_thread().name)
            self.buffers.add(id(body))
        return number

    def _put_whole(self, data: bytearray) -> None:
        self.events.append("whole")
        self.store.store(self._key, bytes(data), "application/octet-stream")

    def _complete(self, parts: list[Any]) -> None:
        self.events.append("complete")
        assert parts == sorted(self.sent) == list(range(1, len(parts) + 1))
        self.store.store(self._key, b"".join(self.sent[n] for n in parts),
                         "application/octet-stream")

    def _discard(self) -> None:
        self.events.append("discard")


@pytest.mark.parametrize("in_flight", [0, 2])
def test_parts_make_the_whole_object_in_order(in_flight: int) -> None:
    """Random data in writes of random sizes over many parts and a short tail: the object is
    the same; with max_in_flight 0 every part went in the caller's thread from one buffer,
    else from the pool with max_in_flight + 1 buffers at most."""
    store = _Store(in_flight)
    rng = random.Random(in_flight)
    data = rng.randbytes(PART * 9 + 123)
    writer = _Writer(store, "k")
    offset = 0
    while offset < len(data):
        step = rng.randint(1, 3 * PART)
        writer.write(data[offset:offset + step])
        offset += step
    info = writer.close()
    assert info.size == len(data) and store.get_bytes("k") == data
    assert writer.events == ["start", "complete"] and len(writer.sent) == 10
    if in_flight == 0:
        assert writer.threads == {threading.current_thread().name}
        assert len(writer.buffers) == 1
    else:
        assert threading.current_thread().name not in writer.threads
        assert len(writer.buffers) <= in_flight + 1


@pytest.mark.parametrize("in_flight", [0, 2])
def test_a_small_object_is_one_whole_write(in_flight: int) -> None:
    store = _Store(in_flight)
    writer = _Writer(store, "k")
    writer.write(b"x" * (PART - 1))
    writer.close()
    assert writer.events == ["whole"] and store.get_bytes("k") == b"x" * (PART - 1)


def test_a_failed_part_in_order_fails_write_and_close_and_completes_nothing() -> None:
    """max_in_flight 0: the part fails inside ``write``; the writer does not go on sending
    later parts at the failed one's place, ``close`` raises instead of completing a partial
    object, and ``abort`` discards what was started."""
    store = _Store(0)
    writer = _Writer(store, "k", fail_at=2)
    writer.write(b"a" * PART)
    with pytest.raises(StorageError, match="upload k: connection reset"):
        writer.write(b"b" * PART)
    with pytest.raises(StorageError, match="connection reset"):
        writer.write(b"c" * PART)
    with pytest.raises(StorageError, match="connection reset"):
        writer.close()
    assert writer.events == ["start", "discard"]  # close aborted it: no "complete"
    assert store.stat("k") is None and sorted(writer.sent) == [1]
    writer.abort()  # already aborted: nothing more
    assert writer.events == ["start", "discard"]


def test_a_closed_in_order_writer_leaves_its_one_buffer_to_the_next() -> None:
    store = _Store(0)
    first = _Writer(store, "a")
    first.write(b"a" * PART * 2)
    first.close()
    second = _Writer(store, "b")
    second.write(b"b" * PART * 2)
    second.close()
    assert first.buffers == second.buffers and len(first.buffers) == 1
