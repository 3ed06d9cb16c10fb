"""The split of Prefect's run tables into what Prefect needs to serve and what can follow.

A full backup (format 4, docs/format.md "Split run tables") keeps the rows of the run tables
(:data:`RUN_TABLES`) out of the dump, in two artifacts per table, both read in the backup's
snapshot: the *live* part, loaded in phase 1 before Prefect serves, and the *done* part, the
finished runs, loaded in phase 2 (:mod:`prefect_dr.runs_backfill`). Phase 1 therefore grows
with the runs that are not finished, not with the run history (issue 25, flat serving).

The live part is a *closure*, not a filter on state: every flow run that is not finished, every
flow run holding a task run that is not finished, and, transitively, the flow run holding the
parent task run of any of those (a running subflow inside a crashed parent); every task run that
is not finished and has no flow run (a background task), every parent task run of a live flow
run, and every task run of a live flow run; and the states and inputs of all of them. So a
phase-1 row only ever points at a phase-1 row or at a table of the dump. Every row of a run
table is in exactly one part.

A database is split only when its run tables have the shape this module knows
(:func:`refusal`): otherwise the runs stay in the dump, as in format 2, and the backup says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from prefect_dr.manifest import DONE, LIVE

#: The run tables, in the order phase 2 loads them (the flow runs first: Prefect's run list).
RUN_TABLES: tuple[str, ...] = ("flow_run", "flow_run_state", "flow_run_input", "task_run",
                               "task_run_state")
#: Prefect's terminal state types: a run in one of them never changes again.
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
#: The columns the closure reads.
COLUMNS: dict[str, tuple[str, ...]] = {
    "flow_run": ("id", "state_type", "parent_task_run_id"),
    "flow_run_state": ("flow_run_id",),
    "flow_run_input": ("flow_run_id",),
    "task_run": ("id", "state_type", "flow_run_id"),
    "task_run_state": ("task_run_id",),
}

_UNFINISHED = "(state_type IS NULL OR state_type::text NOT IN (" + ", ".join(
    f"'{t}'" for t in TERMINAL) + "))"
#: The closure (see the module's docstring), as a WITH clause usable by every part's query.
CLOSURE = f"""WITH RECURSIVE live_flow(id) AS (
    SELECT id FROM public.flow_run WHERE {_UNFINISHED}
  UNION
    SELECT flow_run_id FROM public.task_run WHERE flow_run_id IS NOT NULL AND {_UNFINISHED}
  UNION
    SELECT t.flow_run_id FROM live_flow l JOIN public.flow_run f ON f.id = l.id
    JOIN public.task_run t ON t.id = f.parent_task_run_id WHERE t.flow_run_id IS NOT NULL
), live_task(id) AS (
    SELECT id FROM public.task_run WHERE flow_run_id IS NULL AND {_UNFINISHED}
  UNION
    SELECT parent_task_run_id FROM public.flow_run
    WHERE parent_task_run_id IS NOT NULL AND id IN (SELECT id FROM live_flow)
  UNION
    SELECT id FROM public.task_run WHERE flow_run_id IN (SELECT id FROM live_flow)
)"""
#: Per table: the column that names its run, and whether that run is a flow or a task run.
OWNER: dict[str, tuple[str, str]] = {
    "flow_run": ("id", "live_flow"),
    "flow_run_state": ("flow_run_id", "live_flow"),
    "flow_run_input": ("flow_run_id", "live_flow"),
    "task_run": ("id", "live_task"),
    "task_run_state": ("task_run_id", "live_task"),
}
#: Up to this many live runs the closure is computed once per backup and each part's query
#: names them (a hashed ``= ANY``); beyond it (a backlog of scheduled runs) every query
#: computes the closure again in the server, instead of the backup holding the ids in memory.
MAX_NAMED = 100_000


@dataclass(frozen=True)
class Closure:
    """The live runs of one snapshot: ``uuid[]`` literals of the flow and task runs' ids, or
    None when there are too many to name (:data:`MAX_NAMED`)."""

    flows: str | None
    tasks: str | None
    runs: int


def closure(conn: psycopg.Connection) -> Closure:
    """The live runs in ``conn``'s snapshot, computed once (one pass over the run tables)."""
    row = conn.execute(
        CLOSURE + ", n AS (SELECT (SELECT count(*) FROM live_flow) + "
        "(SELECT count(*) FROM live_task) AS n) SELECT n.n, "
        "CASE WHEN n.n <= %(max)s THEN (SELECT coalesce(array_agg(id), '{}')::text "
        "FROM live_flow) END, CASE WHEN n.n <= %(max)s THEN "
        "(SELECT coalesce(array_agg(id), '{}')::text FROM live_task) END FROM n",
        {"max": MAX_NAMED}).fetchone()
    assert row is not None
    return Closure(row[1], row[2], int(row[0]))


def part_query(table: str, columns: tuple[str, ...], part: str, live: Closure
               ) -> sql.Composed:
    """``COPY (<the rows of one part of table>) TO STDOUT`` (text format, ``columns``) of the
    snapshot ``live`` was computed in."""
    assert part in (LIVE, DONE)
    column, runs = OWNER[table]
    named = live.flows if runs == "live_flow" else live.tasks
    if named is not None:
        prefix = sql.SQL("")
        test = sql.SQL("coalesce({} = ANY({}::uuid[]), false)").format(
            sql.Identifier(column), sql.Literal(named))
    else:
        prefix = sql.SQL(CLOSURE + " ")
        test = sql.SQL("coalesce({} IN (SELECT id FROM " + runs + "), false)").format(
            sql.Identifier(column))
    if part == DONE:
        test = sql.SQL("NOT ") + test
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL("COPY ({}SELECT {} FROM {} WHERE {}) TO STDOUT").format(
        prefix, names, sql.Identifier("public", table), test)


def foreign_keys(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    """(table, constraint, referenced table, on-delete action) of every foreign key that
    starts or ends at a run table."""
    rows = conn.execute(
        "SELECT c.conrelid::regclass::text, c.conname, c.confrelid::regclass::text, "
        "c.confdeltype::text, cardinality(c.conkey) FROM pg_constraint c "
        "WHERE c.contype = 'f' AND (c.conrelid = ANY(%s::regclass[]) "
        "OR c.confrelid = ANY(%s::regclass[])) ORDER BY 1, 2",
        ([f"public.{t}" for t in RUN_TABLES], [f"public.{t}" for t in RUN_TABLES])).fetchall()
    return [(_bare(r[0]), str(r[1]), _bare(r[2]), str(r[3]) if r[4] == 1 else "multi")
            for r in rows]


def _bare(name: str) -> str:
    return str(name).removeprefix("public.")


def refusal(conn: psycopg.Connection) -> str | None:
    """Why the run tables of ``conn``'s database cannot be split (None when they can): a run
    table or a column the closure reads is missing; a table outside them references one (its
    rows would point into phase 2); a foreign key of theirs is not single-column ``ON DELETE
    CASCADE`` or ``SET NULL`` (what phase 2 knows how to restore); a run table has a trigger."""
    for table, columns in COLUMNS.items():
        have = {str(r[0]) for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped", (f"public.{table}",)).fetchall()}
        if not have:
            return f"there is no table {table}"
        if set(columns) - have:
            return f"{table} has no column {sorted(set(columns) - have)[0]}"
    for table, name, target, action in foreign_keys(conn):
        if table not in RUN_TABLES:
            return f"{table} references {target} ({name})"
        if action not in ("c", "n"):
            return (f"foreign key {name} of {table} is not a single-column ON DELETE CASCADE "
                    "or SET NULL")
    row = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = ANY(%s::regclass[]) "
                       "AND NOT tgisinternal",
                       ([f"public.{t}" for t in RUN_TABLES],)).fetchone()
    if row and row[0]:
        return "a run table has a trigger"
    return None
