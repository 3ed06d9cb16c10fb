"""The database from Prefect's own settings, against the real stack: with PREFECT_DR_DATABASE_URL
and PGPASSWORD unset and only PREFECT_API_DATABASE_CONNECTION_URL (asyncpg form, password inside)
set, doctor, backup and verify work, and the password shows in no output, no manifest and no
client program's argv."""

from __future__ import annotations

import json
import shutil
import stat
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from conftest import run_cli, s3_client

pytestmark = pytest.mark.integration


def _wrapped_pg_bin(tmp_path: Path, log: Path) -> Path:
    """A PREFECT_DR_PG_BIN_DIR whose pg_dump/pg_restore record their argv and environment's
    PGPASSWORD presence, then run the real programs."""
    bin_dir = tmp_path / "pg-bin"
    bin_dir.mkdir()
    for program in ("pg_dump", "pg_restore"):
        real = shutil.which(program)
        assert real, f"{program} not on PATH"
        script = bin_dir / program
        script.write_text(
            "#!/bin/sh\n"
            f"printf '%s pgpassword=%s argv:' '{program}' \"${{PGPASSWORD:+set}}\" >> '{log}'\n"
            f"printf ' %s' \"$@\" >> '{log}'\n"
            f"printf '\\n' >> '{log}'\n"
            f"exec '{real}' \"$@\"\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_doctor_backup_verify_with_only_prefects_connection_url(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"pfx-{uuid.uuid4().hex[:10]}")
    password = env.pop("PGPASSWORD")
    libpq = urlsplit(env.pop("PREFECT_DR_DATABASE_URL"))
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
        f"postgresql+asyncpg://{libpq.username}:{quote(password, safe='')}@{libpq.hostname}:"
        f"{libpq.port}{libpq.path}?ssl=disable")
    env["PGPASSFILE"] = str(tmp_path / "no-such-pgpass")  # no other way to the password
    argv_log = tmp_path / "argv.log"
    env["PREFECT_DR_PG_BIN_DIR"] = str(_wrapped_pg_bin(tmp_path, argv_log))
    outputs: list[str] = []

    def run(*args: str) -> str:
        proc = run_cli(list(args), env)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    shown = json.loads(run("config", "show", "--json"))
    [row] = [r for r in shown["settings"] if r["name"] == "database_url"]
    assert row["source"] == "env PREFECT_API_DATABASE_CONNECTION_URL"
    assert row["value"] == (f"postgresql://{libpq.username}:***@{libpq.hostname}:{libpq.port}"
                            f"{libpq.path}?sslmode=disable")

    checks = {c["name"]: c for c in json.loads(run("doctor", "--json"))["checks"]}
    assert checks["database"]["status"] == "ok", checks["database"]
    assert checks["prefect schema"]["status"] == "ok", checks["prefect schema"]

    backup = json.loads(run("backup", "--json"))
    backup_id = backup["backup_id"]
    run("verify", backup_id)
    manifest = json.loads(run("show", backup_id, "--json"))
    assert manifest["database"] == f"{libpq.hostname}:{libpq.port}{libpq.path} as prefect"
    run("list")

    calls = argv_log.read_text().splitlines()
    assert any(c.startswith("pg_dump pgpassword=set argv:") and "--dbname" in c for c in calls)
    assert any(c.startswith("pg_restore pgpassword=set argv:") for c in calls)
    s3 = s3_client(cli_env)
    keys = [o["Key"] for o in s3.list_objects_v2(
        Bucket=env["PREFECT_DR_S3_BUCKET"], Prefix=env["PREFECT_DR_S3_PREFIX"])["Contents"]]
    texts = [s3.get_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=k)["Body"].read()
             .decode(errors="replace") for k in keys if k.endswith(".json")]
    assert texts  # manifest and verification record
    for text in [*outputs, *calls, *texts]:
        assert password not in text and quote(password, safe="") not in text
