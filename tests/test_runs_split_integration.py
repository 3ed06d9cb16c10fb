"""Split run tables (format 4, issue 25's flat serving) against the real stack: PostgreSQL 15
and SeaweedFS.

The backed-up database holds the shapes the split must get right: a running subflow inside a
crashed parent (the parent and its task run are live by closure), a finished flow run holding a
task run still RUNNING, background task runs (no flow run) live and finished, and many finished
runs of a flow and a work queue that are deleted while phase 2 has not loaded them yet.

Phase 1 is stopped right before phase 2 (a failpoint): the live database then holds exactly
the live parts, and no phase-1 row points at a missing row (the closure). Prefect's deletes
meanwhile (the flow, the work queue) and a write of a key the backup also holds are then met by
``restore --resume``: the orphans get what the foreign keys' ``ON DELETE`` gives them, the
written row is kept, and every foreign key ends validated, defined as in the source."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from conftest import backup_manifest, run_cli
from test_restore_equivalence_integration import shape
from test_tiered_restore_integration import _with_password

from prefect_dr import runs_backfill
from prefect_dr.errors import VerificationError

pytestmark = pytest.mark.integration
FAILPOINT = Path(__file__).resolve().parent / "chaos" / "failpoint.py"
DONE_RUNS = 120  # finished flow runs of the flow deleted during phase 2, two task runs each


def _clone(conn: psycopg.Connection, table: str, template: str, **values: object) -> str:
    """Insert a copy of row ``template`` of ``table`` with ``values`` changed and a new id."""
    new = str(uuid.uuid4())
    conn.execute(f"INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table}, "
                 f"to_jsonb(t) || %s::jsonb)).* FROM {table} t WHERE id = %s",
                 (json.dumps({"id": new, **values}, default=str), template))
    return new


def _run(conn: psycopg.Connection, table: str, state: str, **values: object) -> str:
    """A flow or task run in ``state`` (a state row of its own, pointed at by state_id)."""
    template = conn.execute(f"SELECT id FROM {table} ORDER BY id LIMIT 1").fetchone()[0]
    key = "idempotency_key" if table == "flow_run" else "dynamic_key"
    run = _clone(conn, table, template, state_type=state, state_name=state.title(),
                 state_id=None, name=f"dr-split-{uuid.uuid4().hex[:8]}",
                 **{key: str(uuid.uuid4())}, **values)
    states = f"{table}_state"
    owner = "flow_run_id" if table == "flow_run" else "task_run_id"
    state_template = conn.execute(f"SELECT id FROM {states} LIMIT 1").fetchone()[0]
    state_id = _clone(conn, states, state_template, type=state, name=state.title(),
                      timestamp=f"2026-11-{1 + len(run) % 27:02d}T00:00:00+00:00",
                      **{owner: run})
    conn.execute(f"UPDATE {table} SET state_id = %s WHERE id = %s", (state_id, run))
    return run


def _shapes(url: str, pw: str) -> dict[str, str]:
    """The runs whose part the test knows, by role; plus the flow and work queue to delete."""
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        flow = conn.execute("SELECT id FROM flow LIMIT 1").fetchone()[0]
        doomed_flow = _clone(conn, "flow", flow, name=f"dr-doomed-{uuid.uuid4().hex[:6]}")
        queue = conn.execute("SELECT id FROM work_queue LIMIT 1").fetchone()[0]
        doomed_queue = _clone(conn, "work_queue", queue,
                              name=f"dr-doomed-{uuid.uuid4().hex[:6]}")
        ids = {"flow": str(doomed_flow), "queue": doomed_queue}
        ids["parent"] = _run(conn, "flow_run", "CRASHED")
        ids["parent_task"] = _run(conn, "task_run", "COMPLETED", flow_run_id=ids["parent"])
        ids["subflow"] = _run(conn, "flow_run", "RUNNING", parent_task_run_id=ids["parent_task"])
        ids["zombie_holder"] = _run(conn, "flow_run", "COMPLETED")
        ids["zombie"] = _run(conn, "task_run", "RUNNING", flow_run_id=ids["zombie_holder"])
        ids["background_live"] = _run(conn, "task_run", "RUNNING", flow_run_id=None)
        ids["background_done"] = _run(conn, "task_run", "COMPLETED", flow_run_id=None)
        ids["queued_done"] = _run(conn, "flow_run", "COMPLETED", work_queue_id=doomed_queue)
        ids["rewritten"] = _run(conn, "flow_run", "FAILED")
        for _ in range(DONE_RUNS):
            run = _run(conn, "flow_run", "COMPLETED", flow_id=doomed_flow)
            for _ in range(2):
                _run(conn, "task_run", "COMPLETED", flow_run_id=run)
    return ids


def _parts(manifest: dict[str, object]) -> dict[tuple[str, str], int]:
    return {(a["table"], a["part"]): a["rows"] for a in manifest["artifacts"]  # type: ignore
            if a.get("part")}


def _dangling(conn: psycopg.Connection) -> dict[str, int]:
    """Per recorded foreign key of the backfill: rows pointing at a missing row."""
    out = {}
    for table, name, definition in conn.execute(
            "SELECT table_name, name, definition FROM prefect_dr_backfill.constraints"):
        column = definition.split("(", 1)[1].split(")", 1)[0]
        parent, parent_column = definition.split("REFERENCES ", 1)[1].split(")", 1)[0].split("(")
        out[name] = conn.execute(
            f"SELECT count(*) FROM {table} c WHERE c.{column} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {parent} p WHERE p.{parent_column} = c.{column})").fetchone()[0]
    return out


def test_phase_1_holds_the_closure_and_phase_2_meets_prefects_deletes(
        clone: dict[str, str]) -> None:
    env, pw = clone, clone["PGPASSWORD"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    ids = _shapes(url, pw)
    source = shape(url, pw)
    manifest = backup_manifest(env)
    assert manifest["format_version"] == 4
    parts = _parts(manifest)

    # phase 1 only: stopped right before phase 2
    stopped = subprocess.run(
        [sys.executable, str(FAILPOINT), "restore", manifest["backup_id"], "--tiered", "--yes",
         "--no-safety-backup", "--force-disconnect"],
        env=dict(env, PREFECT_DR_CHAOS_FAILPOINT="prefect_dr.backfill:run:before:1"),
        capture_output=True, text=True, timeout=300, check=False)
    assert stopped.returncode == -9, stopped.stderr
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        # the live parts, and the CRASHED state reconciliation gave each run in flight
        crashed = {"flow_run_state": manifest["runtime"]["flow_runs"],
                   "task_run_state": manifest["runtime"]["task_runs"]}
        assert crashed["flow_run_state"] >= 1 and crashed["task_run_state"] >= 2
        for table in runs_backfill.runs_split.RUN_TABLES:
            have = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert have == parts[table, "live"] + crashed.get(table, 0), table
        assert not any(_dangling(conn).values()), _dangling(conn)  # the closure
        live = {r[0] for r in conn.execute("SELECT id::text FROM flow_run")} | {
            r[0] for r in conn.execute("SELECT id::text FROM task_run")}
        for role in ("parent", "parent_task", "subflow", "zombie_holder", "zombie",
                     "background_live"):
            assert ids[role] in live, role
        for role in ("background_done", "queued_done", "rewritten"):
            assert ids[role] not in live, role
        # Prefect meanwhile: a flow and a work queue deleted (their runs still to come), and
        # a flow run written with the key of one the backup holds
        conn.execute("DELETE FROM flow WHERE id = %s", (ids["flow"],))
        conn.execute("DELETE FROM work_queue WHERE id = %s", (ids["queue"],))
        conn.execute("INSERT INTO flow_run SELECT (jsonb_populate_record(NULL::flow_run, "
                     "to_jsonb(f) || jsonb_build_object('id', %s::text, 'name', "
                     "'written-meanwhile', 'idempotency_key', gen_random_uuid()::text, "
                     "'state_id', NULL))).* FROM flow_run f LIMIT 1", (ids["rewritten"],))

    resumed = run_cli(["restore", "--resume", "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    loaded = {b["table"]: b for b in json.loads(resumed.stdout)["backfilled"]}
    assert loaded["flow_run"]["skipped"] == 1

    got = shape(url, pw)
    assert got["constraints"] == source["constraints"]  # every key back, validated
    assert got["indexes"] == source["indexes"]
    with psycopg.connect(url, password=pw) as conn:
        assert conn.execute("SELECT count(*) FROM flow_run WHERE flow_id = %s",
                            (ids["flow"],)).fetchone()[0] == 0  # cascaded, as Prefect's would
        assert conn.execute("SELECT work_queue_id FROM flow_run WHERE id = %s",
                            (ids["queued_done"],)).fetchone()[0] is None  # set null
        assert conn.execute("SELECT name FROM flow_run WHERE id = %s",
                            (ids["rewritten"],)).fetchone()[0] == "written-meanwhile"
        assert conn.execute("SELECT to_regnamespace('prefect_dr_backfill')").fetchone()[0] is None
    gone = DONE_RUNS  # the deleted flow's runs, with their task runs and every state
    assert got["rows"]["flow_run"] == source["rows"]["flow_run"] - gone
    assert got["rows"]["task_run"] == source["rows"]["task_run"] - 2 * gone
    assert got["rows"]["flow_run_state"] == (source["rows"]["flow_run_state"] - gone
                                             + crashed["flow_run_state"])
    assert got["rows"]["task_run_state"] == (source["rows"]["task_run_state"] - 2 * gone
                                             + crashed["task_run_state"])
    assert got["rows"]["work_queue"] == source["rows"]["work_queue"] - 1


def test_adding_keys_back_strictly_refuses_a_dangling_row_and_otherwise_applies_on_delete(
        clone: dict[str, str]) -> None:
    url = _with_password(clone["PREFECT_DR_DATABASE_URL"], clone["PGPASSWORD"])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE p (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE c (id int PRIMARY KEY, p int, q int)")
        conn.execute("INSERT INTO p VALUES (1)")
        conn.execute("INSERT INTO c VALUES (1, 1, 1), (2, 2, 1), (3, 1, 3)")
        conn.execute("CREATE SCHEMA prefect_dr_backfill")
        conn.execute("CREATE TABLE prefect_dr_backfill.constraints (table_name text NOT NULL, "
                     "name text PRIMARY KEY, definition text NOT NULL)")
        conn.execute("INSERT INTO prefect_dr_backfill.constraints VALUES "
                     "('c', 'fk_p', 'FOREIGN KEY (p) REFERENCES p(id) ON DELETE CASCADE'), "
                     "('c', 'fk_q', 'FOREIGN KEY (q) REFERENCES p(id) ON DELETE SET NULL')")
        with pytest.raises(VerificationError, match="rows point at rows the backup does not "
                                                    "hold"):
            runs_backfill.restore_keys(conn, None, strict=True)
        assert conn.execute("SELECT count(*) FROM c").fetchone()[0] == 3  # nothing changed
        cleaned = runs_backfill.restore_keys(conn, None, strict=False)
        assert sorted(cleaned.values()) == [1, 1]
        assert conn.execute("SELECT id, p, q FROM c ORDER BY id").fetchall() == [(1, 1, 1),
                                                                               (3, 1, None)]
        assert conn.execute("SELECT bool_and(convalidated) FROM pg_constraint WHERE "
                            "conrelid = 'c'::regclass AND contype = 'f'").fetchone()[0]
        assert not conn.execute("SELECT count(*) FROM prefect_dr_backfill.constraints"
                                ).fetchone()[0]
        runs_backfill.restore_keys(conn, None, strict=False)  # again: nothing to do


def test_the_closure_named_or_computed_in_the_server_splits_every_row_once(
        clone: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both forms of the parts' queries (the live runs named, up to MAX_NAMED, or the closure
    computed again by each query) select the same rows, and each row is in exactly one part."""
    from prefect_dr import runs_split

    url = _with_password(clone["PREFECT_DR_DATABASE_URL"], clone["PGPASSWORD"])
    ids = _shapes(url, clone["PGPASSWORD"])

    def rows(conn: psycopg.Connection, table: str, part: str, live: runs_split.Closure
             ) -> list[bytes]:
        with conn.cursor() as cur, cur.copy(runs_split.part_query(
                table, ("id",), part, live)) as copy:
            return sorted(bytes(r) for r in copy)

    with psycopg.connect(url) as conn:
        named = runs_split.closure(conn)
        monkeypatch.setattr(runs_split, "MAX_NAMED", 0)
        computed = runs_split.closure(conn)
        assert named.flows and named.tasks and computed.flows is None and computed.tasks is None
        assert named.runs == computed.runs
        assert ids["subflow"] in named.flows and ids["parent"] in named.flows
        assert ids["background_live"] in named.tasks and ids["zombie"] in named.tasks
        for table in runs_split.RUN_TABLES:
            everything = sorted(r[0].encode() + b"\n" for r in conn.execute(
                f"SELECT id::text FROM {table}").fetchall())
            live, done = (rows(conn, table, p, named) for p in ("live", "done"))
            assert live == rows(conn, table, "live", computed), table
            assert done == rows(conn, table, "done", computed), table
            assert sorted(live + done) == everything, table
