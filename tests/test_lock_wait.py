"""backup --lock-wait: a held lock is tried again until the wait is over (no real time: the
clock and sleep are the test's)."""

from __future__ import annotations

import pytest

from prefect_dr.backup import LOCK_POLL_SECONDS, take_lock
from prefect_dr.errors import LockHeldError
from tests.test_retry import FakeClock as _Clock  # the clock that moves only when told


class _Lock:
    def __init__(self, free_after: int) -> None:
        self.tries, self.free_after, self.released = 0, free_after, 0

    def acquire(self) -> None:
        self.tries += 1
        if self.tries <= self.free_after:
            raise LockHeldError("another backup of this database is running")

    def release(self) -> None:
        self.released += 1




def test_a_lock_freed_within_the_wait_is_taken() -> None:
    lock, clock = _Lock(free_after=3), _Clock()
    take_lock(lock, 60, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert lock.tries == 4 and clock.now == 3 * LOCK_POLL_SECONDS
    assert lock.released == 3  # each failed try let go of what it had taken


def test_a_lock_held_past_the_wait_is_exit_11_naming_the_wait() -> None:
    lock, clock = _Lock(free_after=1000), _Clock()
    with pytest.raises(LockHeldError, match=r"waited 12s, --lock-wait") as caught:
        take_lock(lock, 12, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert caught.value.exit_code == 11 and clock.now == 12


def test_without_a_wait_a_held_lock_fails_at_once() -> None:
    lock, clock = _Lock(free_after=1), _Clock()
    with pytest.raises(LockHeldError) as caught:
        take_lock(lock, 0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert "waited" not in caught.value.message and lock.tries == 1 and clock.now == 0
