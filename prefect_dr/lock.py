"""The backup lock: a PostgreSQL advisory lock plus a lock object in the bucket.

The advisory lock is authoritative for runs against the same database server. The lock object
(host, pid, database session, start, run id) says who holds it, and guards where advisory locks
cannot (a transaction-pooling proxy in front of PostgreSQL). A lock object is taken over when it
is older than the stale age, when its database session has ended (its run died, on whatever
host or pod), or when it names a process of this host that no longer exists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from types import TracebackType

import psycopg

from prefect_dr import interrupt
from prefect_dr.errors import DRError, LockHeldError, StorageError
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"prefect-dr:backup").digest()[:8], "big",
                              signed=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_session(conn: psycopg.Connection) -> None:
    """Cancel whatever ``conn`` is running (bounded wait) and close it, without taking the
    connection's own lock, which an abandoned operation may hold. Never raises."""
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=CANCEL_TIMEOUT_S)
    with contextlib.suppress(Exception):
        conn.close()


#: How long ending a busy session waits for the server to take the cancel request.
CANCEL_TIMEOUT_S = 3.0


class BackupLock:
    """Context manager holding the backup lock of one database in one repository."""

    def __init__(self, conn: psycopg.Connection, storage: Storage, key: str, run_id: str, *,
                 stale_after: dt.timedelta,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._conn, self._storage, self._key = conn, storage, key
        self._run_id, self._stale_after, self._clock = run_id, stale_after, clock
        self._advisory = False
        self._object = False

    def _record(self) -> bytes:
        row = self._conn.execute("SELECT pg_backend_pid()").fetchone()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "backend_pid": int(row[0]) if row else None,
                           "started_at": self._clock().isoformat(),
                           "run_id": self._run_id}).encode()

    def _backend_gone(self, holder: dict[str, object]) -> bool:
        """Whether the holder's database session has ended: it
        died with its run, wherever that ran (another pod, another host)."""
        pid = holder.get("backend_pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return False
        row = self._conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)).fetchone()
        return bool(row) and row[0] == 0

    def acquire(self) -> None:
        """Take both locks. Raises LockHeldError naming the holder when another run has them."""
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()
        if not row or not row[0]:
            raise LockHeldError("another backup of this database is running "
                                f"({self._holder() or 'holder unknown'}); try again later")
        self._advisory = True
        if self._storage.put_if_absent(self._key, self._record()):
            self._object = True
            return
        holder = self._read()
        if holder is not None and not self._is_stale(holder):
            raise LockHeldError(f"backup lock {self._key} is held by {self._describe(holder)}; "
                                f"it counts as stale after {self._stale_after}")
        log.warning("taking over stale backup lock %s (%s)", self._key,
                    self._describe(holder) if holder else "unreadable")
        self._storage.delete(self._key)
        if not self._storage.put_if_absent(self._key, self._record()):
            raise LockHeldError(f"backup lock {self._key} was taken by another run meanwhile")
        self._object = True

    def _read(self) -> dict[str, object] | None:
        try:
            data = json.loads(self._storage.get_bytes(self._key))
        except (DRError, ValueError):  # absent (NotFoundError), unreadable, not JSON
            interrupt.raise_if_noted()
            return None
        return data if isinstance(data, dict) else None

    def _holder(self) -> str:
        holder = self._read()
        return self._describe(holder) if holder else ""

    @staticmethod
    def _describe(holder: dict[str, object]) -> str:
        return (f"host {holder.get('host')} pid {holder.get('pid')} "
                f"since {holder.get('started_at')}")

    def _is_stale(self, holder: dict[str, object]) -> bool:
        try:
            started = dt.datetime.fromisoformat(str(holder["started_at"]))
        except (KeyError, ValueError):
            return True
        if self._clock() - started > self._stale_after or self._backend_gone(holder):
            return True
        pid = holder.get("pid")
        return (holder.get("host") == socket.gethostname() and isinstance(pid, int)
                and not pid_alive(pid))

    def release(self) -> None:
        """Drop both locks (the object only if it is still ours). Never raises."""
        if self._object:
            try:
                holder = self._read()
                if holder is None or holder.get("run_id") == self._run_id:
                    self._storage.delete(self._key)
            except StorageError as exc:
                log.warning("could not remove lock object %s: %s", self._key, exc.message)
            self._object = False
        if self._advisory:
            self._advisory = False
            if not self._conn.lock.acquire(blocking=False):
                # An abandoned operation (a COPY left by a stop signal) still holds the
                # connection: a statement would wait for it for ever. Ending the session
                # releases the advisory lock as surely.
                end_session(self._conn)
                return
            self._conn.lock.release()
            # On error the session ends with the connection, and the lock with it.
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))

    def __enter__(self) -> BackupLock:
        try:
            self.acquire()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
