"""The ``watch`` loop: follow the event stream (or poll), debounce, back up, until stopped.

The loop runs in the main thread, so a stop signal (the CLI's handler raises Interrupted)
ends it wherever it waits: in the stream's receive, in a sleep, or inside a backup, which then
stops as the ``backup`` command does (failed status record, lock released). The loop never
returns otherwise: a failed backup, a lost stream or an unreachable database are logged,
counted in :class:`.state.Status` and tried again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prefect_dr import interrupt
from prefect_dr.errors import DRError, Interrupted, LockHeldError
from prefect_dr.watch.state import Backoff, Debouncer, Source, Status
from prefect_dr.watch.stream import StreamDown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """How ``watch`` paces itself (seconds; docs/operations.md, "Continuous protection")."""

    debounce_s: float = 5.0  # quiet time after the last change of a burst
    max_delay_s: float = 20.0  # longest wait after the first change of a burst
    poll_s: float = 10.0  # table poll while the stream is down
    safety_poll_s: float = 20.0  # table poll while the stream is up (0: none)
    retry_s: float = 30.0  # after a failed backup (a held lock too)
    reconnect_max_s: float = 10.0  # longest wait between stream reconnections
    initial_backup: bool = True  # one backup at start: changes while watch was not running

    def __post_init__(self) -> None:
        if self.max_delay_s < self.debounce_s:
            raise ValueError(f"--max-delay ({self.max_delay_s:.0f}s) must be at least "
                             f"--debounce ({self.debounce_s:.0f}s)")


class Stream(Protocol):
    """What the loop needs of the event stream (:class:`.stream.EventStream`)."""

    def open(self) -> None: ...
    def next_change(self, timeout: float) -> str | None: ...
    def close(self) -> None: ...


class Poller(Protocol):
    """What the loop needs of the table poll (:class:`.poll.ConfigPoller`)."""

    def changed(self) -> bool: ...
    def mark(self) -> None: ...
    def close(self) -> None: ...


def run(options: Options, *, backup: Callable[[], str], poller: Poller,
        stream: Stream | None, status: Status,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep) -> None:
    """Watch until a stop signal (Interrupted) or another BaseException ends it.

    ``backup`` takes one config-only backup and returns its id (raising DRError);
    ``stream`` is None when no Prefect API is configured (poll only).
    """
    deb = Debouncer(options.debounce_s, options.max_delay_s)
    backoff = Backoff(1.0, options.reconnect_max_s)
    connected = False
    reconnect_at = clock()
    status.started_at, status.source = wall(), Source.POLL
    if options.initial_backup:  # due at once
        deb.change(clock() - options.max_delay_s)
    try:
        # The tables' baseline comes before the stream: a change made while the stream
        # connects is then seen by the poll that follows the connection (taken after it, the
        # baseline would hold that change and nothing would ever report it).
        _poll(poller, deb, status, clock, wall)
        next_poll = clock() + options.poll_s
        while True:
            interrupt.raise_if_noted()
            now = clock()
            if stream is not None and not connected and now >= reconnect_at:
                connected = _connect(stream, backoff, status)
                if not connected:
                    reconnect_at = clock() + backoff.next_delay()
                else:
                    next_poll = min(next_poll, clock())  # a change while it was down
            if now >= next_poll:
                _poll(poller, deb, status, clock, wall)
                every = options.safety_poll_s if connected else options.poll_s
                next_poll = clock() + every if every > 0 else float("inf")
            if deb.due(clock()):
                _backup(backup, poller, deb, status, options, clock, wall)
                continue
            due_at = deb.due_at()
            wake = min(next_poll, float("inf") if due_at is None else due_at,
                       reconnect_at if stream is not None and not connected else float("inf"))
            timeout = max(min(wake - clock(), 60.0), 0.0)
            if connected and stream is not None:
                try:
                    event = stream.next_change(timeout)
                except StreamDown as exc:
                    connected = False
                    status.source, status.stream_error = Source.POLL, exc.message
                    delay = backoff.next_delay()
                    reconnect_at = clock() + delay
                    next_poll = clock()
                    log.warning("%s; polling the configuration tables every %.0fs, "
                                "reconnecting in %.0fs", exc.message, options.poll_s, delay)
                    continue
                if event is not None:
                    log.info("configuration change announced: %s", event)
                    _seen(deb, status, "stream", clock, wall)
            elif timeout > 0:
                sleep(timeout)
    finally:
        if stream is not None:
            stream.close()
        poller.close()


def _connect(stream: Stream, backoff: Backoff, status: Status) -> bool:
    try:
        stream.open()
    except StreamDown as exc:
        level = logging.DEBUG if status.stream_error == exc.message else logging.WARNING
        log.log(level, "%s; polling the configuration tables", exc.message)
        status.source, status.stream_error = Source.POLL, exc.message
        return False
    backoff.reset()
    status.source, status.stream_error = Source.STREAM, None
    return True


def _seen(deb: Debouncer, status: Status, source: str, clock: Callable[[], float],
          wall: Callable[[], float]) -> None:
    deb.change(clock())
    status.last_change_seen = wall()
    if status.pending_since is None:
        status.pending_since = status.last_change_seen
    status.changes[source] = status.changes.get(source, 0) + 1


def _poll(poller: Poller, deb: Debouncer, status: Status, clock: Callable[[], float],
          wall: Callable[[], float]) -> None:
    try:
        if poller.changed():
            _seen(deb, status, "poll", clock, wall)
    except DRError as exc:
        interrupt.raise_if_noted()
        log.warning("configuration poll failed: %s", exc.message)


def _backup(backup: Callable[[], str], poller: Poller, deb: Debouncer, status: Status,
            options: Options, clock: Callable[[], float], wall: Callable[[], float]) -> None:
    try:  # what the poll has seen up to now is in this backup: no second backup for it
        poller.mark()
    except DRError as exc:
        interrupt.raise_if_noted()
        log.debug("configuration poll before the backup failed: %s", exc.message)
    deb.started(clock())
    status.last_backup_attempt = attempt = wall()
    try:
        backup_id = backup()
    except Interrupted:
        raise
    except DRError as exc:
        interrupt.raise_if_noted()
        deb.failed(clock(), options.retry_s)
        status.failures += 1
        status.last_error = exc.message
        if status.pending_since is None:
            status.pending_since = attempt
        held = "held by another run, " if isinstance(exc, LockHeldError) else ""
        log.error("config-only backup failed (%strying again in %.0fs): %s", held,
                  options.retry_s, exc.message)
        return
    deb.succeeded(clock())
    status.backups += 1
    status.last_backup_success, status.last_backup_id, status.last_error = wall(), backup_id, None
    status.pending_since = status.last_change_seen if deb.pending else None
    log.info("config-only backup %s complete", backup_id, extra={"backup_id": backup_id})
