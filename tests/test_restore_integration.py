"""restore and rollback against the real stack, read back through a real Prefect server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import clone_prefect_db, run_cli
from conftest import databases as _databases

from prefect_dr import prefect_api
from prefect_dr.smoke import PrefectServer

pytestmark = pytest.mark.integration


def _with_password(url: str, pw: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}:{pw}@{parts.hostname}:{parts.port}").geturl()


def _state(api: str) -> dict[str, object]:
    blocks = prefect_api.request(api, "POST", "/block_documents/filter",
                                 {"include_secrets": True})
    variables = prefect_api.request(api, "POST", "/variables/filter", {})
    deployments = prefect_api.request(api, "POST", "/deployments/filter", {})
    return {
        "blocks": {b["name"]: b for b in blocks if not b.get("is_anonymous")},
        "variables": {v["name"]: v["value"] for v in variables},
        "deployments": sorted(d["name"] for d in deployments),
    }


def _counts(url: str, pw: str) -> dict[str, int]:
    with psycopg.connect(url, password=pw) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("block_document", "variable", "deployment", "flow_run", "log")}


def test_restore_then_rollback_round_trip(clone: dict[str, str]) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    backup = run_cli(["backup", "--json"], env)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backup_id"]

    with PrefectServer(url) as server:  # change state the way users do: through the API
        before = _state(server.api)
        assert before["blocks"]["dr-secret"]["data"]["value"] == "s3cr3t-dr-seed-value"
        warehouse = before["blocks"]["dr-warehouse"]
        prefect_api.request(server.api, "DELETE", f"/block_documents/{warehouse['id']}")
        prefect_api.request(server.api, "PATCH", "/variables/name/dr_string",
                            {"value": "changed"})
        flow = prefect_api.request(server.api, "POST", "/flows/filter", {})[0]
        prefect_api.request(server.api, "POST", "/deployments/",
                            {"name": "dr-added", "flow_id": flow["id"]})
        changed = _state(server.api)
    assert "dr-warehouse" not in changed["blocks"] and "dr-added" in changed["deployments"]

    # --dry-run changes nothing: same databases, same contents
    dbs, counts = _databases(env, db), _counts(url, pw)
    dry = run_cli(["restore", backup_id, "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["plan"]
    assert plan["target_exists"] and plan["schema_ok"] and plan["safety_backup"]
    diff = {r["table"]: r["change"] for r in plan["config_diff"]}
    assert diff["block_document"] == 1 and diff["deployment"] == -1
    assert _databases(env, db) == dbs and _counts(url, pw) == counts

    # without a terminal and without --yes: refused, nothing changed
    refused = run_cli(["restore", backup_id], env)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert _databases(env, db) == dbs

    done = run_cli(["restore", backup_id, "--yes", "--json"], env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kept_database"].startswith(f"{db}_pre_restore_")
    assert any("Restart every Prefect server" in s for s in result["next_steps"])
    assert result["safety_backup_id"]
    listed = json.loads(run_cli(["list", "--json"], env).stdout)["backups"]
    safety = next(b for b in listed if b["backup_id"] == result["safety_backup_id"])
    assert safety["labels"] == {"safety": "pre-restore", "restore-of": backup_id, "database": db}

    with PrefectServer(url) as server:  # a restarted server sees the backed-up state
        restored = _state(server.api)
    assert set(restored["blocks"]) == set(before["blocks"])
    assert restored["blocks"]["dr-secret"]["data"]["value"] == "s3cr3t-dr-seed-value"
    assert restored["variables"] == before["variables"]
    assert restored["deployments"] == before["deployments"]

    kept = json.loads(run_cli(["rollback", "--list", "--json"], env).stdout)["kept"]
    assert [k["kind"] for k in kept] == ["pre_restore"]
    back = run_cli(["rollback", "--yes", "--json"], env)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["kept_as"].startswith(f"{db}_rolled_back_")
    with PrefectServer(url) as server:
        again = _state(server.api)
    assert set(again["blocks"]) == set(changed["blocks"])
    assert again["variables"]["dr_string"] == "changed"
    assert "dr-added" in again["deployments"]

    # a second rollback has nothing to bring back
    twice = run_cli(["rollback", "--yes"], env)
    assert twice.returncode == 1 and "no pre-restore database" in twice.stderr
    kept = json.loads(run_cli(["rollback", "--list", "--json"], env).stdout)["kept"]
    assert sorted(k["kind"] for k in kept) == ["rolled_back"]
    dropped = run_cli(["rollback", "--drop", kept[0]["name"], "--yes"], env)
    assert dropped.returncode == 0, dropped.stderr
    assert run_cli(["rollback", "--drop", db, "--yes"], env).returncode == 1  # live: refused


def test_connected_clients_refuse_the_swap(clone: dict[str, str]) -> None:
    env, pw = clone, clone["PGPASSWORD"]
    assert run_cli(["backup"], env).returncode == 0
    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=pw,
                         application_name="some-worker"):
        proc = run_cli(["restore", "--latest", "--yes", "--no-safety-backup"], env)
        assert proc.returncode == 1
        assert "clients are connected" in proc.stderr and "some-worker" in proc.stderr
    assert _databases(env, env["_DB"]) == [env["_DB"]]  # nothing renamed, nothing left
    forced = run_cli(["restore", "--latest", "--yes", "--no-safety-backup",
                      "--force-disconnect"], env)
    assert forced.returncode == 0, forced.stderr


def test_restore_into_a_new_database(clone: dict[str, str]) -> None:
    env = clone
    assert run_cli(["backup"], env).returncode == 0
    new = f"{env['_DB']}_new"
    target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/" + new
    proc = run_cli(["restore", "--latest", "--yes", "--target-url", target, "--json",
                    "--jobs", "1"], env)  # the streamed path (others stage for --jobs 2)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kept_database"] is None and out["safety_backup_id"] is None
    assert _counts(target, env["PGPASSWORD"]) == _counts(env["PREFECT_DR_DATABASE_URL"],
                                                          env["PGPASSWORD"])


def test_newer_schema_is_refused(clone: dict[str, str]) -> None:
    env, pw = clone, clone["PGPASSWORD"]
    future = f"{env['_DB']}_future"
    future_url = clone_prefect_db(env, future)
    with psycopg.connect(future_url, password=pw, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    assert run_cli(["backup"], dict(env, PREFECT_DR_DATABASE_URL=future_url)).returncode == 0
    proc = run_cli(["restore", "--latest", "--yes"], env)
    assert proc.returncode == 14, proc.stderr
    assert "belongs to no Prefect release" in proc.stderr
    assert _databases(env, env["_DB"]) == sorted([env["_DB"], future])


def test_stop_before_the_swap_leaves_live_database_serving(clone: dict[str, str],
                                                           bulky_db: str) -> None:
    """SIGTERM: exit 130, nothing left behind; SIGKILL at several points: the live database
    serves unchanged and the next restore clears what the killed runs left."""
    from slowproxy import SlowProxy

    env, pw = clone, clone["PGPASSWORD"]
    bulky = dict(env, PREFECT_DR_DATABASE_URL=bulky_db)
    assert run_cli(["backup"], bulky).returncode == 0  # a big backup, restored over the clone
    target = urlsplit(env["PREFECT_DR_S3_ENDPOINT_URL"])
    proxy = SlowProxy((target.hostname, target.port), rate=4_000_000)
    slow = dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    before = _counts(env["PREFECT_DR_DATABASE_URL"], pw)
    try:
        for sig, delay in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.0),
                           (signal.SIGKILL, 1.0), (signal.SIGKILL, 2.5)):
            proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "restore", "--latest",
                                     "--yes", "--no-safety-backup", "--allow-newer-schema"],
                                    env=slow, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while len(_databases(env, env["_DB"])) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(delay)
            if proc.poll() is not None:
                raise AssertionError(f"restore ended (exit {proc.returncode}) before it could be "
                                     f"stopped: {proc.stderr.read() if proc.stderr else ''}")
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
            assert _counts(env["PREFECT_DR_DATABASE_URL"], pw) == before  # live, unchanged
            if sig == signal.SIGTERM:  # a stopped run cleans up after itself
                assert proc.returncode == 130 and "Traceback" not in err, err
                assert _databases(env, env["_DB"]) == [env["_DB"]]
                assert not list(Path(tempfile.gettempdir()).glob(
                    f"prefect-dr-restore-{proc.pid}-*.dump"))  # its staged plaintext too
    finally:
        proxy.close()
    leftovers = [d for d in _databases(env, env["_DB"]) if "_restore_" in d]
    assert leftovers  # a killed run cannot clean up ...
    staged = list(Path(tempfile.gettempdir()).glob("prefect-dr-restore-*.dump"))
    dry = run_cli(["restore", "--latest", "--dry-run"], env)
    assert dry.returncode == 0
    done = run_cli(["restore", "--latest", "--yes", "--no-safety-backup"], env)
    assert done.returncode == 0, done.stderr  # ... the next restore does
    assert not [d for d in _databases(env, env["_DB"]) if "_restore_" in d
                and "_pre_restore_" not in d]
    assert not [p for p in staged if p.exists()]  # nor plaintext dumps of killed runs
