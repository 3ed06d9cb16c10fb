"""docs/break-glass.md, run for real: S3 client | age -d | zstd -d | pg_restore (and psql's
\\copy for the history artifacts), no prefect-dr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from conftest import drop_db, run_cli

pytestmark = pytest.mark.integration

FETCH = ("import boto3,os,sys; boto3.client('s3', endpoint_url=os.environ['EP'], "
         "region_name='us-east-1').download_fileobj(os.environ['B'], os.environ['K'], "
         "sys.stdout.buffer)")


@pytest.mark.skipif(shutil.which("age") is None, reason="Debian's age is not installed")
def test_restore_with_stock_tools(cli_env: dict[str, str], identity: tuple[Path, str]) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"bg-{uuid.uuid4().hex[:8]}")
    proc = run_cli(["backup", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(run_cli(["show", "--latest", "--json"], env).stdout)
    dump = next(a for a in manifest["artifacts"] if a["name"] == "dump")
    name = f"prefect_breakglass_{uuid.uuid4().hex[:6]}"
    url = env["PREFECT_DR_DATABASE_URL"]
    target = url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, password=env["PGPASSWORD"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        shell_env = dict(os.environ, PGPASSWORD=env["PGPASSWORD"],
                         AWS_ACCESS_KEY_ID=env["AWS_ACCESS_KEY_ID"],
                         AWS_SECRET_ACCESS_KEY=env["AWS_SECRET_ACCESS_KEY"],
                         EP=env["PREFECT_DR_S3_ENDPOINT_URL"], B=env["PREFECT_DR_S3_BUCKET"],
                         K=dump["key"], ID=str(identity[0]), TARGET=target, PY=sys.executable,
                         FETCH=FETCH)
        # as docs/break-glass.md says: the dump's tables and data, every artifact's rows,
        # then the dump's constraints and indexes
        restore = ('set -o pipefail; "$PY" -c "$FETCH" | age -d -i "$ID" | zstd -d '
                   '| pg_restore --no-owner --exit-on-error {} --dbname "$TARGET"')
        subprocess.run(restore.format("--section=pre-data --section=data"), shell=True,
                       executable="/bin/bash", env=shell_env, check=True, capture_output=True)
        parts = [a for a in manifest["artifacts"] if a.get("table")]
        assert {a["table"] for a in parts} == {"events", "event_resources", "log", "flow_run",
                                              "flow_run_state", "flow_run_input", "task_run",
                                              "task_run_state"}
        for artifact in parts:  # format 4: history and run tables' rows, by psql's \copy
            subprocess.run(
                'set -o pipefail; "$PY" -c "$FETCH" | age -d -i "$ID" | zstd -d '
                '| psql -X -v ON_ERROR_STOP=1 --dbname "$TARGET" '
                '-c "\\copy public.$T ($COLS) FROM STDIN"',
                shell=True, executable="/bin/bash", check=True, capture_output=True,
                env=dict(shell_env, K=artifact["key"], T=artifact["table"],
                         COLS=",".join(artifact["columns"])))
        # pg_restore stops reading once it has the post-data entries: the fetch upstream then
        # dies of SIGPIPE, so the pipeline's status is pg_restore's own (no pipefail)
        post = subprocess.run(restore.format("--section=post-data").replace(
            "set -o pipefail; ", ""), shell=True, text=True, executable="/bin/bash",
            env=shell_env, capture_output=True)
        assert post.returncode == 0, post.stderr
        with psycopg.connect(target, password=env["PGPASSWORD"]) as conn:
            for table in ("block_document", "variable", "flow_run", "flow_run_state",
                          "task_run", "deployment", "events", "event_resources", "log"):
                rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                assert rows == manifest["row_counts"][table]["rows"], table
            names = {r[0] for r in conn.execute("SELECT name FROM variable")}
            assert {"dr_string", "dr_number"} <= names
    finally:
        drop_db(env, name)
