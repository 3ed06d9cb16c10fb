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
    taken = run_cli(["backup", "--kind", "config-only", "--json"], env)
    assert taken.returncode == 0, taken.stderr
    bid = json.loads(taken.stdout)["backup_id"]
    name = f"prefect_rcc_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"],
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(env["PREFECT_DR_DATABASE_URL"])
    url = f"postgresql://{parts.username}:{env['PGPASSWORD']}@{parts.hostname}:{parts.port}/{name}"
    try:
        with PrefectServer(url) as server:
            # the safety backup is of the target server's database: another one is refused
            wrong = run_cli(["restore-config", bid, "--json"],
                            dict(env, PREFECT_API_URL=server.api))
            assert wrong.returncode == 2, wrong.stderr
            assert "is not the database of the Prefect server" in wrong.stderr
            assert request(server.api, "POST", "/variables/filter", {}) == []
            target = dict(env, PREFECT_API_URL=server.api,
                          PREFECT_DR_DATABASE_URL=url.replace(f":{env['PGPASSWORD']}@", "@"))
            dry = run_cli(["restore-config", bid, "--dry-run", "--json"], target)
            assert dry.returncode == 0, dry.stderr
            plan = json.loads(dry.stdout)["plan"]
            names = {i["name"] for i in plan["items"] if i["action"] == "create"}
            assert {"secret/dr-secret", "dr_string", "dr-pool", "dr-flow/dr-deployment",
                    "dr-automation", "dr-gcl"} <= names
            assert "s3cr3t-dr-seed-value" not in dry.stdout + dry.stderr
            assert request(server.api, "POST", "/variables/filter", {}) == []  # nothing written

            done = run_cli(["restore-config", bid, "--json"], target)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["result"]["ok"]
            first_safety = json.loads(done.stdout)["safety_backup_id"]
            assert first_safety and "dr-secret" in json.loads(done.stdout)["undo"]
            blocks = request(server.api, "POST", "/block_documents/filter",
                             {"include_secrets": True})
            secret = next(b for b in blocks if b["name"] == "dr-secret")
            assert secret["data"]["value"] == "s3cr3t-dr-seed-value"

            again = run_cli(["restore-config", bid, "--json"], target)
            assert again.returncode == 0, again.stderr
            counts = json.loads(again.stdout)["result"]["counts"]
            assert counts.get("created", 0) == 0 and counts.get("overwritten", 0) == 0
            assert json.loads(again.stdout)["safety_backup_id"] is None  # nothing to undo

            # overwriting a live server's objects needs a typed confirmation or --yes
            request(server.api, "PATCH", "/variables/name/dr_string", {"value": "changed"})
            asked = run_cli(["restore-config", bid, "--on-conflict", "overwrite"], target)
            assert asked.returncode == 2, asked.stderr
            assert "no terminal to confirm on; pass --yes" in asked.stderr
            value = request(server.api, "GET", "/variables/name/dr_string")["value"]
            assert value == "changed"  # nothing written
            confirmed = run_cli(["restore-config", bid, "--on-conflict", "overwrite",
                                 "--yes", "--json"], target)
            assert confirmed.returncode == 0, confirmed.stderr
            assert json.loads(confirmed.stdout)["result"]["counts"]["overwritten"] == 1
            assert request(server.api, "GET", "/variables/name/dr_string")["value"] != "changed"
            safety = json.loads(confirmed.stdout)["safety_backup_id"]
            undo = json.loads(confirmed.stdout)["undo"]
            assert f"prefect-dr restore-config {safety} --on-conflict overwrite" in undo
            shown = json.loads(run_cli(["show", safety, "--json"], target).stdout)
            assert shown["kind"] == "config-only"
            assert shown["labels"]["safety"] == "pre-restore-config"
            assert shown["labels"]["restore-of"] == bid

            # the way back: the value the overwrite replaced is back
            back = run_cli(["restore-config", safety, "--on-conflict", "overwrite", "--yes",
                            "--json"], target)
            assert back.returncode == 0, back.stderr
            assert request(server.api, "GET", "/variables/name/dr_string")["value"] == "changed"
            skipped = run_cli(["restore-config", bid, "--on-conflict", "overwrite", "--yes",
                               "--no-safety-backup", "--json"], target)
            assert skipped.returncode == 0, skipped.stderr
            assert json.loads(skipped.stdout)["safety_backup_id"] is None

            bad = run_cli(["restore-config", bid, "--only", "nonsense"], target)
            assert bad.returncode == 2 and "Traceback" not in bad.stderr
    finally:
        drop_db(env, name)
