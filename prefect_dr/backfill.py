"""Phase 2 of a restore: the deferred history tables' rows loaded into a database that may
already serve Prefect (``restore --tiered``), or into one nobody uses yet (plain restore,
verify's scratch database) by the same code.

For each deferred table (:data:`prefect_dr.prefect_schema.DEFERRED_TABLES`, no foreign key in or
out) the backup's rows are loaded into a *shadow* table ``prefect_dr_backfill.<table>``: created
``LIKE`` the live table without indexes, filled by ``COPY``, its row count checked against the
manifest, then given the live table's primary key and indexes (built once, over the whole table,
as pg_restore does) and the statistics Prefect's queries plan on — all in one transaction, so a
stopped load leaves nothing behind. Prefect keeps reading and writing the live table meanwhile.
The *swap* then takes the live table's lock for a moment: the rows Prefect wrote since phase 1
are copied into the shadow table (a row already there is kept once), the live table is dropped
and the shadow table moved into ``public`` under the same name, with the same index names.

With ``jobs`` above 1 the tables load at the same time, each on its own connection and in its
own transaction (the largest first, so that they finish together); their swaps still take turns.
Every loading session sets what pg_restore's sessions do not
(:func:`prefect_dr.backfill_state.session_settings`):
``synchronous_commit`` off and ``maintenance_work_mem`` sized from the table and the server
(parallel index-build workers are the server's: limiting them to the cores the other loads
leave made each load a third slower at 3 GiB); the rows are copied ``FREEZE`` into the shadow
table its own transaction created, so the first vacuum does not rewrite them.

Progress is kept in ``prefect_dr_backfill.state`` (one row per table still to do, with the
backup id and whether its shadow table is ``ready``), written in phase 1 before the database is
swapped in, so an interrupted backfill is always visible and resumable: a table is either
pending, ready (shadow loaded and committed) or done (its state row is gone, in the same
transaction as its swap). When the last table is done the schema is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import psycopg
from psycopg import sql

from prefect_dr import chain_merge, crypto, pipeline, runs_backfill, table_copy
from prefect_dr import prefect_schema as ps
from prefect_dr.backfill_state import (
    PENDING,
    READY,
    SCHEMA,
    BackfillError,
    Budget,
    Loaded,
    TableState,
    briefly_waiting,
    finish,
    index_statements,
    retry_locked,
    session_settings,
    set_role,
    state_exists,
    state_of,
)
from prefect_dr.errors import DatabaseError, VerificationError
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import privileges
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)



def check_shape(conn: psycopg.Connection, tables: frozenset[str]) -> None:
    """Refuse tables a shadow-table swap would damage: with a foreign key in or out, a
    trigger, or a sequence owned by the table. Raises BackfillError."""
    for table in sorted(tables):
        if not pgc.table_exists(conn, table):
            raise BackfillError(f"the restored schema has no table {table}, which the backup "
                                "holds history for")
        name = f"public.{table}"
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND "
            "(conrelid = %s::regclass OR confrelid = %s::regclass)), "
            "(SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal),"
            " (SELECT count(*) FROM pg_depend WHERE refobjid = %s::regclass AND deptype IN "
            "('a', 'i') AND classid = 'pg_class'::regclass AND objid IN "
            "(SELECT oid FROM pg_class WHERE relkind = 'S'))",
            (name, name, name, name)).fetchone()
        if row and any(row):
            raise BackfillError(f"table {table} has foreign keys, triggers or sequences this "
                                "prefect-dr does not know how to backfill; restore without "
                                "--tiered")


def prepare(conn: psycopg.Connection, manifest: Manifest, role: str | None, *,
            storage: Storage, identities: list[crypto.Identity],
            progress: pipeline.Progress | None = None) -> None:
    """Record, in the database being restored (phase 1, before it serves), every history
    table still to load, and load the live part of split run tables (format 4:
    :func:`prefect_dr.runs_backfill.prepare`), in one transaction. Owned by ``role`` (the live
    database's owner) when given. Raises BackfillError, VerificationError, StorageError,
    CryptoKeyError."""
    check_shape(conn, manifest.history_tables)
    with conn.transaction():
        set_role(conn, role)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (table_name text PRIMARY KEY, backup_id text NOT NULL, "
            "status text NOT NULL, rows bigint NOT NULL, updated timestamptz NOT NULL "
            "DEFAULT now())").format(sql.Identifier(SCHEMA, "state")))
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(  # no parameters here
            sql.Identifier(SCHEMA), sql.Literal(
                f"prefect-dr: history backfill of backup {manifest.backup_id} unfinished; "
                "'prefect-dr restore --resume' finishes it")))
        for artifact in manifest.history:
            rows = (manifest.row_counts.get(str(artifact.table), {}).get("rows", 0)
                    if manifest.increment else artifact.rows or 0)
            conn.execute(sql.SQL("INSERT INTO {} (table_name, backup_id, status, rows) "
                                 "VALUES (%s, %s, %s, %s)").format(
                sql.Identifier(SCHEMA, "state")),
                (artifact.table, manifest.backup_id, PENDING, rows))
        if manifest.run_tables:
            runs_backfill.prepare(conn, manifest, storage, identities, progress)


def run(url: str, storage: Storage, manifest: Manifest, identities: list[crypto.Identity], *,
        role: str | None = None, progress: pipeline.Progress | None = None,
        on_step: Callable[[str], None] = lambda _: None, jobs: int = 1,
        strict: bool = True) -> list[Loaded]:
    """Bring every table of the unfinished backfill in ``url``'s database in from
    ``manifest``'s history artifacts, ``jobs`` tables at a time (one connection each), and
    the finished runs of split run tables (:func:`prefect_dr.runs_backfill.bring_in`; not
    ``strict`` while Prefect may be writing); drop the state when done.

    Safe to run again after any interruption: a ready shadow table is reused, a pending one
    reloaded from scratch, a done one skipped. Raises BackfillError (no backfill, or one of
    another backup), VerificationError (damaged artifact, row count off), DatabaseError,
    StorageError, CryptoKeyError, Interrupted (the first failure of a table stops the others:
    what they loaded is rolled back, what they swapped stays).
    """
    try:
        return _run(url, storage, manifest, identities, role, progress, on_step, jobs, strict)
    except psycopg.Error as exc:
        raise DatabaseError(f"history backfill failed: {pgc.first_line(exc)}") from None


def _run(url: str, storage: Storage, manifest: Manifest, identities: list[crypto.Identity],
         role: str | None, progress: pipeline.Progress | None,
         on_step: Callable[[str], None], jobs: int, strict: bool) -> list[Loaded]:
    with pgc.connect(url) as conn:
        states = state_of(conn)
        if not states and not state_exists(conn):
            raise BackfillError("no unfinished history backfill in this database")
        others = {s.backup_id for s in states} - {manifest.backup_id}
        if others:
            raise BackfillError(f"the unfinished backfill is of backup {others.pop()}, not "
                                f"{manifest.backup_id}")
        runs = [s for s in states if s.table in manifest.run_tables]
        todo: list[Any] = [runs] if runs else []  # the runs first: what Prefect's UI lists
        history: list[tuple[TableState, tuple[Artifact, ...]]] = []
        for state in states:
            if state in runs:
                continue
            segments = manifest.segments(state.table)
            if not segments or segments[-1] not in manifest.history:
                raise VerificationError(f"backup {manifest.backup_id} has no history artifact "
                                        f"for {state.table}")
            history.append((state, segments))
    workers = max(1, min(jobs, len(todo) + len(history)))
    if workers > 1:  # the largest first: the loads end about together
        history.sort(key=lambda item: (-sum(a.plaintext_size for a in item[1]),
                                       item[0].table))
    todo += history
    budget = Budget(workers=workers)

    def one(item: Any) -> list[Loaded]:
        if isinstance(item, list):
            return runs_backfill.bring_in(url, storage, manifest, item, identities, role,
                                          progress, on_step, budget, strict=strict)
        return [_bring_in(url, storage, manifest, item[0], item[1], identities, role,
                          progress, on_step, budget)]

    results = [one(item) for item in todo] if workers == 1 else _concurrently(one, todo,
                                                                               budget)
    done = [loaded for result in results for loaded in result]
    with pgc.connect(url) as conn, conn.transaction():
        set_role(conn, role)
        if not state_of(conn):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(SCHEMA)))
    return done


def _concurrently(one: Callable[[Any], list[Loaded]], todo: list[Any], budget: Budget
                  ) -> list[list[Loaded]]:
    """``one`` of every item of ``todo``, ``budget.workers`` at a time. The first failure (or
    a stop signal in this thread) stops the others, cancels their statements and waits for
    them; then it is raised."""
    pool = futures.ThreadPoolExecutor(budget.workers, thread_name_prefix="backfill")
    try:
        running = [pool.submit(one, item) for item in todo]
        futures.wait(running, return_when=futures.FIRST_EXCEPTION)
        for fut in running:
            if fut.done() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
        return [fut.result() for fut in running]
    except BaseException:
        budget.stop.set()
        with budget.lock:
            for conn in budget.conns:
                with contextlib.suppress(psycopg.Error):  # closed: nothing runs there
                    conn.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _bring_in(url: str, storage: Storage, manifest: Manifest, state: TableState,
              segments: tuple[Artifact, ...], identities: list[crypto.Identity],
              role: str | None, progress: pipeline.Progress | None,
              on_step: Callable[[str], None], budget: Budget) -> Loaded:
    """Load (unless ready) and swap one table (from its ``segments``: the base's artifact,
    then a chain's increments), on a connection of its own."""
    budget.check()
    start = time.monotonic()
    with pgc.connect(url) as conn:
        with budget.lock:
            budget.conns.append(conn)
        try:
            session_settings(conn, segments[0].plaintext_size, budget.workers)
            if state.status != READY:
                on_step(f"backfill: loading {state.rows} rows of {state.table}"
                        + (f" from {len(segments)} links" if len(segments) > 1 else ""))
                _load(conn, storage, manifest, segments, identities, role, progress, budget)
            budget.check()
            on_step(f"backfill: swapping {state.table} in")
            with budget.swap_lock:
                budget.check()
                merged = _swap(conn, state.table, role)
        finally:
            with budget.lock:
                budget.conns.remove(conn)
    rows = state.rows if manifest.increment else segments[-1].rows or 0
    return Loaded(state.table, rows, merged, round(time.monotonic() - start, 3))


def _load(conn: psycopg.Connection, storage: Storage, manifest: Manifest,
          segments: tuple[Artifact, ...], identities: list[crypto.Identity], role: str | None,
          progress: pipeline.Progress | None, budget: Budget | None = None) -> None:
    """Fill a fresh shadow table from the first of ``segments`` (a full backup's history
    artifact; ``COPY FREEZE``: the table is this transaction's own), check its rows, build its
    indexes (with the server's parallel index-build workers, as pg_restore's), merge the later
    segments (a chain's increments, de-duplicated by primary key), drop the rows below the
    increment's floor, check the count and mark it ready, in one transaction."""
    artifact = segments[0]
    assert artifact.table and artifact.columns is not None
    table, shadow = artifact.table, sql.Identifier(SCHEMA, artifact.table)
    live = sql.Identifier("public", table)
    with conn.transaction():
        set_role(conn, role)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(shadow))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)")
                     .format(shadow, live))
        # LIKE copies neither the table's comment, storage parameters nor grants
        privileges.copy_table(conn, table, SCHEMA)
        loaded = chain_merge.copy_in(conn, storage, manifest, artifact, SCHEMA, table,
                                     identities, progress, freeze=True,
                                     check=budget.check if budget else None)
        if loaded != artifact.rows:
            raise VerificationError(f"table {table}: {loaded} rows loaded from the backup, "
                                    f"its manifest says {artifact.rows}")
        if budget is not None:
            budget.check()
        for statement in index_statements(conn, table, SCHEMA):
            conn.execute(statement)
        if manifest.increment:
            chain_merge.merge(conn, storage, manifest, segments, identities, progress,
                              SCHEMA)
        conn.execute(analyze_statement(table, artifact.columns))
        conn.execute(sql.SQL("UPDATE {} SET status = %s, updated = now() WHERE table_name = %s")
                     .format(sql.Identifier(SCHEMA, "state")), (READY, table))


def analyze_statement(table: str, columns: tuple[str, ...]) -> sql.Composed:
    """``ANALYZE`` of a shadow table: only the columns Prefect's queries plan on when they are
    known and present (the rest is left to autovacuum), else the whole table."""
    planned = [c for c in ps.PLANNED_COLUMNS.get(table, ()) if c in columns]
    shadow = sql.Identifier(SCHEMA, table)
    if not planned:
        return sql.SQL("ANALYZE {}").format(shadow)
    return sql.SQL("ANALYZE {} ({})").format(shadow,
                                             sql.SQL(", ").join(map(sql.Identifier, planned)))


def _swap(conn: psycopg.Connection, table: str, role: str | None) -> int:
    """Move the ready shadow table into place under a brief lock. Returns how many rows Prefect
    had written to the live table meanwhile (kept). Raises BackfillError when the lock cannot
    be had (Prefect holds it too long; the backfill can be resumed)."""
    live, shadow = sql.Identifier("public", table), sql.Identifier(SCHEMA, table)
    columns = table_copy.columns_of(conn, table)
    names = sql.SQL(", ").join(map(sql.Identifier, columns))

    def move() -> int:
        with conn.transaction():
            set_role(conn, role)
            briefly_waiting(conn)
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(live))
            conn.execute(sql.SQL("SET LOCAL lock_timeout = 0"))
            with conn.cursor() as cur:
                cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} "
                                    "ON CONFLICT DO NOTHING").format(
                    shadow, names, names, live))
                merged = max(cur.rowcount, 0)
            conn.execute(sql.SQL("DROP TABLE {}").format(live))
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA public").format(shadow))
            finish(conn, [table])
        return merged

    return retry_locked(move, f"swap of {table}", f"lock {table} for its swap")
