"""Every exit code docs/exit-codes.md documents, produced for real by the CLI on the stack.

The documented table, the constants of prefect_dr.errors and the cases below must name the same
codes: a code added to one and not the others fails here.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import ROOT, clean_cli_env, clone_prefect_db, run_cli

from prefect_dr import errors, lock

pytestmark = pytest.mark.integration
DOC = ROOT / "docs" / "exit-codes.md"
NO_ID = "20200101T000000Z-abcdef"


def documented_codes() -> dict[int, str]:
    """code -> name, from the table of docs/exit-codes.md."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", DOC.read_text(), re.MULTILINE)
    return {int(code): name for code, name in rows}


def _defined_codes() -> set[int]:
    return {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, int)}


@pytest.fixture(scope="module")
def repo(stack_env: dict[str, str], identity: tuple[Path, str]) -> Iterator[dict[str, str]]:
    """A repository of its own holding one config-only backup of the stack's database."""

    env = clean_cli_env(stack_env, identity,
                        PREFECT_DR_S3_PREFIX=f"ec-{uuid.uuid4().hex[:10]}")
    made = run_cli(["backup", "--kind", "config-only"], env)
    assert made.returncode == 0, made.stderr
    yield env


def _ok(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["--version"], env)


def _failure(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["doctor"], dict(env, PREFECT_DR_DATABASE_URL="postgresql://x@127.0.0.1:9/db"))


def _usage(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["backup", "--no-such-flag"], env)


def _partial(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """restore-config of a backup whose block documents no key decrypts: the other sections
    import, the blocks cannot: some items failed."""
    name = f"prefect_ec_{uuid.uuid4().hex[:6]}"
    url = clone_prefect_db(env, name)
    with psycopg.connect(url, password=env["PGPASSWORD"], autocommit=True) as conn:
        conn.execute("DELETE FROM configuration WHERE key = 'ENCRYPTION_KEY'")
    nokey = dict(env, PREFECT_DR_DATABASE_URL=url, PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS="1",
                 PREFECT_DR_S3_PREFIX=f"ec3-{uuid.uuid4().hex[:10]}")
    try:
        made = run_cli(["backup", "--kind", "config-only"], nokey)
        assert made.returncode == 0, made.stderr
    finally:
        from conftest import drop_db

        drop_db(env, name)
    return run_cli(["restore-config", "--latest", "--only", "blocks"], nokey)


def _not_found(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["show", NO_ID], env)


def _lock_held(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"],
                         autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (lock.ADVISORY_KEY,))
        return run_cli(["backup", "--kind", "config-only"], env)


def _key_error(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["block-key", "--latest", "-o", str(tmp / "key")],
                   dict(env, PREFECT_DR_AGE_IDENTITY_FILE=str(tmp / "missing-identity.txt")))


def _verification_failed(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """The manifest is not signed by the key it must be signed by (a new, empty target
    database, so nothing else stands in the way)."""
    made = subprocess.run([sys.executable, "-m", "prefect_dr", "keygen", "--signing", "-o",
                           str(tmp / "signing.pem")], capture_output=True, text=True, check=True)
    target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/ec_{uuid.uuid4().hex[:6]}"
    return run_cli(["restore", "--latest", "--kind", "config-only", "--dry-run",
                    "--target-url", target],
                   dict(env, PREFECT_DR_VERIFY_KEY=made.stdout.strip()))


def _schema_refused(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    name = f"prefect_ec_{uuid.uuid4().hex[:6]}"
    url = clone_prefect_db(env, name)
    future = dict(env, PREFECT_DR_DATABASE_URL=url,
                  PREFECT_DR_S3_PREFIX=f"ec14-{uuid.uuid4().hex[:10]}")
    try:
        with psycopg.connect(url, password=env["PGPASSWORD"], autocommit=True) as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        made = run_cli(["backup"], future)
        assert made.returncode == 0, made.stderr
        target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}_new"
        return run_cli(["restore", "--latest", "--dry-run", "--target-url", target], future)
    finally:
        from conftest import drop_db

        drop_db(env, name)


def _stale(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(["status"], env)  # a config-only backup only: no full backup


def _setup(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """A backup of the PostgreSQL 18 server with no pg_dump 18 on this machine's search path
    (PREFECT_DR_PG_BIN_DIR does not name the 18 client): refused before any work."""
    return run_cli(["backup", "--kind", "config-only"],
                   dict(env, PREFECT_DR_DATABASE_URL=env["PREFECT_DR_STACK_PG18_URL"],
                        PREFECT_DR_PG_BIN_DIR=""))


def _interrupted(env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """SIGTERM while `list` waits on an S3 endpoint that accepts and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(60)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect_dr", "list"], text=True,
            env=dict(env, PREFECT_DR_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        waiting, _ = silent.accept()  # the run is waiting on the endpoint now
        with waiting:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


CASES: dict[int, Callable[[dict[str, str], Path], subprocess.CompletedProcess[str]]] = {
    errors.OK: _ok, errors.FAILURE: _failure, errors.USAGE: _usage, errors.PARTIAL: _partial,
    errors.NOT_FOUND: _not_found, errors.LOCK_HELD: _lock_held, errors.KEY_ERROR: _key_error,
    errors.VERIFICATION_FAILED: _verification_failed, errors.SCHEMA_REFUSED: _schema_refused,
    errors.STALE: _stale, errors.SETUP: _setup, errors.INTERRUPTED: _interrupted,
}


def test_documented_defined_and_tested_codes_agree() -> None:
    assert set(documented_codes()) == _defined_codes() == set(CASES)


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_documented_code_is_what_the_cli_exits_with(code: int, repo: dict[str, str],
                                                         tmp_path: Path) -> None:
    proc = CASES[code](repo, tmp_path)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    if code != errors.OK:
        errors_said = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        assert errors_said and "Traceback" not in proc.stderr, proc.stderr
    if code == errors.STALE:
        assert json.loads(run_cli(["--json", "status"], repo).stdout)["ok"] is False
