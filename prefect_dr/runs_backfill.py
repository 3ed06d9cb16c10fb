"""The split run tables of a format-4 backup restored in two phases (issue 25, flat serving).

**Phase 1** (:func:`prepare`, in the database being restored, before anyone uses it): the dump
made the run tables (:data:`prefect_dr.runs_split.RUN_TABLES`) empty, with their indexes and
foreign keys. Their foreign keys are recorded in ``prefect_dr_backfill.constraints`` and
dropped, and their *live* rows (every run not finished, with what they reference) are copied
in. A state row per run table says it is pending.

**Phase 2** (:func:`bring_in`, possibly while Prefect serves): the *done* rows (finished runs:
nobody changes them again) are copied into the live table and checked against the manifest's
count (when Prefect wrote one of their keys meanwhile: into a temporary table, then inserted
where the key is free), one transaction per group (a flow run appears with its
states and inputs; a task run with its states); then the foreign keys are added back ``NOT
VALID`` (a brief lock, retried like a swap) and validated (no lock Prefect's writes wait for).
Before the swap (a plain restore, a verification: *strict*, nobody else uses the database) the
rows go straight in with the tables' indexes dropped and built again after, as pg_restore
loads a table.

While phase 2 runs the run tables have no foreign keys: Prefect's deletes do not cascade and
its writes are not checked against them. When a key is validated, the rows it finds pointing at
a row deleted meanwhile get what the key's ``ON DELETE`` would have given them (deleted, or
the reference set to NULL): what a plain restore followed by the same deletes leaves. A row of
the backup whose key Prefect has written meanwhile is kept out (Prefect's stays). A *strict*
run (a plain restore or a verification: nobody else writes) allows neither: such a row, or a
dangling reference, is an inconsistent backup and fails the load.

Safe to stop anywhere: a group's rows are in or not (one transaction), a key is back or not,
and ``restore --resume`` goes on from the state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from prefect_dr import chain_merge, crypto, pipeline, runs_split
from prefect_dr.backfill_state import (
    LOADED,
    PENDING,
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
)
from prefect_dr.errors import VerificationError
from prefect_dr.manifest import DONE, LIVE, Artifact, Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)
#: Loaded together, in this order: each group's rows appear to Prefect at once.
GROUPS: tuple[tuple[str, ...], ...] = (("flow_run", "flow_run_state", "flow_run_input"),
                                       ("task_run", "task_run_state"))
assert sorted(t for group in GROUPS for t in group) == sorted(runs_split.RUN_TABLES)
CONSTRAINTS = "constraints"


def _part(manifest: Manifest, table: str, part: str) -> Artifact:
    found = [a for a in manifest.runs(part) if a.table == table]
    if not found:
        raise VerificationError(f"backup {manifest.backup_id} has no {part} part of {table}")
    return found[0]


def prepare(conn: psycopg.Connection, manifest: Manifest, storage: Storage,
            identities: list[crypto.Identity], progress: pipeline.Progress | None) -> None:
    """Phase 1 of the split run tables, inside the caller's transaction (which made the
    backfill's state table, as the restored database's owner): record and drop their foreign
    keys, load their live rows, mark them pending. Raises BackfillError (a schema this
    prefect-dr cannot split), VerificationError (a damaged part, a count off)."""
    reason = runs_split.refusal(conn)
    if reason:
        raise BackfillError(f"the restored schema's run tables cannot be loaded in two phases "
                            f"({reason})")
    conn.execute(sql.SQL("CREATE TABLE {} (table_name text NOT NULL, name text PRIMARY KEY, "
                         "definition text NOT NULL)").format(
        sql.Identifier(SCHEMA, CONSTRAINTS)))
    for table, name, _target, _action in runs_split.foreign_keys(conn):
        conn.execute(sql.SQL("INSERT INTO {} SELECT %s, conname, pg_get_constraintdef(oid) "
                             "FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s"
                             ).format(sql.Identifier(SCHEMA, CONSTRAINTS)),
                     (table, f"public.{table}", name))
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier("public", table), sql.Identifier(name)))
    for table in runs_split.RUN_TABLES:
        artifact = _part(manifest, table, LIVE)
        loaded = chain_merge.copy_in(conn, storage, manifest, artifact, "public", table,
                                     identities, progress)
        if loaded != artifact.rows:
            raise VerificationError(f"table {table}: {loaded} live rows loaded from the "
                                    f"backup, its manifest says {artifact.rows}")
        total = int(manifest.row_counts.get(table, {}).get("rows", 0))
        conn.execute(sql.SQL("INSERT INTO {} (table_name, backup_id, status, rows) "
                             "VALUES (%s, %s, %s, %s)").format(sql.Identifier(SCHEMA, "state")),
                     (table, manifest.backup_id, PENDING, total))


def bring_in(url: str, storage: Storage, manifest: Manifest, states: list[TableState],
             identities: list[crypto.Identity], role: str | None,
             progress: pipeline.Progress | None, on_step: Callable[[str], None],
             budget: Budget, *, strict: bool) -> list[Loaded]:
    """Phase 2 of the split run tables named by ``states``, on a connection of its own: the
    done rows group by group, then the foreign keys back; then their state rows go (and the
    backfill's schema, when nothing else is left). Raises VerificationError, BackfillError
    (a key's lock never had), DatabaseError's psycopg.Error, Interrupted."""
    start = time.monotonic()
    todo = {s.table: s for s in states}
    skipped: dict[str, int] = {}
    with pgc.connect(url) as conn:
        with budget.lock:
            budget.conns.append(conn)
        try:
            session_settings(conn, sum(a.plaintext_size for a in manifest.runs(DONE)),
                             budget.workers)
            for group in GROUPS:
                tables = [t for t in group if t in todo and todo[t].status == PENDING]
                if tables:
                    budget.check()
                    on_step(f"backfill: loading the finished runs' rows of {', '.join(tables)}")
                    skipped.update(_load_group(conn, storage, manifest, tables, identities,
                                               role, progress, budget, strict))
            budget.check()
            on_step("backfill: adding the run tables' foreign keys back")
            cleaned = restore_keys(conn, role, strict=strict)
            with conn.transaction():
                set_role(conn, role)
                finish(conn, list(todo))
        finally:
            with budget.lock:
                budget.conns.remove(conn)
    seconds = round(time.monotonic() - start, 3)
    if cleaned:
        log.warning("backfill: %s", "; ".join(f"{n} {what}" for what, n in cleaned.items()))
    return [Loaded(t, todo[t].rows, 0, seconds, skipped.get(t, 0))
            for t in runs_split.RUN_TABLES if t in todo]


def _load_group(conn: psycopg.Connection, storage: Storage, manifest: Manifest,
                tables: list[str], identities: list[crypto.Identity], role: str | None,
                progress: pipeline.Progress | None, budget: Budget, strict: bool
                ) -> dict[str, int]:
    """One group's done rows, in one transaction: each table's copied into the live table and
    its count checked; when Prefect wrote one of their keys meanwhile, again by
    :func:`_insert_missing` (``strict``: :func:`_bulk_load`). Returns the rows kept out per
    table."""
    kept_out: dict[str, int] = {}
    with conn.transaction():
        set_role(conn, role)
        for table in tables:
            artifact = _part(manifest, table, DONE)
            assert artifact.columns is not None
            if strict:
                kept_out[table] = _bulk_load(conn, storage, manifest, artifact, identities,
                                             progress, budget)
                _mark_loaded(conn, table)
                continue
            try:
                with conn.transaction():  # a savepoint: the group's earlier tables stay
                    _check_count(table, chain_merge.copy_in(
                        conn, storage, manifest, artifact, "public", table, identities,
                        progress, check=budget.check), artifact)
                kept_out[table] = 0
            except psycopg.errors.UniqueViolation:  # Prefect wrote a key the backup holds
                kept_out[table] = _insert_missing(conn, storage, manifest, artifact,
                                                  identities, progress, budget)
            _mark_loaded(conn, table)
    return kept_out


def _insert_missing(conn: psycopg.Connection, storage: Storage, manifest: Manifest,
                    artifact: Artifact, identities: list[crypto.Identity],
                    progress: pipeline.Progress | None, budget: Budget) -> int:
    """The done rows of a table into a temporary copy, then only those whose keys are not in
    the live table yet (``ON CONFLICT DO NOTHING``: a third slower than a plain copy, so only
    after that failed). Returns how many were kept out."""
    assert artifact.table is not None and artifact.columns is not None
    table = artifact.table
    temp, live = sql.Identifier("pg_temp", table), sql.Identifier("public", table)
    conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(
        sql.Identifier(table), live))
    loaded = chain_merge.copy_in(conn, storage, manifest, artifact, "pg_temp", table,
                                 identities, progress, check=budget.check)
    _check_count(table, loaded, artifact)
    budget.check()
    names = sql.SQL(", ").join(map(sql.Identifier, artifact.columns))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING")
                    .format(live, names, names, temp))
        return loaded - max(cur.rowcount, 0)


def _check_count(table: str, loaded: int, artifact: Artifact) -> None:
    if loaded != artifact.rows:
        raise VerificationError(f"table {table}: {loaded} rows of finished runs loaded from "
                                f"the backup, its manifest says {artifact.rows}")


def _mark_loaded(conn: psycopg.Connection, table: str) -> None:
    conn.execute(sql.SQL("UPDATE {} SET status = %s, updated = now() WHERE table_name = %s")
                 .format(sql.Identifier(SCHEMA, "state")), (LOADED, table))


def _bulk_load(conn: psycopg.Connection, storage: Storage, manifest: Manifest,
               artifact: Artifact, identities: list[crypto.Identity],
               progress: pipeline.Progress | None, budget: Budget) -> int:
    """The done rows of a table nobody else uses (a strict run) as pg_restore loads a table:
    its primary key, unique constraints and indexes dropped, the rows copied straight in, then
    each built again once, under the same name and definition (a key in both parts fails the
    build). Inside the caller's transaction; returns 0 (no row kept out)."""
    assert artifact.table is not None
    table = artifact.table
    rebuild = index_statements(conn, table, "public")
    for index, constraint in conn.execute(
            "SELECT c.relname, con.conname FROM pg_index i JOIN pg_class c ON "
            "c.oid = i.indexrelid LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid "
            "AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x') "
            "WHERE i.indrelid = %s::regclass", (f"public.{table}",)).fetchall():
        if constraint:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier("public", table), sql.Identifier(str(constraint))))
        else:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier("public", str(index))))
    _check_count(table, chain_merge.copy_in(conn, storage, manifest, artifact, "public", table,
                                            identities, progress, check=budget.check),
                 artifact)
    budget.check()
    for statement in rebuild:
        conn.execute(statement)
    return 0


def _keys(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(table, name, definition) of the foreign keys still to bring back."""
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (f"{SCHEMA}.{CONSTRAINTS}",)).fetchone()[0]:  # type: ignore[index]
        return []
    rows = conn.execute(sql.SQL("SELECT table_name, name, definition FROM {} "
                                "ORDER BY table_name, name").format(
        sql.Identifier(SCHEMA, CONSTRAINTS))).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def _state_of_key(conn: psycopg.Connection, table: str, name: str) -> bool | None:
    """Whether the key is validated; None when it is not there."""
    row = conn.execute("SELECT convalidated FROM pg_constraint WHERE conrelid = %s::regclass "
                       "AND conname = %s", (f"public.{table}", name)).fetchone()
    return None if row is None else bool(row[0])


def restore_keys(conn: psycopg.Connection, role: str | None, *, strict: bool
                 ) -> dict[str, int]:
    """Add every recorded foreign key back ``NOT VALID`` (all of them first, so that a delete
    below cascades as Prefect's schema says), then validate each; a key whose rows point at a
    row deleted meanwhile gets its ``ON DELETE`` applied to them first (not when ``strict``:
    then that is a VerificationError). Each step commits on its own and is skipped when done:
    safe to run again. Returns what was cleaned, by description. Raises BackfillError (a lock
    never had), VerificationError."""
    keys = _keys(conn)
    for table, name, definition in keys:
        if _state_of_key(conn, table, name) is None:
            def add(table: str = table, name: str = name, definition: str = definition) -> None:
                with conn.transaction():
                    set_role(conn, role)
                    briefly_waiting(conn)
                    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
                        sql.Identifier("public", table), sql.Identifier(name),
                        sql.SQL(definition)))
            retry_locked(add, f"foreign key {name}", f"add the foreign key {name} of {table}")
    cleaned: dict[str, int] = {}
    for table, name, _definition in keys:
        if not _state_of_key(conn, table, name):
            try:
                _validate(conn, table, name, role)
            except psycopg.errors.ForeignKeyViolation:
                if strict:
                    raise VerificationError(f"table {table}: rows point at rows the backup does "
                                            f"not hold (foreign key {name})") from None
                cleaned.update(_apply_on_delete(conn, table, name, role))
                _validate(conn, table, name, role)
        with conn.transaction():
            set_role(conn, role)
            conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(
                sql.Identifier(SCHEMA, CONSTRAINTS)), (name,))
    return cleaned


def _validate(conn: psycopg.Connection, table: str, name: str, role: str | None) -> None:
    with conn.transaction():
        set_role(conn, role)
        conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            sql.Identifier("public", table), sql.Identifier(name)))


def _apply_on_delete(conn: psycopg.Connection, table: str, name: str, role: str | None
                     ) -> dict[str, int]:
    """Give the rows of ``table`` whose key ``name`` points at a missing row what the key's
    ``ON DELETE`` says (CASCADE: delete them; SET NULL: clear the reference). Returns
    {description: rows}."""
    row = conn.execute(
        "SELECT a.attname, c.confrelid::regclass::text, b.attname, c.confdeltype::text "
        "FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
        "AND a.attnum = c.conkey[1] JOIN pg_attribute b ON b.attrelid = c.confrelid "
        "AND b.attnum = c.confkey[1] WHERE c.conrelid = %s::regclass AND c.conname = %s",
        (f"public.{table}", name)).fetchone()
    assert row is not None
    column, parent, parent_column, action = (str(v) for v in row)
    missing = sql.SQL("{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p "
                      "WHERE p.{pcol} = {table}.{col})").format(
        col=sql.Identifier(column), parent=sql.SQL(parent), pcol=sql.Identifier(parent_column),
        table=sql.Identifier(table))
    with conn.transaction(), conn.cursor() as cur:
        set_role(conn, role)
        if action == "c":
            cur.execute(sql.SQL("DELETE FROM {} WHERE ").format(
                sql.Identifier("public", table)) + missing)
            what = f"rows of {table} deleted (their {column} was deleted meanwhile)"
        else:
            cur.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE ").format(
                sql.Identifier("public", table), sql.Identifier(column)) + missing)
            what = f"{table}.{column} set to NULL (the row it named was deleted meanwhile)"
        return {what: max(cur.rowcount, 0)}
