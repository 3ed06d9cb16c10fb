"""Format-2 backups (history tables' rows as artifacts of their own) and `restore --tiered`
against the real stack: PostgreSQL 15, SeaweedFS and a real Prefect server started on the
restored database while its history is still being loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import backup_manifest, run_cli
from conftest import databases as _databases

from prefect_dr import prefect_api
from prefect_dr.runs_split import RUN_TABLES
from prefect_dr.smoke import PrefectServer

pytestmark = pytest.mark.integration
DEFERRED = ("event_resources", "events", "log")
#: what phase 2 loads: the history tables and the split run tables (format 4)
LATER = tuple(sorted((*DEFERRED, *RUN_TABLES)))


def _with_password(url: str, pw: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}:{pw}@{parts.hostname}:{parts.port}").geturl()


def add_history(url: str, pw: str, rows: int = 3000, payload: int = 200) -> None:
    """Give the database some bulk history: events, their resources and log lines."""
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (occurred, event, resource_id, resource, related_resource_ids, "
            "related, payload, received, recorded, id) SELECT now() - g * interval '1 s', "
            "'dr.test', 'dr.resource.' || g, '{}'::jsonb, '[]'::jsonb, '[]'::jsonb, "
            "jsonb_build_object('blob', repeat(md5(g::text), %s)), now(), now(), "
            "gen_random_uuid() FROM generate_series(1, %s) g", (payload // 32, rows))
        conn.execute(
            "INSERT INTO event_resources (occurred, resource_id, resource_role, resource, "
            "event_id) SELECT occurred, resource_id, 'related', '{}'::json, id FROM events")
        conn.execute(
            "INSERT INTO log (name, level, flow_run_id, message, timestamp) SELECT 'dr.test', "
            "20, NULL, 'line ' || g || ' ' || repeat(md5(g::text), %s), now() FROM "
            "generate_series(1, %s) g", (payload // 32, rows))


def counts(url: str, pw: str, tables: tuple[str, ...]) -> dict[str, int]:
    """Exact row counts."""
    with psycopg.connect(url, password=pw) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def _backfill_schema(url: str, pw: str) -> bool:
    with psycopg.connect(url, password=pw) as conn:
        return bool(conn.execute("SELECT to_regnamespace('prefect_dr_backfill') IS NOT NULL")
                    .fetchone()[0])


def _serving(env: dict[str, str], db: str, backup_id: str) -> bool:
    """Whether ``db`` is the restored database of ``backup_id`` (phase 1 swapped in)."""
    admin = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, password=env["PGPASSWORD"]) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = %s", (db,)).fetchone()
    return bool(row and row[0] and f"restored backup {backup_id}" in row[0])


@contextmanager
def holding(url: str, pw: str, *tables: str) -> Iterator[None]:
    """Hold a share lock on ``tables`` (a long read), so their swaps wait until released."""
    with psycopg.connect(url, password=pw) as conn:
        for table in tables:
            conn.execute(f"SELECT count(*) FROM {table}")  # opens a transaction, keeps the lock
        yield
        conn.rollback()


def _manifest_counts(manifest: dict[str, object]) -> dict[str, int]:
    return {t: e["rows"] for t, e in manifest["row_counts"].items()}  # type: ignore[union-attr]


def test_format_4_backup_keeps_history_and_runs_apart_and_a_plain_restore_brings_it_all_back(
        clone: dict[str, str]) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    add_history(url, pw)
    before = counts(url, pw, DEFERRED)
    manifest = backup_manifest(env)
    assert manifest["format_version"] == 4
    history = {a["table"]: a for a in manifest["artifacts"] if a.get("table")
               and not a.get("part")}
    assert sorted(history) == list(DEFERRED)
    runs = {(a["table"], a["part"]): a for a in manifest["artifacts"] if a.get("part")}
    assert sorted(runs) == sorted((t, p) for t in RUN_TABLES for p in ("live", "done"))
    for (table, part), artifact in runs.items():
        assert artifact["key"].endswith(f"/runs-{part}-{table}.copy.zst.age")
    for table in RUN_TABLES:  # every row in exactly one part
        assert runs[table, "live"]["rows"] + runs[table, "done"]["rows"] == \
            manifest["row_counts"][table]["rows"] == counts(url, pw, (table,))[table]
    assert runs["flow_run", "live"]["rows"] and runs["flow_run", "done"]["rows"]
    for table, artifact in history.items():
        assert artifact["rows"] == before[table] == manifest["row_counts"][table]["rows"]
        assert artifact["content"] == "pg-copy-text" and artifact["columns"]
        assert artifact["key"].endswith(f"/history-{table}.copy.zst.age")

    # verify restores the history too (same code as a restore) and checks every count
    verified = run_cli(["verify", manifest["backup_id"], "--json"], env)
    assert verified.returncode == 0, verified.stderr
    record = json.loads(verified.stdout)
    checks = record["reports"][0]["checks"]
    assert any(c["name"] == "restore" and c["artifact"] == "history" and c["ok"]
               for c in checks), checks

    # a plain restore into a new database: every table as the manifest says, no leftovers
    target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{db}_plain"
    done = run_cli(["restore", manifest["backup_id"], "--target-url", target, "--yes",
                    "--json"], env)
    assert done.returncode == 0, done.stderr
    restored = _with_password(target, pw)
    want = _manifest_counts(manifest)
    assert counts(restored, pw, tuple(want)) == want
    assert not _backfill_schema(restored, pw)
    with psycopg.connect(restored, password=pw) as conn:  # the indexes came back, same names
        names = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
    assert {"pk_events", "ix_events__occurred"} <= names

    # tiered into a new database: created at phase 1's end, complete at the end
    tiered = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{db}_tiered"
    done = run_cli(["restore", manifest["backup_id"], "--target-url", tiered, "--tiered",
                    "--yes", "--json"], env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["serving_after_s"] > 0 and not result["safety_backup_id"]
    assert {b["table"]: b["rows"] for b in result["backfilled"]} == {t: want[t] for t in LATER}
    assert counts(_with_password(tiered, pw), pw, tuple(want)) == want


def _run_flow(api: str, printed: str, home: Path) -> None:
    """Run a real Prefect flow against ``api`` that prints ``printed`` (sent as a log line)."""
    code = ("import sys\nfrom prefect import flow\n"
            "@flow(name='dr-phase-2', log_prints=True)\n"
            "def phase_2():\n    print(sys.argv[1])\n"
            "phase_2()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home))
    proc = subprocess.run([sys.executable, "-c", code, printed], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tiered_restore_serves_prefect_after_phase_1_and_keeps_what_it_writes_meanwhile(
        clone: dict[str, str], tmp_path: Path) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    add_history(url, pw)
    manifest = backup_manifest(env)
    backup_id = str(manifest["backup_id"])
    with psycopg.connect(url, password=pw, autocommit=True) as conn:  # damage the live one
        conn.execute("DELETE FROM log")

    plan = run_cli(["restore", backup_id, "--tiered", "--dry-run", "--json"], env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["plan"]["deferred"] == list(LATER)

    proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "restore", backup_id,
                             "--tiered", "--yes", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _serving(env, db, backup_id):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "phase 1 never swapped in"
            time.sleep(0.05)
        # phase 2 cannot finish while we read the log table: Prefect is started meanwhile
        with holding(url, pw, "log"):
            assert _backfill_schema(url, pw)
            states = run_cli(["rollback", "--list", "--json"], env)
            assert states.returncode == 0, states.stderr
            assert backup_id in json.loads(states.stdout)["unfinished_backfill"]
            with PrefectServer(url) as server:
                blocks = prefect_api.request(server.api, "POST", "/block_documents/filter",
                                             {"include_secrets": True})
                secret = next(b for b in blocks if b["name"] == "dr-secret")
                assert secret["data"]["value"] == "s3cr3t-dr-seed-value"
                assert prefect_api.request(server.api, "POST", "/deployments/filter", {})
                assert prefect_api.request(server.api, "POST", "/work_pools/filter", {})
                flow = prefect_api.request(server.api, "POST", "/flows/filter", {})[0]
                run = prefect_api.request(server.api, "POST", "/flow_runs/",
                                          {"flow_id": flow["id"], "name": "during-phase-2"})
                marker = f"written during phase 2 {uuid.uuid4().hex}"
                prefect_api.request(server.api, "POST", "/logs/", [{
                    "name": "dr.phase2", "level": 20, "message": marker,
                    "timestamp": "2026-12-01T00:00:00+00:00", "flow_run_id": run["id"]}])
                written_deadline = time.monotonic() + 20
                while not counts(url, pw, ("log",))["log"]:  # Prefect's own write landed
                    assert time.monotonic() < written_deadline
                    time.sleep(0.1)
                printed = f"flow ran during phase 2 {uuid.uuid4().hex}"
                _run_flow(server.api, printed, tmp_path)  # a real flow, its logs sent by Prefect
            assert proc.poll() is None, "phase 2 ended while its table was held"
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["serving_after_s"] is not None and result["safety_backup_id"]
    assert sorted(b["table"] for b in result["backfilled"]) == list(LATER)
    want = _manifest_counts(manifest)
    got = counts(url, pw, tuple(want))
    assert got["log"] >= want["log"] + 2  # the backup's lines and those written meanwhile
    moved = ("log", "flow", "flow_run", "flow_run_state", "task_run", "task_run_state",
             "events", "event_resources")
    assert {t: n for t, n in got.items() if t not in moved} == \
        {t: n for t, n in want.items() if t not in moved}
    assert got["flow_run"] == want["flow_run"] + 2 and got["events"] >= want["events"]
    assert got["event_resources"] >= want["event_resources"]
    with psycopg.connect(url, password=pw) as conn:
        assert conn.execute("SELECT count(*) FROM log WHERE message = %s",
                            (marker,)).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM log WHERE message LIKE %s",
                            (f"%{printed}%",)).fetchone()[0] == 1
        state = conn.execute("SELECT r.state_type FROM flow_run r JOIN flow f ON f.id = "
                             "r.flow_id WHERE f.name = 'dr-phase-2'").fetchone()
        assert state and state[0] == "COMPLETED"
    assert not _backfill_schema(url, pw)
    assert [d for d in _databases(env, db) if "_pre_restore_" in d]  # kept, backed up after


def test_phase_2_killed_then_resumed_completes_exactly_once(clone: dict[str, str]) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    add_history(url, pw, rows=2000)
    other_id = backup_manifest(env)["backup_id"]
    manifest = backup_manifest(env)
    backup_id = str(manifest["backup_id"])
    want = _manifest_counts(manifest)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "restore", backup_id,
                                 "--tiered", "--yes", "--no-safety-backup"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (_serving(env, db, backup_id) and _backfill_schema(url, pw)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # the history tables load at once (issue 25): a small one may be in place already
        with holding(url, pw, "events", "event_resources", "log"):
            time.sleep(1.0)  # loading or waiting for its lock: phase 2 is under way
            assert proc.poll() is None
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == (130 if sig == signal.SIGTERM else -9), err
        assert "Traceback" not in err
        # the live database serves its configuration; the backfill is recorded, visible
        got = counts(url, pw, ("block_document", "deployment", "work_pool"))
        assert got == {t: want[t] for t in got}
        listed = run_cli(["rollback", "--list"], env)
        assert "unfinished history backfill of backup " + backup_id in listed.stdout
        other = run_cli(["restore", str(other_id), "--yes"], env)  # another backup: refused
        assert other.returncode == 2 and "restore --resume" in other.stderr, other.stderr
    doctor = json.loads(run_cli(["doctor", "--json"], env).stdout)
    check = next(c for c in doctor["checks"] if c["name"] == "history backfill")
    assert check["status"] == "warn" and "restore --resume" in check["detail"]
    resumed = run_cli(["restore", "--resume", "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] == backup_id
    assert counts(url, pw, tuple(want)) == want  # exact: nothing twice, nothing missing
    assert not _backfill_schema(url, pw)
    again = run_cli(["restore", "--resume"], env)
    assert again.returncode == 0 and "nothing to resume" in again.stdout
    # the first kill's restore kept the original database: rollback still works
    back = run_cli(["rollback", "--yes"], env)
    assert back.returncode == 0, back.stderr


def test_the_last_table_swapped_takes_the_backfill_schema_with_it(
        cli_env: dict[str, str]) -> None:
    """A stop between the last table's swap and the end of the run left an empty
    prefect_dr_backfill schema that `restore --resume` called nothing to resume, for good (found
    by the tiered chaos scenario's failpoint after the third swap): the last swap drops it."""
    from conftest import drop_db

    from prefect_dr import backfill
    from prefect_dr.pg.scratch import with_database

    pw, name = cli_env["PGPASSWORD"], f"dr_lastswap_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(cli_env["PREFECT_DR_DATABASE_URL"], password=pw,
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_password(with_database(cli_env["PREFECT_DR_DATABASE_URL"], name), pw)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            conn.execute("INSERT INTO t VALUES (1)")  # written while phase 2 ran
            conn.execute("CREATE SCHEMA prefect_dr_backfill")
            conn.execute("CREATE TABLE prefect_dr_backfill.state (table_name text PRIMARY KEY, "
                         "backup_id text NOT NULL, status text NOT NULL, rows bigint NOT NULL, "
                         "updated timestamptz NOT NULL DEFAULT now())")
            for table in ("t", "u"):
                conn.execute("INSERT INTO prefect_dr_backfill.state VALUES (%s, 'b', 'ready', 1)",
                             (table,))
            conn.execute("CREATE TABLE prefect_dr_backfill.t (LIKE t INCLUDING ALL)")
            conn.execute("INSERT INTO prefect_dr_backfill.t VALUES (2)")  # from the backup
            conn.execute("CREATE TABLE u (id int PRIMARY KEY)")
            conn.execute("CREATE TABLE prefect_dr_backfill.u (LIKE u INCLUDING ALL)")
            assert backfill._swap(conn, "t", None) == 1
            assert _backfill_schema(url, pw)  # u is still to do
            assert backfill._swap(conn, "u", None) == 0
            assert not _backfill_schema(url, pw)  # in the same transaction as u's swap
            assert conn.execute("SELECT array_agg(id ORDER BY id) FROM t").fetchone()[0] == [1, 2]
    finally:
        drop_db(cli_env, name)
