"""The history tables loaded at the same time (issue 25): the first table that fails stops the
others, whose loads roll back (no shadow table, still pending), and the restore ends with one
error line naming `restore --resume`; the sizing of a loading session's index-build memory.
Real stack: PostgreSQL, SeaweedFS."""

from __future__ import annotations

import os

import boto3
import psycopg
import pytest
from conftest import backup_manifest, run_cli
from test_tiered_restore_integration import _serving, _with_password, add_history

from prefect_dr.backfill_state import MAX_MAINTENANCE_MEM, MIN_MAINTENANCE_MEM, maintenance_mem
from prefect_dr.runs_split import RUN_TABLES

pytestmark = pytest.mark.integration
MiB, GiB = 1 << 20, 1 << 30


def test_index_build_memory_follows_the_table_within_the_server_share() -> None:
    default = 64 * MiB
    # about half the table's plaintext, never below the server's default
    assert maintenance_mem(600 * MiB, 2, 4 * GiB, default) == 300 * MiB
    assert maintenance_mem(10 * MiB, 2, 4 * GiB, default) == default
    assert maintenance_mem(10 * MiB, 1, 4 * GiB, 512 * MiB) == 512 * MiB
    # a quarter of effective_cache_size, shared by the loads running at once
    assert maintenance_mem(4 * GiB, 2, 4 * GiB, default) == 512 * MiB
    assert maintenance_mem(4 * GiB, 1, 4 * GiB, default) == 1 * GiB
    assert maintenance_mem(64 * GiB, 1, 64 * GiB, default) == MAX_MAINTENANCE_MEM
    assert maintenance_mem(4 * GiB, 3, 256 * MiB, 0) == MIN_MAINTENANCE_MEM
    assert maintenance_mem(333 * MiB + 12345, 1, 4 * GiB, 0) % MiB == 0  # whole MiB for SET


def _state(url: str, pw: str) -> dict[str, tuple[str, bool]]:
    """{table: (status, has a shadow table)} of the unfinished backfill."""
    with psycopg.connect(url, password=pw) as conn:
        return {r[0]: (r[1], bool(r[2])) for r in conn.execute(
            "SELECT table_name, status, to_regclass('prefect_dr_backfill.' || table_name) "
            "IS NOT NULL FROM prefect_dr_backfill.state")}


def test_a_damaged_history_artifact_stops_the_other_loads_cleanly(
        clone: dict[str, str]) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    add_history(url, pw, rows=20000)
    manifest = backup_manifest(env)
    backup_id = str(manifest["backup_id"])
    damaged = next(a for a in manifest["artifacts"] if a.get("table") == "events")
    s3 = boto3.client("s3", endpoint_url=env["PREFECT_DR_S3_ENDPOINT_URL"],
                      region_name=env["PREFECT_DR_S3_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=damaged["key"],
                  Body=os.urandom(int(damaged["size"])))

    done = run_cli(["restore", backup_id, "--tiered", "--yes", "--no-safety-backup",
                    "--jobs", "2", "--json"], env)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "restore --resume" in done.stderr, done.stderr
    assert _serving(env, db, backup_id)  # phase 1 is live
    state = _state(url, pw)
    assert state["events"] == ("pending", False), state  # the damaged one, rolled back
    for table, (status, shadow) in state.items():  # stopped: rolled back; or loaded whole
        done = ("loaded", False) if table in RUN_TABLES else ("ready", True)  # runs: no shadow
        assert (status, shadow) in (("pending", False), done), (table, state)
    with psycopg.connect(url, password=pw) as conn:  # nothing of the restore still runs
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                            "application_name = 'prefect-dr'", (db,)).fetchone()[0]
    assert left == 0
    listed = run_cli(["rollback", "--list"], env)
    assert "unfinished history backfill of backup " + backup_id in listed.stdout
