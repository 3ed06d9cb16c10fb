"""Prefect works after a restore (issue 21), against the real stack: a real Prefect 3.9.1 server
on a private copy of the seeded database, a real process worker, a deployment run holding the
only slot of a global concurrency limit while a backup is taken. After the restore in place and
a restart of the server, the slot is free again, the run that was in flight shows CRASHED with a
message naming the backup, and a new deployment run completes on the same work pool (limit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import run_cli
from test_tiered_restore_integration import _with_password

from prefect_dr import prefect_api
from prefect_dr.smoke import PrefectServer, prefect_program

pytestmark = pytest.mark.integration
LIMIT = "dr-global-slot"
POOL = "dr-process-pool"

FLOW_CODE = '''
import time
from pathlib import Path

from prefect import flow
from prefect.concurrency.sync import concurrency


@flow(name="dr-hold")
def hold(marker: str, release: str, limit_name: str) -> None:
    """Take the global slot, say so, and keep it until ``release`` exists."""
    with concurrency(limit_name, occupy=1, timeout_seconds=60):
        Path(marker).write_text("holding")
        deadline = time.monotonic() + 600
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
'''


@contextmanager
def worker(api: str, home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `prefect worker start` of type process on POOL, polling every second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api, PREFECT_HOME=str(home),
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    home.mkdir(parents=True, exist_ok=True)
    with (home / "worker.log").open("wb") as out:
        proc = subprocess.Popen([*prefect_program(), "worker", "start", "--pool", POOL,
                                 "--type", "process"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(what: str, check: Any, timeout: float, log: Path | None = None) -> float:
    """Poll ``check`` until true; the seconds it took. Fails naming ``what``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"{what}: not within {timeout} s\n{tail}")
        time.sleep(0.25)
    return time.monotonic() - start


def _run(api: str, run_id: str) -> dict[str, Any]:
    return prefect_api.request(api, "GET", f"/flow_runs/{run_id}")


def _setup(api: str, code: Path) -> str:
    """The global limit (1 slot), a process pool with concurrency 1 and a deployment of
    FLOW_CODE on it; returns the deployment id."""
    code.mkdir(parents=True, exist_ok=True)
    (code / "hold.py").write_text(FLOW_CODE)
    prefect_api.request(api, "POST", "/v2/concurrency_limits/", {"name": LIMIT, "limit": 1})
    prefect_api.request(api, "POST", "/work_pools/", {"name": POOL, "type": "process",
                                                      "concurrency_limit": 1})
    flow = prefect_api.request(api, "POST", "/flows/", {"name": "dr-hold"})
    deployment = prefect_api.request(api, "POST", "/deployments/", {
        "name": "dr-hold", "flow_id": flow["id"], "work_pool_name": POOL,
        "entrypoint": "hold.py:hold", "enforce_parameter_schema": False,
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {
            "directory": str(code)}}]})
    return str(deployment["id"])


def _start(api: str, deployment_id: str, tmp: Path, name: str) -> tuple[str, Path, Path]:
    marker, release = tmp / f"{name}.holding", tmp / f"{name}.release"
    run = prefect_api.request(api, "POST", f"/deployments/{deployment_id}/create_flow_run", {
        "name": name, "parameters": {"marker": str(marker), "release": str(release),
                                     "limit_name": LIMIT}})
    return str(run["id"]), marker, release


def _take_slot(api: str) -> str | None:
    """Take the limit's one slot through the API a flow uses; the lease id, None if held."""
    try:
        got = prefect_api.request(api, "POST", "/v2/concurrency_limits/increment-with-lease",
                                  {"names": [LIMIT], "slots": 1, "mode": "concurrency",
                                   "lease_duration": 60})
    except prefect_api.PrefectAPIError as exc:
        if exc.status == 423:
            return None
        raise
    return str(got["lease_id"])


def _db_state(url: str, pw: str, run_id: str) -> tuple[str, int]:
    with psycopg.connect(url, password=pw) as conn:
        state = conn.execute("SELECT state_type::text FROM flow_run WHERE id = %s",
                             (run_id,)).fetchone()
        slots = conn.execute("SELECT active_slots FROM concurrency_limit_v2 WHERE name = %s",
                             (LIMIT,)).fetchone()
    return str(state[0]), int(slots[0])


def _redis_settings(env: dict[str, str]) -> dict[str, str]:
    """Prefect's settings for leases in the stack's Redis (prefect-redis from PyPI)."""
    parts = urlsplit(env["PREFECT_DR_STACK_REDIS_URL"])
    return {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_REDIS_MESSAGING_HOST": str(parts.hostname),
            "PREFECT_REDIS_MESSAGING_PORT": str(parts.port),
            "PREFECT_REDIS_MESSAGING_DB": "0",
            "PREFECT_REDIS_MESSAGING_PASSWORD": env["PREFECT_DR_STACK_REDIS_PASSWORD"]}


def _redis_keys(env: dict[str, str], pattern: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(env["PREFECT_DR_STACK_REDIS_URL"],
                                  password=env["PREFECT_DR_STACK_REDIS_PASSWORD"])
    try:
        return list(client.scan_iter(match=pattern))
    finally:
        client.close()


#: CI runs the Redis variant (it reconciles as the plain one does, then deletes the stale keys,
#: and also restores with the opt-outs); `scripts/test --matrix` adds the plain one (Prefect's
#: default lease storage, about 60 s) and --tiered, which reconciles through the same call
#: before its phase-1 swap (restore.py, about 25 s)
VARIANTS = ["redis", *(["plain", "tiered"] if os.environ.get("PREFECT_DR_TEST_MATRIX") == "full"
                       else [])]


@pytest.mark.parametrize("variant", VARIANTS)
def test_restore_in_place_releases_the_slot_crashes_the_in_flight_run_and_the_pool_runs_again(
        clone: dict[str, str], tmp_path: Path, variant: str) -> None:
    """Reconciled before the swap, so with --tiered in phase 1: Prefect serves a reconciled
    database from its first request. With the leases in Redis (prefect_redis.lease_storage),
    the plan names the stale keys and --flush-redis deletes them after the swap."""
    tiered = variant == "tiered"
    settings = _redis_settings(clone) if variant == "redis" else {}
    env = dict(clone, **settings)  # prefect-dr reads Prefect's settings as the server does
    pw, db = clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    with PrefectServer(url, settings=settings) as server:
        deployment_id = _setup(server.api, tmp_path / "code")
        with worker(server.api, tmp_path / "worker-1") as proc:
            run_id, marker, release = _start(server.api, deployment_id, tmp_path, "in-flight")
            _wait("the deployment run holds the slot", marker.exists, 120,
                  tmp_path / "worker-1" / "worker.log")
            assert proc.poll() is None
            assert _run(server.api, run_id)["state"]["type"] == "RUNNING"
            assert _db_state(url, pw, run_id) == ("RUNNING", 1)
            backup = run_cli(["backup", "--json"], env)
            assert backup.returncode == 0, backup.stderr
            backup_id = json.loads(backup.stdout)["backup_id"]
            release.write_text("done")  # the flow finishes after the backup, as in the issue
            _wait("the run completes", lambda: _run(server.api, run_id)["state"]["type"]
                  == "COMPLETED", 60)
        if variant == "redis":  # a lease still held when the server stops: left in Redis
            assert _take_slot(server.api) is not None
            assert _redis_keys(env, "prefect:concurrency:lease:*")
    shown = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
    assert shown["runtime"]["flow_runs"] >= 1 and shown["runtime"]["v2_slots"] >= 1

    if variant != "tiered":  # the opt-outs leave the database as the backup held it: it hung
        kept_url = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{db}_kept"
        kept = run_cli(["restore", backup_id, "--target-url", kept_url, "--yes", "--json",
                        "--keep-concurrency-slots", "--in-flight", "keep"], env)
        assert kept.returncode == 0, kept.stderr
        assert _db_state(_with_password(kept_url, pw), pw, run_id) == ("RUNNING", 1)

    plan = run_cli(["restore", backup_id, "--dry-run", "--json"], env)
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)["plan"]
    notes = planned["reconcile_notes"]
    assert any("1 slots of 1 global/deployment limits will be released" in n
               for n in notes), notes
    extra = ["--tiered"] if tiered else []
    if variant == "redis":
        assert "prefect:concurrency:*" in planned["redis_notes"][0], planned["redis_notes"]
        assert any("--flush-redis" in w for w in planned["warnings"]), planned["warnings"]
        extra = ["--flush-redis", env["PREFECT_DR_STACK_REDIS_URL"]]
        env["PREFECT_DR_REDIS_PASSWORD"] = env["PREFECT_DR_STACK_REDIS_PASSWORD"]
    else:
        assert "not used" in planned["redis_notes"][0], planned["redis_notes"]
    done = run_cli(["restore", backup_id, "--yes", "--json", *extra], env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if variant == "redis":
        assert result["redis_flushed"]["lease storage"] >= 1, result["redis_flushed"]
        assert _redis_keys(env, "prefect:concurrency:*") == []
        assert env["PREFECT_DR_STACK_REDIS_PASSWORD"] not in done.stdout + done.stderr
    assert result["reconciled"]["flow_runs"] == shown["runtime"]["flow_runs"]
    assert result["reconciled"]["v2_slots"] == 1
    assert any("Reconciled before the swap" in s and "were set to CRASHED" in s
               for s in result["next_steps"]), result["next_steps"]

    with PrefectServer(url, settings=settings) as server:  # the restart
        lease: str | None = None

        def take() -> bool:
            nonlocal lease
            lease = _take_slot(server.api)
            return lease is not None

        took = _wait("the global slot is free after the restore", take, 10)
        prefect_api.request(server.api, "POST", "/v2/concurrency_limits/decrement-with-lease",
                            {"lease_id": lease})
        crashed = _run(server.api, run_id)["state"]
        assert crashed["type"] == "CRASHED" and crashed["name"] == "Crashed", crashed
        assert backup_id in crashed["message"]
        history = prefect_api.request(server.api, "GET", f"/flow_run_states/?flow_run_id={run_id}")
        assert [s["type"] for s in history][-1] == "CRASHED"
        with worker(server.api, tmp_path / "worker-2"):
            new_id, new_marker, new_release = _start(server.api, deployment_id, tmp_path, "after")
            new_release.write_text("go")  # takes the slot and gives it back at once
            ran = _wait("a new deployment run completes on the pool (limit 1)", lambda: _run(
                server.api, new_id)["state"]["type"] == "COMPLETED", 180,
                tmp_path / "worker-2" / "worker.log")
        assert new_marker.exists()
    print(f"slot free {took:.2f} s after the restart; new run completed in {ran:.1f} s")


def _zombies(url: str, pw: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A flow run PENDING, a task run RUNNING in it and one PENDING, a v2 limit holding 2 slots
    and a v1 tag limit listing both task runs, an id of no run and garbage: (flow run, running
    task run, pending task run)."""
    flow_run, running, pending = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        flow_id = conn.execute("SELECT id FROM flow LIMIT 1").fetchone()[0]
        conn.execute("INSERT INTO flow_run (id, name, flow_id, state_type, state_name, "
                     "state_timestamp) VALUES (%s, 'dr-zombie', %s, 'PENDING', 'Pending', "
                     "now())", (flow_run, flow_id))
        for task, state in ((running, "RUNNING"), (pending, "PENDING")):
            conn.execute("INSERT INTO task_run (id, name, task_key, dynamic_key, flow_run_id, "
                         "state_type, state_name, state_timestamp) VALUES (%s, 'dr-task', "
                         "'k', %s, %s, %s, initcap(%s), now() - interval '5 s')",
                         (task, str(task), flow_run, state, state))
        conn.execute("INSERT INTO concurrency_limit_v2 (active, name, \"limit\", active_slots, "
                     "denied_slots, slot_decay_per_second, avg_slot_occupancy_seconds) VALUES "
                     "(true, 'dr-held', 2, 2, 0, 0, 2)")
        conn.execute("INSERT INTO concurrency_limit (tag, concurrency_limit, active_slots) "
                     "VALUES ('dr-tag', 5, %s::jsonb)", (json.dumps(
                         [str(running), str(pending), str(uuid.uuid4()), "garbage"]),))
    return flow_run, running, pending


def test_verify_reconciles_in_its_scratch_database_and_keep_keeps(
        clone: dict[str, str]) -> None:
    """verify runs the reconciliation a restore runs, and checks it against the manifest;
    --in-flight keep leaves the runs and keeps the v1 slot of the running task run."""
    env, pw = clone, clone["PGPASSWORD"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    flow_run, running, pending = _zombies(url, pw)
    backup = run_cli(["backup", "--json"], env)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backup_id"]
    runtime = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)["runtime"]
    late = runtime.pop("late_scheduled")  # the stack's scheduler's runs, late as time passes
    assert late >= 0
    assert runtime == {"flow_runs": 1, "task_runs": 2, "v2_limits": 1, "v2_slots": 2,
                       "v1_limits": 1, "v1_slots": 4}, runtime
    verified = run_cli(["verify", backup_id, "--json"], env)
    assert verified.returncode == 0, verified.stderr
    checks = json.loads(verified.stdout)["reports"][0]["checks"]
    check = next(c for c in checks if c["name"] == "reconcile")
    assert check["ok"] and "2 slots of 1 global/deployment limits were released" in \
        check["detail"], check
    assert "1 flow runs and 2 task runs were set to CRASHED" in check["detail"], check
    assert "4 task-run ids were removed from 1 tag limits" in check["detail"], check

    def restored(name: str, *flags: str) -> psycopg.Connection:
        target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{clone['_DB']}_{name}"
        done = run_cli(["restore", backup_id, "--target-url", target, "--yes", *flags], env)
        assert done.returncode == 0, done.stderr
        return psycopg.connect(_with_password(target, pw), password=pw)

    with restored("crash") as conn:
        states = {row[0]: row[1:] for row in conn.execute(
            "SELECT r.id, r.state_type::text, r.state_name, s.type::text, s.name, "
            "s.state_details ->> 'task_run_id', s.state_details ->> 'flow_run_id', "
            "s.message LIKE %s, r.end_time = s.timestamp, r.total_run_time > interval '0' "
            "FROM task_run r JOIN task_run_state s ON s.id = r.state_id", (f"%{backup_id}%",))}
        crashed = ("CRASHED", "Crashed", "CRASHED", "Crashed")
        assert states[running] == (*crashed, str(running), str(flow_run), True, True, True)
        assert states[pending] == (*crashed, str(pending), str(flow_run), True, True, False)
        flow = conn.execute("SELECT r.state_type::text, s.flow_run_id, s.timestamp >= "
                            "%s::timestamptz FROM flow_run r JOIN flow_run_state s ON "
                            "s.id = r.state_id WHERE r.id = %s",
                            (json.loads(run_cli(["show", backup_id, "--json"],
                                                env).stdout)["started_at"],
                             flow_run)).fetchone()
        assert flow == ("CRASHED", flow_run, True)
        assert conn.execute("SELECT active_slots FROM concurrency_limit WHERE tag = 'dr-tag'"
                            ).fetchone()[0] == []
    with restored("keep", "--in-flight", "keep") as conn:
        assert conn.execute("SELECT state_type::text FROM task_run WHERE id = %s",
                            (running,)).fetchone()[0] == "RUNNING"
        assert conn.execute("SELECT active_slots FROM concurrency_limit WHERE tag = 'dr-tag'"
                            ).fetchone()[0] == [str(running)]
        assert conn.execute("SELECT active_slots FROM concurrency_limit_v2 WHERE name = "
                            "'dr-held'").fetchone()[0] == 0


def test_flush_redis_refuses_a_password_in_the_url_and_a_bad_in_flight(
        cli_env: dict[str, str]) -> None:
    """A secret on the command line is refused (exit 2) without echoing it; so is a bad
    --in-flight value, both before anything is read."""
    secret = uuid.uuid4().hex
    bad = run_cli(["restore", "--latest", "--flush-redis",
                   f"redis://:{secret}@127.0.0.1:6379/0"], cli_env)
    assert bad.returncode == 2 and "PREFECT_DR_REDIS_PASSWORD" in bad.stderr, bad.stderr
    assert secret not in bad.stdout + bad.stderr and "Traceback" not in bad.stderr
    wrong = run_cli(["restore", "--latest", "--in-flight", "maybe"], cli_env)
    assert wrong.returncode == 2 and "--in-flight must be one of crash, keep" in wrong.stderr
