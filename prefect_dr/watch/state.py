"""The pure decisions of ``watch``: when a backup is due, when to reconnect, what happened.

Every function takes the time as an argument (seconds of a monotonic clock), so tests drive
them with a fake clock. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Source(enum.StrEnum):
    """Where ``watch`` learns of changes right now."""

    STREAM = "stream"  # Prefect's event stream is connected (and the safety poll runs slowly)
    POLL = "poll"  # the stream is down: the configuration tables are polled


@dataclass
class Debouncer:
    """Turns a burst of changes into one backup.

    A backup is due once no change has been seen for ``quiet_s`` seconds, or ``max_delay_s``
    seconds after the first change not yet backed up, whichever comes first; never before
    ``retry_at`` (set after a failed backup). A change seen while a backup runs makes another
    backup due after it (the snapshot may have been taken before the change).
    """

    quiet_s: float
    max_delay_s: float
    first_change: float | None = None  # first change not yet covered by a backup
    last_change: float | None = None
    retry_at: float = 0.0
    running_since: float | None = None
    _held: float | None = None  # first_change of the backup in progress, for a failure

    def __post_init__(self) -> None:
        if self.quiet_s < 0 or self.max_delay_s < self.quiet_s:
            raise ValueError("the debounce must be >= 0 and the maximum delay >= the debounce")

    @property
    def pending(self) -> bool:
        """Whether a change is waiting for a backup."""
        return self.first_change is not None

    def change(self, now: float) -> None:
        """Note a configuration change seen at ``now``."""
        if self.first_change is None:
            self.first_change = now
        self.last_change = now

    def due_at(self) -> float | None:
        """When the next backup is due (None: no change waiting)."""
        if self.first_change is None or self.last_change is None:
            return None
        return max(min(self.last_change + self.quiet_s, self.first_change + self.max_delay_s),
                   self.retry_at)

    def due(self, now: float) -> bool:
        """Whether a backup should start at ``now``."""
        at = self.due_at()
        return at is not None and now >= at and self.running_since is None

    def started(self, now: float) -> None:
        """A backup starts: it covers every change seen so far."""
        self.running_since, self._held = now, self.first_change
        self.first_change = self.last_change = None

    def succeeded(self, now: float) -> None:
        """The backup finished; changes seen meanwhile stay pending."""
        self.running_since = self._held = None
        self.retry_at = 0.0

    def failed(self, now: float, retry_in: float) -> None:
        """The backup failed: its changes are pending again, retried ``retry_in`` s from now."""
        held, self.running_since, self._held = self._held, None, None
        if held is not None:
            self.first_change = min(held, self.first_change or held)
            self.last_change = self.last_change if self.last_change is not None else held
        self.retry_at = now + retry_in


@dataclass
class Backoff:
    """Delays between attempts of something that fails (the stream's reconnection):
    ``first_s``, doubling up to ``max_s``; :meth:`reset` after a success."""

    first_s: float
    max_s: float
    _next: float = 0.0

    def next_delay(self) -> float:
        """The delay before the next attempt (and double the one after)."""
        delay = self._next or self.first_s
        self._next = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """The last attempt succeeded."""
        self._next = 0.0


@dataclass
class Status:
    """What ``watch`` reports (``/metrics``, log lines). Times are Unix seconds."""

    source: Source = Source.POLL
    started_at: float = 0.0
    last_change_seen: float | None = None  # a change noticed (stream or poll)
    last_backup_success: float | None = None
    last_backup_attempt: float | None = None
    last_backup_id: str | None = None
    last_error: str | None = None  # of the last backup, None after a success
    stream_error: str | None = None  # why the stream is down
    pending_since: float | None = None  # oldest change not yet in a completed backup
    backups: int = 0
    failures: int = 0
    changes: dict[str, int] = field(default_factory=dict)  # per source: stream, poll

    def to_dict(self) -> dict[str, object]:
        """The status as JSON-ready data."""
        return {"source": self.source.value, "started_at": self.started_at,
                "last_change_seen": self.last_change_seen,
                "last_backup_success": self.last_backup_success,
                "last_backup_attempt": self.last_backup_attempt,
                "last_backup_id": self.last_backup_id, "last_error": self.last_error,
                "stream_error": self.stream_error,
                "pending_since": self.pending_since, "backups": self.backups,
                "failures": self.failures, "changes": dict(self.changes)}
