"""Backups of PostgreSQL 14, 15 and 18 restored into 14, 15 and 18 (new databases), each then
served by Prefect 3.9.1 with its secret block, and verified; impossible combinations refused
before any work with one line (exit 16).

The stack runs the three servers (scripts/stack: Debian's 15, 14 from npm, 18 from PyPI). CI
runs a reduced set of pairs; `scripts/test --matrix` (PREFECT_DR_TEST_MATRIX=full) all nine.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import clean_cli_env, run_cli, s3_client
from prefect_servers import read_secret

from prefect_dr import errors
from prefect_dr.pg import scratch
from prefect_dr.smoke import PrefectServer

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-dr-seed-value"  # scripts/seed.py's dr-secret
MAJORS = (14, 15, 18)
FULL = os.environ.get("PREFECT_DR_TEST_MATRIX") == "full"
#: CI: an upgrade across two majors, a downgrade through the filtered 18 client (18 -> 15 takes
#: the same path, in the full matrix).
REDUCED = [(14, 18), (18, 14)]
PAIRS = [(s, d) for s in MAJORS for d in MAJORS] if FULL else REDUCED


def _bases(env: dict[str, str]) -> dict[int, str]:
    """major -> libpq URL of the server without a database name."""
    return {14: env["PREFECT_DR_STACK_PG14_URL"].rsplit("/", 1)[0],
            15: env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0],
            18: env["PREFECT_DR_STACK_PG18_URL"].rsplit("/", 1)[0]}


def _admin(env: dict[str, str], base: str) -> psycopg.Connection:
    return psycopg.connect(f"{base}/postgres", password=env["PGPASSWORD"], autocommit=True)


def _drop(env: dict[str, str], base: str, name: str) -> None:
    with _admin(env, base) as conn:
        scratch.drop_database(conn, name)


def _copy_prefect_db(env: dict[str, str], url: str) -> None:
    """The stack's seeded Prefect 3.9.1 database (secret block dr-secret holding SECRET) copied
    into ``url`` on another server: faster than migrating a new one with a Prefect start."""
    child = dict(os.environ, PGPASSWORD=env["PGPASSWORD"])
    dump = subprocess.run(["pg_dump", "-Fc", "--dbname", env["PREFECT_DR_DATABASE_URL"]],
                          env=child, check=True, capture_output=True).stdout
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--dbname", url], input=dump,
                   env=child, check=True, capture_output=True)


@pytest.fixture(scope="module")
def matrix(stack_env: dict[str, str], identity: tuple[Path, str]
           ) -> Iterator[tuple[dict[str, str], dict[int, str]]]:
    """One backup of a Prefect 3.9.1 database on each source server (the seeded secret block,
    renamed `matrix-secret`); yields (env, major -> backup id)."""
    env = clean_cli_env(stack_env, identity,
                        PREFECT_DR_S3_PREFIX=f"matrix-{uuid.uuid4().hex[:10]}",
                        PREFECT_DR_PG_BIN_DIR=stack_env["PREFECT_DR_STACK_PG18_BIN"])
    bases = _bases(env)
    token = uuid.uuid4().hex[:6]
    made: list[tuple[str, str]] = []
    ids: dict[int, str] = {}
    try:
        for major in sorted({s for s, _ in PAIRS} | {18}):
            name = f"matrix_src_{token}"
            with _admin(env, bases[major]) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            made.append((bases[major], name))
            url = f"{bases[major]}/{name}"
            _copy_prefect_db(env, url)
            with psycopg.connect(url, password=env["PGPASSWORD"], autocommit=True) as conn:
                conn.execute("UPDATE block_document SET name = 'matrix-secret' "
                             "WHERE name = 'dr-secret'")
            done = run_cli(["--json", "backup"], dict(env, PREFECT_DR_DATABASE_URL=url))
            assert done.returncode == 0, done.stderr[-2000:]
            ids[major] = json.loads(done.stdout)["backup_id"]
        yield env, ids
    finally:
        for base, name in made:
            _drop(env, base, name)


def test_backups_record_the_right_pg_dump(matrix: tuple[dict[str, str], dict[int, str]]
                                         ) -> None:
    env, ids = matrix
    for major, backup_id in ids.items():
        manifest = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
        dumped_by = int(manifest["pg_dump_version"].split(".")[0])
        # the server's own major when present; 14 has no client here: the oldest newer, 15
        assert dumped_by == (15 if major == 14 else major), manifest["pg_dump_version"]
        assert manifest["clients"]["pg_dump"].endswith("/pg_dump")


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=[f"{s}to{d}" for s, d in PAIRS])
def test_restore_serve_and_verify(matrix: tuple[dict[str, str], dict[int, str]],
                                  source: int, target: int) -> None:
    env, ids = matrix
    base = _bases(env)[target]
    name = f"matrix_{source}_to_{target}_{uuid.uuid4().hex[:6]}"
    url = f"{base}/{name}"
    try:
        dry = run_cli(["--json", "restore", ids[source], "--dry-run", "--target-url", url], env)
        assert dry.returncode == 0, dry.stderr[-2000:]
        plan = json.loads(dry.stdout)["plan"]
        restorer = plan["restore_client"]
        # a 17+ pg_restore is never sent as is to a server older than 17
        filtered = restorer["psql"] is not None
        assert filtered == (restorer["pg_restore"]["major"] >= 17 > target), restorer
        if source > target:
            assert any("older major" in w for w in plan["warnings"])
        done = run_cli(["restore", ids[source], "--yes", "--target-url", url], env)
        assert done.returncode == 0, done.stderr[-2000:]
        with PrefectServer(url) as server:
            assert read_secret(server.api, "matrix-secret") == SECRET
        checked = run_cli(["--json", "verify", ids[source], "--scratch-url", f"{base}/postgres"],
                          env)
        assert checked.returncode == 0, checked.stderr[-2000:]
        record = json.loads(checked.stdout)["reports"][0]
        restore_check = next(c for c in record["checks"] if c["name"] == "restore")
        assert "pg_restore" in restore_check["detail"]
    finally:
        _drop(env, base, name)


def test_no_18_client_is_refused_before_any_work(
        matrix: tuple[dict[str, str], dict[int, str]]) -> None:
    """Without PREFECT_DR_PG_BIN_DIR naming the 18 client, an 18 archive is refused up front
    with one line naming what to install: restore (and its dry run) creates nothing, verify
    writes no FAILED record, and backup of the 18 server starts nothing."""
    env, ids = matrix
    bare = dict(env, PREFECT_DR_PG_BIN_DIR="")
    base = _bases(env)[15]
    name = f"matrix_refused_{uuid.uuid4().hex[:6]}"
    for args in (["restore", ids[18], "--dry-run", "--target-url", f"{base}/{name}"],
                 ["restore", ids[18], "--yes", "--target-url", f"{base}/{name}"],
                 ["verify", ids[18]]):
        proc = run_cli(args, bare)
        assert proc.returncode == errors.SETUP, (args, proc.stderr[-2000:])
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(said) == 1 and "postgresql-client-18" in said[0], proc.stderr
    with _admin(env, base) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                            (f"{name}%",)).fetchone() == (0,)
    s3 = s3_client(env)
    listed = s3.list_objects_v2(Bucket=env["PREFECT_DR_S3_BUCKET"],
                                Prefix=env["PREFECT_DR_S3_PREFIX"])
    results = [json.loads(s3.get_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=o["Key"])
                          ["Body"].read())["result"]
               for o in listed.get("Contents", [])
               if ids[18] in o["Key"] and "/verifications/" in o["Key"]]
    assert "failed" not in results  # (the working pairs above wrote passed ones)
    backup = run_cli(["backup"], dict(bare,
                                      PREFECT_DR_DATABASE_URL=env["PREFECT_DR_STACK_PG18_URL"]))
    assert backup.returncode == errors.SETUP and "no pg_dump can dump" in backup.stderr


def test_doctor_names_the_client_each_operation_uses(
        matrix: tuple[dict[str, str], dict[int, str]]) -> None:
    env, _ = matrix
    for key in ("PREFECT_DR_STACK_PG14_URL", "PREFECT_DR_DATABASE_URL"):
        proc = run_cli(["--json", "doctor"], dict(env, PREFECT_DR_DATABASE_URL=env[key]))
        checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert "18.6" in checks["pg clients"]["detail"]
        assert checks["pg_dump"]["status"] == "ok" and "15." in checks["pg_dump"]["detail"]
        assert checks["pg_restore"]["status"] == "ok"
        assert "without its SET" not in checks["pg_restore"]["detail"]
