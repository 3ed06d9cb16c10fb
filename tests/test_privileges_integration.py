"""Fidelity of a restore beyond rows (issue 21), against the real stack: a GRANT to a second
role, table comments and storage parameters (also on the history tables a restore rebuilds with
CREATE TABLE ... LIKE) survive restore in place, restore --tiered and verify; a role the target
lacks is named, before the restore and after."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import run_cli
from test_tiered_restore_integration import _with_password

pytestmark = pytest.mark.integration


def _admin(env: dict[str, str]) -> psycopg.Connection:
    return psycopg.connect(env["PREFECT_DR_STACK_PG_ADMIN_URL"],
                           password=env["PREFECT_DR_STACK_PG_ADMIN_PASSWORD"], autocommit=True)


@pytest.fixture()
def roles(cli_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Two NOLOGIN roles (a reporting role that stays, one that goes); dropped after the
    databases that name them (this fixture is set up before ``clone``, so torn down after)."""
    names = (f"dr_report_{uuid.uuid4().hex[:6]}", f"dr_gone_{uuid.uuid4().hex[:6]}")
    with _admin(cli_env) as conn:
        for name in names:
            conn.execute(f'CREATE ROLE "{name}" NOLOGIN')
    yield names
    with _admin(cli_env) as conn:
        for name in names:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def _state(url: str, pw: str, role: str) -> dict[str, object]:
    with psycopg.connect(url, password=pw) as conn:
        row = conn.execute(
            "SELECT has_table_privilege(%s, 'public.log', 'SELECT'), "
            "has_table_privilege(%s, 'public.flow_run', 'SELECT'), "
            "has_table_privilege(%s, 'public.events', 'SELECT'), "
            "has_schema_privilege(%s, 'public', 'USAGE'), "
            "obj_description('public.log'::regclass, 'pg_class'), "
            "(SELECT reloptions FROM pg_class WHERE oid = 'public.log'::regclass)",
            (role, role, role, role)).fetchone()
    return {"log": row[0], "flow_run": row[1], "events": row[2], "usage": row[3],
            "comment": row[4], "options": row[5]}


WANT = {"log": True, "flow_run": True, "events": True, "usage": True,
        "comment": "run logs (reporting reads them)",
        "options": ["autovacuum_vacuum_scale_factor=0.01"]}


def test_a_grant_to_a_second_role_comments_and_storage_parameters_survive_restore_and_verify(
        roles: tuple[str, str], clone: dict[str, str]) -> None:
    env, pw, db = clone, clone["PGPASSWORD"], clone["_DB"]
    report, gone = roles
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{report}"')
        conn.execute(f'GRANT SELECT ON log, flow_run, events TO "{report}"')
        conn.execute(f'GRANT SELECT ON flow TO "{gone}"')
        conn.execute("COMMENT ON TABLE log IS 'run logs (reporting reads them)'")
        conn.execute("ALTER TABLE log SET (autovacuum_vacuum_scale_factor = 0.01)")
    assert _state(url, pw, report) == WANT
    backup = run_cli(["backup", "--json"], env)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backup_id"]
    shown = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
    assert [report, "SELECT", False] in shown["privileges"]["tables"]["log"]["grants"]

    verified = run_cli(["verify", backup_id, "--json"], env)
    assert verified.returncode == 0, verified.stderr
    check = next(c for c in json.loads(verified.stdout)["reports"][0]["checks"]
                 if c["name"] == "privileges")
    assert check["ok"] and "grants restored" in check["detail"], check

    with psycopg.connect(url, password=pw, autocommit=True) as conn:  # the role goes
        conn.execute(f'REVOKE ALL ON flow FROM "{gone}"')
    with _admin(env) as conn:
        conn.execute(f'DROP ROLE "{gone}"')
    plan = run_cli(["restore", backup_id, "--dry-run", "--json"], env)
    assert plan.returncode == 0, plan.stderr
    assert any(gone in w for w in json.loads(plan.stdout)["plan"]["warnings"]), plan.stdout

    done = run_cli(["restore", backup_id, "--yes", "--json", "--no-safety-backup"], env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["missing_roles"] == [gone]
    assert any(gone in s for s in result["next_steps"]), result["next_steps"]
    assert gone in done.stderr  # the warning, naming the role
    assert _state(url, pw, report) == WANT

    tiered = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{db}_tiered"
    done = run_cli(["restore", backup_id, "--target-url", tiered, "--tiered", "--yes",
                    "--json"], env)
    assert done.returncode == 0, done.stderr
    assert _state(_with_password(tiered, pw), pw, report) == WANT
    with psycopg.connect(_with_password(tiered, pw), password=pw) as conn:
        owners = {r[0] for r in conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind = 'r'")}
    assert len(owners) == 1, owners
