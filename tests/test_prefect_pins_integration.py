"""The pins docs/deploy.md gives for Prefect 3.2, 3.3, 3.5 and 3.6 (issue 23): each release,
installed today with exactly those pins (scripts/prefect-venv), starts its server against a new
database, saves a block through its API, and is backed up by prefect-dr, whose dependency
ranges admit the libraries of that environment (tests/test_dependency_ranges.py). CI has 3.1,
3.4 and 3.9 (tests/test_prefect_versions_integration.py); these four run with
``scripts/test --matrix`` (PREFECT_DR_TEST_MATRIX=full): each costs an install and a server
start."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import clean_cli_env, run_cli
from prefect_servers import create_secret, read_secret
from test_prefect_versions_integration import FULL, _admin, _url, venv_python

from prefect_dr.pg import scratch
from prefect_dr.smoke import PrefectServer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not FULL, reason="scripts/test --matrix runs these")]
#: the newest release of each minor docs/deploy.md pins apart from 3.1 and 3.4
PINNED = ("3.2.15", "3.3.7", "3.5.0", "3.6.29")


@pytest.mark.parametrize("version", PINNED)
def test_the_documented_pins_start_the_server(stack_env: dict[str, str],
                                              identity: tuple[Path, str], version: str) -> None:
    env = clean_cli_env(stack_env, identity, PREFECT_DR_S3_PREFIX=f"pin-{uuid.uuid4().hex[:8]}")
    python = venv_python(version)
    name = f"pin_{version.replace('.', '_')}_{uuid.uuid4().hex[:6]}"
    with _admin(env) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _url(env, name)
        with PrefectServer(url, python=python) as server:
            create_secret(server.api, "pin-secret", f"from-{version}")
            assert read_secret(server.api, "pin-secret") == f"from-{version}"
            done = run_cli(["--json", "backup"],
                           dict(env, PREFECT_DR_DATABASE_URL=url, PREFECT_API_URL=server.api))
        assert done.returncode == 0, done.stderr[-2000:]
        shown = json.loads(run_cli(["--json", "show", json.loads(done.stdout)["backup_id"]],
                                   env).stdout)
        assert shown["prefect_version"] == version
        plan = run_cli(["--json", "restore", shown["backup_id"], "--dry-run", "--target-url",
                        _url(env, f"pin_new_{uuid.uuid4().hex[:6]}")], env)
        assert plan.returncode == 0, plan.stderr[-2000:]
        assert json.loads(plan.stdout)["plan"]["schema_ok"]  # a revision prefect-dr knows
    finally:
        with _admin(env) as conn:
            scratch.drop_database(conn, name)
