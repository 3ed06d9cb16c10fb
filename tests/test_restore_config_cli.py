"""restore-config through the CLI, into a fresh Prefect server on loopback."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import drop_db, run_cli

from prefect_dr.prefect_api import request
from prefect_dr.smoke import PrefectServer

pytestmark = pytest.mark.integration


def test_restore_config_cli_dry_run_apply_and_rerun(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"rcc-{uuid.uuid4().hex[:10]}")
    assert run_cli(["backup", "--kind", "config-only"], env).returncode == 0
    name = f"prefect_rcc_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"],
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(env["PREFECT_DR_DATABASE_URL"])
    url = f"postgresql://{parts.username}:{env['PGPASSWORD']}@{parts.hostname}:{parts.port}/{name}"
    try:
        with PrefectServer(url) as server:
            target = dict(env, PREFECT_API_URL=server.api)
            dry = run_cli(["restore-config", "--latest", "--dry-run", "--json"], target)
            assert dry.returncode == 0, dry.stderr
            plan = json.loads(dry.stdout)["plan"]
            names = {i["name"] for i in plan["items"] if i["action"] == "create"}
            assert {"secret/dr-secret", "dr_string", "dr-pool", "dr-flow/dr-deployment",
                    "dr-automation", "dr-gcl"} <= names
            assert "s3cr3t-dr-seed-value" not in dry.stdout + dry.stderr
            assert request(server.api, "POST", "/variables/filter", {}) == []  # nothing written

            done = run_cli(["restore-config", "--latest", "--json"], target)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["result"]["ok"]
            blocks = request(server.api, "POST", "/block_documents/filter",
                             {"include_secrets": True})
            secret = next(b for b in blocks if b["name"] == "dr-secret")
            assert secret["data"]["value"] == "s3cr3t-dr-seed-value"

            again = run_cli(["restore-config", "--latest", "--json"], target)
            assert again.returncode == 0, again.stderr
            counts = json.loads(again.stdout)["result"]["counts"]
            assert counts.get("created", 0) == 0 and counts.get("overwritten", 0) == 0

            # overwriting a live server's objects needs a typed confirmation or --yes
            request(server.api, "PATCH", "/variables/name/dr_string", {"value": "changed"})
            asked = run_cli(["restore-config", "--latest", "--on-conflict", "overwrite"], target)
            assert asked.returncode == 2, asked.stderr
            assert "no terminal to confirm on; pass --yes" in asked.stderr
            value = request(server.api, "GET", "/variables/name/dr_string")["value"]
            assert value == "changed"  # nothing written
            confirmed = run_cli(["restore-config", "--latest", "--on-conflict", "overwrite",
                                 "--yes", "--json"], target)
            assert confirmed.returncode == 0, confirmed.stderr
            assert json.loads(confirmed.stdout)["result"]["counts"]["overwritten"] == 1
            assert request(server.api, "GET", "/variables/name/dr_string")["value"] != "changed"

            bad = run_cli(["restore-config", "--latest", "--only", "nonsense"], target)
            assert bad.returncode == 2 and "Traceback" not in bad.stderr
    finally:
        drop_db(env, name)
