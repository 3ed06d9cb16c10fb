"""The state of an unfinished backfill (phase 2 of a restore), kept in the database being
restored: ``prefect_dr_backfill.state``, one row per table still to bring in, with the backup id
and how far it is (docs/operations.md, "Tiered restore"); shared by the history tables' shadow
loads (:mod:`prefect_dr.backfill`) and the split run tables' loads
(:mod:`prefect_dr.runs_backfill`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
from psycopg import sql

from prefect_dr import retry
from prefect_dr.errors import DRError, Interrupted

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = "prefect_dr_backfill"
#: A table's status: ``pending`` (nothing of it loaded), ``ready`` (a history table's shadow
#: table loaded and committed), ``loaded`` (a split run table's rows are in; its foreign keys
#: are restored last, then its row goes).
PENDING, READY, LOADED = "pending", "ready", "loaded"
#: How long phase 2 waits for a live table's lock (a swap, a foreign key added back) before it
#: lets Prefect go on and retries, and how many times.
LOCK_TIMEOUT = "1s"
LOCK_ATTEMPTS = 60
#: Bounds of the memory for each table's index builds (pg_restore uses the server's default,
#: often 64 MB): about half the table's plaintext (the keys of its largest index, sorted in
#: memory instead of spilled), within a quarter of ``effective_cache_size`` (the operator's
#: statement of the server's memory) shared by the loads running at once.
MIN_MAINTENANCE_MEM = 64 << 20
MAX_MAINTENANCE_MEM = 2 << 30


class BackfillError(DRError):
    """A history backfill cannot be started or continued as asked."""


@dataclass(frozen=True)
class TableState:
    """One table of an unfinished backfill."""

    table: str
    backup_id: str
    status: str  # PENDING | READY | LOADED
    rows: int


@dataclass(frozen=True)
class Loaded:
    """What the backfill did for one table."""

    table: str
    rows: int  # rows loaded from the backup
    merged: int  # rows Prefect wrote meanwhile, kept beside them
    seconds: float
    #: a split run table's rows of the backup kept out: Prefect had written their key meanwhile
    skipped: int = 0


def state_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.state",)).fetchone()
    return bool(row and row[0])


def state_of(conn: psycopg.Connection) -> list[TableState]:
    """The tables of an unfinished backfill in ``conn``'s database ([] when there is none)."""
    if not state_exists(conn):
        return []
    rows = conn.execute(sql.SQL("SELECT table_name, backup_id, status, rows FROM {} "
                                "ORDER BY table_name").format(
        sql.Identifier(SCHEMA, "state"))).fetchall()
    return [TableState(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def pending_tables(conn: psycopg.Connection) -> list[str]:
    """Names of the tables an unfinished backfill still has to bring in."""
    return [s.table for s in state_of(conn)]


def describe(states: list[TableState]) -> str:
    """One line for an operator: which backup, which tables, how far."""
    if not states:
        return "no unfinished history backfill"
    parts = ", ".join(f"{s.table} ({s.rows} rows, {s.status})" for s in states)
    return f"unfinished history backfill of backup {states[0].backup_id}: {parts}"


@dataclass
class Budget:
    """What the loads running at once share: the swap (one at a time), the stop flag and the
    connections to cancel when one load fails."""

    workers: int
    stop: threading.Event = field(default_factory=threading.Event)
    swap_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    conns: list[psycopg.Connection] = field(default_factory=list)

    def check(self) -> None:
        """Raise Interrupted when the other loads were told to stop."""
        if self.stop.is_set():
            raise Interrupted("stopped: another history table failed to load")


def finish(conn: psycopg.Connection, tables: list[str]) -> None:
    """Inside the caller's transaction: ``tables`` are done (their state rows go); when they
    were the last, the backfill's schema goes too, in the same transaction, so that a stop
    here leaves no empty state behind (which ``--resume`` would see nothing to do in)."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE table_name = ANY(%s)").format(
        sql.Identifier(SCHEMA, "state")), (tables,))
    if not state_of(conn):
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))


def set_role(conn: psycopg.Connection, role: str | None) -> None:
    """``SET LOCAL ROLE role`` in the current transaction, when there is a role."""
    if role:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))


def briefly_waiting(conn: psycopg.Connection) -> None:
    """Make the current transaction give up a lock after :data:`LOCK_TIMEOUT` (its waiting
    would stop Prefect's writes queued behind it)."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))


def lock_wait_s(attempt: int) -> float:
    """The wait after the ``attempt``-th try found its table locked: 0.2 s more each time, up
    to 2 s."""
    return min(0.2 * attempt, 2.0)


def retry_locked(work: Callable[[], T], what: str, doing: str) -> T:
    """Run ``work`` (one transaction that called :func:`briefly_waiting`) until it gets its
    lock, :data:`LOCK_ATTEMPTS` times at most. Raises BackfillError when it never did (Prefect
    held the lock too long; the backfill can be resumed), and what ``work`` raises."""
    try:
        return retry.call(
            work, transient=lambda exc: isinstance(exc, psycopg.errors.LockNotAvailable),
            what=what, deadline_s=None, attempts=LOCK_ATTEMPTS,
            wait_s=lambda n: lock_wait_s(n), on_retry=lambda n, _exc: log.info(
                "backfill: %s is busy, retrying (%d)", what, n))
    except psycopg.errors.LockNotAvailable:
        raise BackfillError(f"could not {doing} in {LOCK_ATTEMPTS} attempts; run 'prefect-dr "
                            "restore --resume' when Prefect is less busy") from None


def maintenance_mem(plaintext: int, workers: int, cache: int, current: int) -> int:
    """Bytes of ``maintenance_work_mem`` for the index builds of a table of ``plaintext`` bytes
    while ``workers`` tables load at once on a server whose ``effective_cache_size`` is
    ``cache`` and whose default is ``current``: never below the default."""
    want = max(MIN_MAINTENANCE_MEM, min(plaintext // 2, MAX_MAINTENANCE_MEM))
    cap = max(MIN_MAINTENANCE_MEM, cache // (4 * max(1, workers)))
    return max(current, min(want, cap)) >> 20 << 20


def session_settings(conn: psycopg.Connection, plaintext: int, workers: int) -> None:
    """Settings of a loading session the peer's pg_restore does not use (its own session
    only): no wait for the WAL flush at commit, and index builds sorted in memory (for a
    table of ``plaintext`` bytes while ``workers`` tables load at once)."""
    row = conn.execute("SELECT pg_size_bytes(current_setting('effective_cache_size')), "
                       "pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()
    assert row is not None
    mem = maintenance_mem(plaintext, workers, int(row[0]), int(row[1]))
    conn.execute("SET synchronous_commit = off")
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(f"{mem >> 20}MB")))


def index_statements(conn: psycopg.Connection, table: str, schema: str
                     ) -> list[sql.Composable]:
    """The live table's primary key, unique constraints and indexes, built on
    ``schema.table`` (a shadow table, or ``public``: the table itself once they were dropped)
    under the same names (index names are per schema). Raises BackfillError."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), con.conname, "
        "pg_get_constraintdef(con.oid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid "
        "AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x') "
        "WHERE i.indrelid = %s::regclass ORDER BY i.indisprimary DESC, c.relname",
        (f"public.{table}",)).fetchall()
    shadow = sql.Identifier(schema, table)
    statements: list[sql.Composable] = []
    for index, definition, constraint, condef in rows:
        if constraint:
            statements.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                shadow, sql.Identifier(str(constraint)), sql.SQL(str(condef))))
            continue
        on = f" ON public.{table} "
        if on not in str(definition):
            on = f" ON {table} "  # public on the search path: the name is not qualified
        if on not in str(definition):
            raise BackfillError(f"cannot rebuild index {index} of {table}: {definition}")
        statements.append(sql.SQL(str(definition).replace(
            on, f" ON {schema}.{table} ", 1)))
    return statements
