"""Shared fixtures. Integration tests use the real local stack (scripts/stack).

When PREFECT_DR_REQUIRE_STACK=1 (set by scripts/test, hence CI) a missing stack is an error,
not a skip, so a broken stack can never turn the integration suite into silent skips.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "stack"


def parse_exports(text: str) -> dict[str, str]:
    """Parse `export NAME=value` lines (shell-quoted) into a dict."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        (assignment,) = shlex.split(line[len("export "):])
        name, _, value = assignment.partition("=")
        env[name] = value
    return env


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The stack's settings (export lines of `scripts/stack env`); skips or fails if down."""
    proc = subprocess.run([str(STACK), "status"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = "local stack is not up (run scripts/stack up): " + proc.stdout.strip()
        if os.environ.get("PREFECT_DR_REQUIRE_STACK") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([str(STACK), "env"], capture_output=True, text=True, check=True).stdout
    return parse_exports(out)


@pytest.fixture(scope="session")
def identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh age identity file and its recipient, made with the tool itself as the quick
    start does: its signing key lies beside it (``signing_of``)."""
    path = tmp_path_factory.mktemp("keys") / "identity.txt"
    proc = subprocess.run([sys.executable, "-m", "prefect_dr", "keygen", "--output", str(path)],
                          capture_output=True, text=True, check=True)
    return path, proc.stdout.splitlines()[0].strip()


def signing_of(identity: tuple[Path, str]) -> tuple[Path, str]:
    """The signing key file ``keygen`` wrote beside ``identity`` and its verify key."""
    from prefect_dr import signing

    pem = identity[0].with_name(identity[0].stem + ".signing.pem")
    return pem, signing.public_text(signing.load_private(pem).public_key())


def clean_cli_env(stack_env: dict[str, str], identity: tuple[Path, str],
                  **extra: str) -> dict[str, str]:
    """The process environment without prefect-dr's, AWS', libpq's and Prefect's variables,
    plus the stack's settings, the test identity with its signing and verify keys, and
    ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_"))}
    env.update(stack_env)
    env["PREFECT_DR_AGE_RECIPIENTS"] = identity[1]
    env["PREFECT_DR_AGE_IDENTITY_FILE"] = str(identity[0])
    pem, verify_key = signing_of(identity)
    env["PREFECT_DR_SIGNING_KEY_FILE"] = str(pem)
    env["PREFECT_DR_VERIFY_KEY"] = verify_key
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


@pytest.fixture()
def cli_env(stack_env: dict[str, str], identity: tuple[Path, str]) -> dict[str, str]:
    """A clean environment for running the CLI against the stack."""
    return clean_cli_env(stack_env, identity)


def s3_client(env: dict[str, str]):
    """A boto3 S3 client for the stack, with the credentials of ``env`` (one per endpoint and
    credentials: making a client costs about 0.1 s, and some tests call this per object)."""
    return _s3_client(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                      env["PREFECT_DR_S3_ENDPOINT_URL"])


@functools.lru_cache(maxsize=16)
def _s3_client(key_id: str, secret: str, endpoint: str):
    import boto3

    return boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                 ).client("s3", endpoint_url=endpoint, region_name="us-east-1")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m prefect_dr ARGS` as a real process and capture its output."""
    return subprocess.run([sys.executable, "-m", "prefect_dr", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, input=stdin, check=False)


def cli_json(args: list[str], env: dict[str, str], timeout: float = 300) -> dict:
    """Run ``prefect-dr --json ARGS``, assert it succeeded (its output is the failure message)
    and return its JSON document."""
    proc = run_cli(["--json", *args], env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def take_backup(env: dict[str, str], *args: str) -> dict:
    """``prefect-dr backup ARGS``: its JSON result (``backup_id``, ``size``, ...)."""
    return cli_json(["backup", *args], env)


def backup_manifest(env: dict[str, str], *args: str) -> dict:
    """A new backup's manifest as ``show --json`` gives it."""
    return cli_json(["show", take_backup(env, *args)["backup_id"]], env)


def listed_backups(env: dict[str, str]) -> dict[str, dict]:
    """``list --json``: the repository's backups by id."""
    return {b["backup_id"]: b for b in cli_json(["list"], env)["backups"]}


@pytest.fixture()
def memory_storage() -> Iterator[object]:
    """A fresh in-memory storage."""
    from prefect_dr.storage.memory import MemoryStorage

    yield MemoryStorage()


def clone_prefect_db(env: dict[str, str], name: str) -> str:
    """Copy the stack's Prefect database into a new database ``name``; return its URL.

    pg_dump | pg_restore (CREATE DATABASE ... TEMPLATE would need the live server idle).
    """
    import psycopg

    from prefect_dr.pg import scratch

    url = env["PREFECT_DR_DATABASE_URL"]
    pw = env["PGPASSWORD"]
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        scratch.drop_database(conn, name)
        conn.execute(f'CREATE DATABASE "{name}"')
    child = dict(os.environ, PGPASSWORD=pw)
    dump = subprocess.run(["pg_dump", "-Fc", "--dbname", url], env=child, check=True,
                          capture_output=True).stdout
    target = url.rsplit("/", 1)[0] + "/" + name
    subprocess.run(["pg_restore", "--no-owner", "--dbname", target], input=dump, env=child,
                   check=True, capture_output=True)
    return target


def drop_db(env: dict[str, str], name: str) -> None:
    """Drop database ``name`` of the stack (forcing clients off, waiting out autovacuum)."""
    import psycopg

    from prefect_dr.pg import scratch

    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"],
                         autocommit=True) as conn:
        scratch.drop_database(conn, name)


def databases(env: dict[str, str], prefix: str) -> list[str]:
    """Names of the stack's databases that start with ``prefix``. Asked of the maintenance
    database: a poll connected to the database under test would be one of its clients, which
    a restore refuses to start with."""
    import psycopg

    from prefect_dr.pg import scratch

    with psycopg.connect(scratch.with_database(env["PREFECT_DR_DATABASE_URL"], "postgres"),
                         password=env["PGPASSWORD"]) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)))


@pytest.fixture()
def clone(cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A private copy of the seeded Prefect database and a repository prefix of its own;
    ``_DB`` names the database. Every database whose name starts with it is dropped after."""
    import uuid

    name = f"prefect_rt_{uuid.uuid4().hex[:6]}"
    url = clone_prefect_db(cli_env, name)
    env = dict(cli_env, PREFECT_DR_DATABASE_URL=url,
               PREFECT_DR_S3_PREFIX=f"r-{uuid.uuid4().hex[:10]}")
    env["_DB"] = name
    yield env
    for db in databases(cli_env, name):
        drop_db(cli_env, db)


@pytest.fixture(scope="session")
def bulky_db(stack_env: dict[str, str]) -> Iterator[str]:
    """A copy of the Prefect database with ~20 MB of incompressible extra rows, so that
    backing it up through a slow proxy takes seconds (for signal and crash tests)."""
    import psycopg

    name = "prefect_bulky_test"
    url = clone_prefect_db(stack_env, name)
    with psycopg.connect(url, password=stack_env["PGPASSWORD"], autocommit=True) as conn:
        conn.execute("CREATE TABLE ballast AS SELECT g AS id, decode(string_agg(md5(random()::text"
                     " || g::text || i::text), ''), 'hex') AS payload FROM "
                     "generate_series(1, 20000) g, generate_series(1, 64) i GROUP BY g")
    yield url
    drop_db(stack_env, name)


def azure_storage(env: dict[str, str], container: str | None = None) -> object:
    """An AzureStorage on the stack's Azurite (connection string from ``env``)."""
    from prefect_dr.storage.azure import AzureStorage

    return AzureStorage(container or env["PREFECT_DR_STACK_AZURE_CONTAINER"],
                        connection_string=env["AZURE_STORAGE_CONNECTION_STRING"],
                        retry_deadline_s=30)


def gcs_storage(env: dict[str, str], bucket: str | None = None) -> object:
    """A GCSStorage on the stack's fake-gcs-server (STORAGE_EMULATOR_HOST from ``env``)."""
    from prefect_dr.storage.gcs import GCSStorage

    return GCSStorage(bucket or env["PREFECT_DR_STACK_GCS_BUCKET"],
                      emulator_host=env["STORAGE_EMULATOR_HOST"], retry_deadline_s=30)


def clean(store: object, prefix: str) -> None:
    """Delete every object and incomplete upload under ``prefix``."""
    for info in list(store.list(prefix)):
        store.delete(info.key)
    for up in store.list_incomplete_uploads(prefix):
        store.abort_incomplete_upload(up)


def require_program(program: str) -> str:
    """The path of ``program``; a test without it is skipped (failed when the stack is
    required: scripts/bootstrap installs it)."""
    path = shutil.which(program)
    if path is None:
        if os.environ.get("PREFECT_DR_REQUIRE_STACK") == "1":
            pytest.fail(f"{program} is not installed (scripts/bootstrap installs it)")
        pytest.skip(f"{program} is not installed")
    return path


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
