"""Retries with a deadline, exponential backoff and full jitter, for transient errors only."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from prefect_dr import interrupt

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Who wants to know that an operation is being retried (a live progress line): called with
#: 'retrying WHAT (attempt N, up to S s)' before each wait, and None once it has succeeded.
_observers: list[Callable[[str | None], None]] = []


@contextlib.contextmanager
def observed(observer: Callable[[str | None], None]) -> Iterator[None]:
    """Tell ``observer`` about retries while the block runs."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def _tell(state: str | None) -> None:
    for observer in list(_observers):
        with contextlib.suppress(Exception):  # an observer never changes the operation
            observer(state)


def call(
    fn: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    what: str,
    deadline_s: float | None = 120.0,
    attempts: int | None = None,
    wait_s: Callable[[int], float] | None = None,
    on_retry: Callable[[int, BaseException], None] | None = None,
    interruptible: bool = True,
    base_s: float = 0.5,
    cap_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it succeeds, retrying errors ``transient`` accepts until the deadline.

    Raises the last error once another attempt (as slow as the slowest so far) would end after
    the deadline (``deadline_s``; None: no deadline), or once ``attempts`` calls have failed
    (None: no such bound), or at once for a non-transient error; raises Interrupted instead of
    retrying once a stop signal has arrived (a library may have wrapped the signal's exception
    into an error of its own, which must not be retried). Between attempts it waits
    ``wait_s(n)`` after the n-th failure, by default a random time (full jitter) under
    ``base_s * 2**n`` capped at ``cap_s``. The first retry of an operation logs one WARNING;
    later attempts log at DEBUG, so a store that is down costs one line per operation;
    ``on_retry(n, error)``, when given, is called instead (to log otherwise, or not at all).
    ``interruptible=False`` keeps retrying after a stop signal: for a clean-up, which is what
    runs after one.
    """
    start = clock()
    attempt = 0
    slowest = 0.0
    while True:
        began = clock()
        try:
            result = fn()
        except Exception as exc:
            attempt += 1
            if not transient(exc):
                raise
            if interruptible:
                interrupt.raise_if_noted()
            if attempts is not None and attempt >= attempts:
                raise
            now = clock()
            slowest = max(slowest, now - began)
            delay = (wait_s(attempt) if wait_s is not None
                     else random.uniform(0, min(cap_s, base_s * 2**attempt)))  # noqa: S311
            if deadline_s is not None and now - start + delay + slowest > deadline_s:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            elif attempt == 1:
                log.warning("%s failed, retrying %s: %s", what,
                            f"for up to {deadline_s:.0f}s" if deadline_s is not None
                            else f"({attempts} attempts in all)", type(exc).__name__)
            else:
                log.debug("%s failed (attempt %d), retrying in %.1fs: %s",
                          what, attempt, delay, type(exc).__name__)
            _tell(f"retrying {what} (attempt {attempt + 1}, " + (
                f"up to {deadline_s:.0f} s)" if deadline_s is not None else f"of {attempts})"))
            sleep(delay)
        else:
            if attempt:
                _tell(None)
            return result
