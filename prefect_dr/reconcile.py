"""Reconciliation: make a restored database agree with a Prefect that has just been restarted.

A restore brings the database back to the backup instant, but part of Prefect's runtime state
lives outside it, and part of the database describes work that was in flight then
(docs/operations.md, "What a restore resets, and why"):

- concurrency v2 (global limits, and the deployment concurrency limits built on them):
  ``concurrency_limit_v2.active_slots`` counts slots whose *leases* live in the server's memory
  or in Redis (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``). After every server restarted no
  lease is left, and the repossessor frees only slots of leases it knows: a restored count is
  never released. Reset to 0.
- concurrency v1 (tag limits): ``concurrency_limit.active_slots`` lists task-run ids; ids of
  runs that are not RUNNING are removed.
- runs RUNNING, PENDING or CANCELLING at the backup instant have no process behind them after a
  restore, yet hold work-pool, work-queue, deployment and tag concurrency. Each is set to
  CRASHED through a state row of Prefect's own shape (see :func:`_crash`), timed at the backup
  instant, with a message naming the backup.
- SCHEDULED runs whose time passed are left alone: Prefect's late-runs service marks them Late
  and workers pick them up (only counted, so the plan can say so).

Counting (:func:`count`) changes nothing; the backup records it, in its snapshot, in the
manifest's ``runtime`` field, so a restore plan shows the counts before anything changes.
:func:`apply` changes the restored database before the swap, in one transaction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import psycopg

from prefect_dr.checks import Checks
from prefect_dr.errors import VerificationError
from prefect_dr.kinds import RUN_KINDS
from prefect_dr.manifest import Manifest
from prefect_dr.pg import connect as pgc

#: The states a run is in while a process works on it (Prefect's ``StateType`` names).
IN_FLIGHT = ("RUNNING", "PENDING", "CANCELLING")
IN_FLIGHT_CHOICES = ("crash", "keep")
#: the SQL test of a run in flight: enum literals, so Prefect's state_type indexes serve it
_IN_FLIGHT_SQL = "state_type IN (" + ", ".join(f"'{t}'" for t in IN_FLIGHT) + ")"
CRASHED_TYPE, CRASHED_NAME = "CRASHED", "Crashed"


@dataclass(frozen=True)
class Policy:
    """What a restore reconciles (the defaults: everything)."""

    #: reset v2 slots and empty v1 slots of runs not running (``--keep-concurrency-slots``: no)
    concurrency: bool = True
    #: "crash" sets in-flight runs to CRASHED, "keep" leaves them (``--in-flight keep``)
    in_flight: str = "crash"

    def __post_init__(self) -> None:
        if self.in_flight not in IN_FLIGHT_CHOICES:
            raise ValueError(f"in_flight must be one of {IN_FLIGHT_CHOICES}")


@dataclass(frozen=True)
class Counts:
    """Runtime state found in (or changed in) a database."""

    flow_runs: int = 0  #: flow runs RUNNING, PENDING or CANCELLING
    task_runs: int = 0  #: task runs likewise
    v2_limits: int = 0  #: concurrency_limit_v2 rows with active_slots > 0
    v2_slots: int = 0  #: their active_slots, summed
    #: tag limits with task-run ids in their slots (counted: all of them; changed: those
    #: whose ids of runs not RUNNING were removed)
    v1_limits: int = 0
    v1_slots: int = 0  #: such ids, summed
    late_scheduled: int = 0  #: SCHEDULED runs whose start time passed (left to Prefect)

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form (the manifest's ``runtime`` field)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        """The inverse of :meth:`to_dict`; unknown keys ignored, missing ones 0."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})


def count(conn: psycopg.Connection, at: str | None = None, *, runs: bool = True) -> Counts:
    """What :func:`apply` would reconcile in ``conn``'s database (``at``: the instant SCHEDULED
    runs are late against, default now; ``runs=False``: the runs are not part of it, as in a
    config-only backup). Changes nothing; tables an older Prefect lacks count 0."""
    def one(query: str, *args: Any) -> tuple[int, ...]:
        row = conn.execute(query, args).fetchone()
        return tuple(int(v or 0) for v in row) if row else (0,)

    flows = tasks = v2_limits = v2_slots = v1_limits = v1_slots = late = 0
    if runs and pgc.table_exists(conn, "flow_run"):
        flows, = one(f"SELECT count(*) FROM flow_run WHERE {_IN_FLIGHT_SQL}")
        late, = one("SELECT count(*) FROM flow_run WHERE state_type = 'SCHEDULED' AND "
                    "next_scheduled_start_time < coalesce(%s::timestamptz, now())", at)
    if runs and pgc.table_exists(conn, "task_run"):
        tasks, = one(f"SELECT count(*) FROM task_run WHERE {_IN_FLIGHT_SQL}")
    if pgc.table_exists(conn, "concurrency_limit_v2"):
        v2_limits, v2_slots = one("SELECT count(*) FILTER (WHERE active_slots > 0), "
                                  "coalesce(sum(greatest(active_slots, 0)), 0) "
                                  "FROM concurrency_limit_v2")
    if pgc.table_exists(conn, "concurrency_limit") and pgc.table_exists(conn, "task_run"):
        v1_limits, v1_slots = one(
            "SELECT count(DISTINCT c.id), count(x) FROM concurrency_limit c, "
            "jsonb_array_elements(c.active_slots) x")
    return Counts(flows, tasks, v2_limits, v2_slots, v1_limits, v1_slots, late)


#: a v1 slot entry ``x`` whose task run is not RUNNING (or no longer exists)
_NOT_RUNNING = ("NOT EXISTS (SELECT 1 FROM task_run t WHERE t.id = CASE WHEN x #>> '{}' ~* "
                "'^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' THEN (x #>> '{}')::uuid END "
                "AND t.state_type = 'RUNNING')")


def apply(conn: psycopg.Connection, policy: Policy, *, backup_id: str, at: str) -> Counts:
    """Reconcile ``conn``'s (restored, not yet live) database per ``policy`` in one transaction.
    ``at`` is the backup instant (ISO 8601): the crash states are timed then. Returns what was
    changed (``late_scheduled``: counted, left to Prefect). Raises psycopg.Error."""
    with conn.transaction():
        before = count(conn, at)
        flows = tasks = 0
        if policy.in_flight == "crash":
            message = (f"prefect-dr: in flight when backup {backup_id} was taken; the restore "
                       "of that backup has no process behind it, so it is marked crashed")
            if pgc.table_exists(conn, "task_run"):
                tasks = _crash(conn, "task_run", message, at)
            if pgc.table_exists(conn, "flow_run"):
                flows = _crash(conn, "flow_run", message, at)
        v2_limits = v2_slots = v1_limits = v1_slots = 0
        if policy.concurrency:
            if pgc.table_exists(conn, "concurrency_limit_v2"):
                v2_limits, v2_slots = before.v2_limits, before.v2_slots
                conn.execute("UPDATE concurrency_limit_v2 SET active_slots = 0, "
                             "updated = now() WHERE active_slots <> 0")
            if pgc.table_exists(conn, "concurrency_limit") and pgc.table_exists(conn,
                                                                                 "task_run"):
                v1_limits, v1_slots = _v1(conn)
    return Counts(flows, tasks, v2_limits, v2_slots, v1_limits, v1_slots, before.late_scheduled)


def _v1(conn: psycopg.Connection) -> tuple[int, int]:
    """Remove the ids of task runs not RUNNING from every tag limit's slots; (limits, ids)."""
    row = conn.execute(
        "SELECT count(DISTINCT c.id), count(x) FROM concurrency_limit c, "
        f"jsonb_array_elements(c.active_slots) x WHERE {_NOT_RUNNING}").fetchone()
    limits, ids = (int(row[0]), int(row[1])) if row else (0, 0)
    if ids:
        conn.execute(
            "UPDATE concurrency_limit c SET updated = now(), active_slots = coalesce(("
            "SELECT jsonb_agg(x ORDER BY n) FROM jsonb_array_elements(c.active_slots) "
            f"WITH ORDINALITY AS e(x, n) WHERE NOT ({_NOT_RUNNING})), '[]'::jsonb) "
            f"WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(c.active_slots) x "
            f"WHERE {_NOT_RUNNING})")
    return limits, ids


def _crash(conn: psycopg.Connection, table: str, message: str, at: str) -> int:
    """Set every in-flight run of ``table`` (flow_run or task_run) to CRASHED the way Prefect's
    orchestration does (prefect/server/orchestration/global_policy.py, 3.9.1): a new row in
    ``<table>_state`` (type CRASHED, name 'Crashed', the message, state_details naming the run),
    then the run's ``state_id``/``state_type``/``state_name``/``state_timestamp`` pointing at it,
    ``end_time`` (and ``start_time`` if unset) set to its timestamp (SetEndTime) and the time
    spent RUNNING added to ``total_run_time`` (IncrementRunTime). The timestamp is the backup
    instant, or just after the run's latest state when that is later (the state table's unique
    (run, timestamp) index). Returns how many runs."""
    state = f"{table}_state"
    details = ("jsonb_build_object('flow_run_id', r.id)" if table == "flow_run" else
               "jsonb_build_object('flow_run_id', r.flow_run_id, 'task_run_id', r.id)")
    row = conn.execute(f"""
        WITH target AS (
            SELECT r.id, greatest(%(at)s::timestamptz,
                                  (SELECT max(s.timestamp) FROM {state} s
                                   WHERE s.{table}_id = r.id) + interval '1 microsecond',
                                  r.state_timestamp + interval '1 microsecond') AS ts,
                   {details} AS details
            FROM {table} r WHERE r.{_IN_FLIGHT_SQL}
        ), ins AS (
            INSERT INTO {state} (type, timestamp, name, message, state_details, {table}_id)
            SELECT %(type)s, t.ts, %(name)s, %(message)s, t.details, t.id FROM target t
            RETURNING id, {table}_id AS run_id, timestamp
        ), upd AS (
            UPDATE {table} r SET state_id = ins.id, state_type = %(type)s,
                   state_name = %(name)s, state_timestamp = ins.timestamp,
                   start_time = coalesce(r.start_time, ins.timestamp),
                   end_time = coalesce(r.end_time, ins.timestamp),
                   total_run_time = r.total_run_time + CASE
                       WHEN r.state_type = 'RUNNING' AND r.state_timestamp IS NOT NULL
                       THEN ins.timestamp - r.state_timestamp ELSE interval '0' END,
                   updated = now()
            FROM ins WHERE r.id = ins.run_id
            RETURNING r.id
        )
        SELECT count(*) FROM upd""", {"at": at,
                                      "type": CRASHED_TYPE, "name": CRASHED_NAME,
                                      "message": message}).fetchone()
    return int(row[0]) if row else 0


def checked(conn: psycopg.Connection, manifest: Manifest, policy: Policy,
            checks: Checks) -> Counts:
    """Reconcile a restored database (not yet live) per ``policy``, as the check
    ``reconcile``: what it changed must match what the backup recorded in its snapshot, and
    afterwards no run is in flight (unless kept) and no slot is held (unless kept).
    Raises VerificationError."""
    with checks.run("reconcile") as out:
        done = apply(conn, policy, backup_id=manifest.backup_id, at=manifest.started_at)
        after = count(conn, manifest.started_at)
        leftover = []
        if policy.in_flight == "crash" and (after.flow_runs or after.task_runs):
            leftover.append(f"{after.flow_runs} flow runs and {after.task_runs} task runs "
                            "still in flight")
        if policy.concurrency and after.v2_slots:
            leftover.append(f"{after.v2_slots} concurrency slots still held")
        if manifest.runtime is not None and manifest.kind in RUN_KINDS:
            want = Counts.from_dict(manifest.runtime)
            if policy.in_flight == "crash" and (done.flow_runs, done.task_runs) != (
                    want.flow_runs, want.task_runs):
                leftover.append(f"{done.flow_runs} flow runs and {done.task_runs} task runs "
                                f"crashed, the manifest recorded {want.flow_runs} and "
                                f"{want.task_runs} in flight")
            if policy.concurrency and done.v2_slots != want.v2_slots:
                leftover.append(f"{done.v2_slots} slots released, the manifest recorded "
                                f"{want.v2_slots} held")
        if leftover:
            raise VerificationError("reconciliation: " + "; ".join(leftover))
        out["detail"] = "; ".join(describe(done, policy, planned=False))
    return done


def describe(counts: Counts | None, policy: Policy, *, planned: bool) -> list[str]:
    """What was (``planned=False``) or will be reconciled, one line per concern; ``counts``
    None: a backup that did not record them (the lines say "all")."""
    def n(value: int) -> str:
        return "all" if counts is None else str(value)

    c = counts or Counts()
    will = "will be" if planned else "were"
    runs = f"{n(c.flow_runs)} flow runs and {n(c.task_runs)} task runs"
    lines = [
        (f"in-flight runs (RUNNING, PENDING, CANCELLING): {runs} {will} set to CRASHED with a "
         "message naming the backup" if policy.in_flight == "crash" else
         f"in-flight runs: {runs} in flight at the backup instant {will} left as they were "
         "(--in-flight keep): they hold work-pool, queue, deployment and tag concurrency "
         "until cancelled"),
        (f"concurrency: {n(c.v2_slots)} slots of {n(c.v2_limits)} global/deployment limits "
         f"{will} released (their leases did not survive the restart); "
         + ("up to " if planned and policy.in_flight == "keep" and counts else "")
         + f"{n(c.v1_slots)} task-run ids {will} removed from {n(c.v1_limits)} tag limits "
           "(runs not RUNNING)"
         if policy.concurrency else
         "concurrency: slots kept as the backup held them (--keep-concurrency-slots): slots "
         "without a live lease are never released"),
        f"late runs: {n(c.late_scheduled)} SCHEDULED flow runs whose time had passed "
        f"{will} left to Prefect's late-runs service (marked Late, then run by workers)",
    ]
    if counts is None and planned:
        lines.append("this backup did not record runtime counts (taken before prefect-dr "
                     "recorded them): the restore counts them before the swap and prints them")
    return lines
