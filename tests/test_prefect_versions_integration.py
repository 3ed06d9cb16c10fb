"""Prefect 3.1 and 3.4 beside 3.9.1: older backups restore into a 3.9.1 target and serve; a
3.9.1 backup onto a 3.4 database is refused (exit 14) whether or not Prefect is installed beside
prefect-dr; rehearse-upgrade runs 3.9.1's migrations on a 3.4 backup.

The older Prefects run from their own cached venvs (scripts/prefect-venv, made by bootstrap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import ROOT, clean_cli_env, run_cli
from prefect_servers import create_secret, read_secret

from prefect_dr import errors
from prefect_dr.pg import scratch
from prefect_dr.smoke import PrefectServer

pytestmark = pytest.mark.integration
HEADS = {"3.1.15": "5d03c01be85e", "3.4.25": "9e83011d1f2a", "3.9.1": "91e2b8f3d6a4"}
#: CI backs up and restores with one older Prefect (3.4, which the refusal and the rehearsal
#: need too); `scripts/test --matrix` (PREFECT_DR_TEST_MATRIX=full) with 3.1.15 as well.
FULL = os.environ.get("PREFECT_DR_TEST_MATRIX") == "full"
OLDER = ("3.1.15", "3.4.25") if FULL else ("3.4.25",)


def venv_python(version: str) -> str:
    """The cached venv of Prefect ``version`` (created on first use)."""
    out = subprocess.run([str(ROOT / "scripts" / "prefect-venv"), version], text=True,
                         capture_output=True, check=False, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def _admin(env: dict[str, str]) -> psycopg.Connection:
    base = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0]
    return psycopg.connect(f"{base}/postgres", password=env["PGPASSWORD"], autocommit=True)


def _url(env: dict[str, str], name: str) -> str:
    return env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def older(stack_env: dict[str, str], identity: tuple[Path, str]
          ) -> Iterator[tuple[dict[str, str], dict[str, tuple[str, str]]]]:
    """A database made and served by each older Prefect (a secret block `pv-secret`), backed up
    while its server runs; yields (env, version -> (backup id, database URL)), plus a
    config-only backup of the stack's 3.9.1 database under "3.9.1"."""
    env = clean_cli_env(stack_env, identity, PREFECT_DR_S3_PREFIX=f"pv-{uuid.uuid4().hex[:10]}")
    made: list[str] = []
    out: dict[str, tuple[str, str]] = {}
    try:
        for version in OLDER:
            python = venv_python(version)
            name = f"pv_{version.replace('.', '_')}_{uuid.uuid4().hex[:6]}"
            with _admin(env) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            made.append(name)
            url = _url(env, name)
            with PrefectServer(url, python=python) as server:
                create_secret(server.api, "pv-secret", f"from-{version}")
                done = run_cli(["--json", "backup"],
                               dict(env, PREFECT_DR_DATABASE_URL=url, PREFECT_API_URL=server.api))
            assert done.returncode == 0, done.stderr[-2000:]
            backup_id = json.loads(done.stdout)["backup_id"]
            shown = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
            assert (shown["prefect_version"], shown["alembic_revision"]) == (version,
                                                                             HEADS[version])
            out[version] = (backup_id, url)
        done = run_cli(["--json", "backup", "--kind", "config-only"], env)
        assert done.returncode == 0, done.stderr[-2000:]
        out["3.9.1"] = (json.loads(done.stdout)["backup_id"], env["PREFECT_DR_DATABASE_URL"])
        yield env, out
    finally:
        with _admin(env) as conn:
            for name in made:
                scratch.drop_database(conn, name)


@pytest.mark.parametrize("version", OLDER)
def test_older_backup_restores_into_a_391_target_and_serves(
        older: tuple[dict[str, str], dict[str, tuple[str, str]]], version: str) -> None:
    env, ids = older
    backup_id = ids[version][0]
    name = f"pv_target_{uuid.uuid4().hex[:6]}"
    target = _url(env, name)
    try:
        dry = run_cli(["--json", "restore", backup_id, "--dry-run", "--target-url", target], env)
        assert dry.returncode == 0, dry.stderr[-2000:]
        plan = json.loads(dry.stdout)["plan"]
        assert plan["schema_ok"] and "new database" in plan["schema_reason"]
        # a 3.9.1 target named explicitly: the older revision is migrated forward on start
        told = run_cli(["--json", "restore", backup_id, "--dry-run", "--target-url", target,
                        "--target-prefect-version", "3.9.1"], env)
        reason = json.loads(told.stdout)["plan"]["schema_reason"]
        assert told.returncode == 0 and "migrates it forward on start" in reason, reason
        done = run_cli(["restore", backup_id, "--yes", "--target-url", target], env)
        assert done.returncode == 0, done.stderr[-2000:]
        with PrefectServer(target) as server:  # Prefect 3.9.1, migrating on start
            assert read_secret(server.api, "pv-secret") == f"from-{version}"
        with psycopg.connect(target, password=env["PGPASSWORD"]) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
                HEADS["3.9.1"],)
    finally:
        with _admin(env) as conn:
            scratch.drop_database(conn, name)


def test_smoke_says_which_prefect_served_and_that_it_migrated(
        older: tuple[dict[str, str], dict[str, tuple[str, str]]]) -> None:
    env, ids = older
    proc = run_cli(["--json", "verify", ids[OLDER[0]][0], "--prefect-smoke"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    check = next(c for c in json.loads(proc.stdout)["reports"][0]["checks"]
                 if c["name"] == "prefect smoke")
    assert "Prefect 3.9.1 served" in check["detail"]
    assert f"migrated the database from {HEADS[OLDER[0]]} to {HEADS['3.9.1']}" in \
        check["detail"]


@pytest.mark.parametrize("beside", ["prefect installed", "no prefect"])
def test_391_backup_onto_a_34_database_is_refused(
        older: tuple[dict[str, str], dict[str, tuple[str, str]]], beside: str,
        tmp_path: Path) -> None:
    env, ids = older
    run_env = dict(env)
    if beside == "no prefect":  # as in the container image: `import prefect` fails
        (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['prefect'] = None\n")
        run_env["PYTHONPATH"] = str(tmp_path)
        probe = subprocess.run([sys.executable, "-c", "import prefect"], env=run_env,
                               capture_output=True, check=False)
        assert probe.returncode != 0
    backup_id, target = ids["3.9.1"][0], ids["3.4.25"][1]
    for extra in (["--dry-run"], ["--yes"]):
        proc = run_cli(["restore", backup_id, "--target-url", target, *extra], run_env)
        assert proc.returncode == errors.SCHEMA_REFUSED, proc.stderr[-2000:]
        assert "newer than the target's Prefect runs" in proc.stderr
    new = _url(env, f"pv_new_{uuid.uuid4().hex[:6]}")
    told = run_cli(["restore", backup_id, "--dry-run", "--target-url", new,
                    "--target-prefect-version", "3.4.25"], run_env)
    assert told.returncode == errors.SCHEMA_REFUSED, told.stderr[-2000:]
    assert "Prefect 3.4.25 at the target (--target-prefect-version)" in told.stderr


def test_rehearse_upgrade_of_a_34_backup_with_391(
        older: tuple[dict[str, str], dict[str, tuple[str, str]]]) -> None:
    env, ids = older
    backup_id = ids["3.4.25"][0]
    proc = run_cli(["--json", "rehearse-upgrade", backup_id, "--prefect-python",
                    sys.executable], env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)["rehearsal"]
    assert result["ok"] and result["prefect_version"] == "3.9.1"
    assert (result["from_revision"], result["to_revision"]) == (HEADS["3.4.25"],
                                                                HEADS["3.9.1"])
    assert result["steps"] and result["steps"][-1]["revision"] == HEADS["3.9.1"]
    assert all(s["seconds"] >= 0 for s in result["steps"])
    assert result["total_seconds"] > 0 and result["size_before"] and result["size_after"]
    shown = json.loads(run_cli(["--json", "show", backup_id], env).stdout)
    history = {a["table"]: shown["row_counts"][a["table"]]["rows"]
               for a in shown["artifacts"] if a.get("table")}
    assert history and result["history_rows"] == history  # the migrations met the history
    with _admin(env) as conn:  # the scratch database is gone
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (result["scratch_database"],)).fetchone() == (0,)
    missing = run_cli(["rehearse-upgrade", backup_id, "--prefect-python", "/nonexistent/python"],
                      env)
    assert missing.returncode == errors.SETUP and "--prefect-python" in missing.stderr
