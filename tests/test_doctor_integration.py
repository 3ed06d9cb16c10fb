"""doctor against the real stack: all green, then each part broken in turn."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from conftest import STACK, run_cli

pytestmark = pytest.mark.integration


def _secrets(env: dict[str, str]) -> list[str]:
    return [env["PGPASSWORD"], env["AWS_SECRET_ACCESS_KEY"]]


def _assert_clean(proc: subprocess.CompletedProcess[str], env: dict[str, str]) -> None:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    for secret in _secrets(env):
        assert secret not in out


def _checks(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_all_green(cli_env: dict[str, str]) -> None:
    proc = run_cli(["doctor", "--json"], cli_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(proc)
    for name in ("database", "pg_dump", "read permissions", "prefect schema", "repository",
                 "repository probe", "age recipients", "age identity", "prefect api"):
        assert checks[name]["status"] == "ok", checks[name]
    _assert_clean(proc, cli_env)


def test_text_output_and_password_in_url_is_redacted(cli_env: dict[str, str]) -> None:
    env = dict(cli_env)
    url = env["PREFECT_DR_DATABASE_URL"]
    env["PREFECT_DR_DATABASE_URL"] = url.replace("prefect@", f"prefect:{env.pop('PGPASSWORD')}@")
    env["PGPASSWORD"] = cli_env["PGPASSWORD"]
    proc = run_cli(["--log-format", "json", "doctor"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "database" in proc.stdout and "ok" in proc.stdout
    _assert_clean(proc, env)
    shown = run_cli(["config", "show"], env)
    assert "prefect:***@" in shown.stdout
    _assert_clean(shown, env)


def test_wrong_aws_credentials(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, AWS_SECRET_ACCESS_KEY="Wrong-Secret-Key-0000")
    proc = run_cli(["doctor", "--json"], env)
    assert proc.returncode == 1
    checks = _checks(proc)
    assert checks["repository"]["status"] == "fail"
    assert "rejected the credentials" in str(checks["repository"]["detail"])
    assert checks["database"]["status"] == "ok"
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: repository: {checks['repository']['detail']}"]
    assert "Wrong-Secret-Key-0000" not in proc.stdout + proc.stderr
    _assert_clean(proc, cli_env)


def test_wrong_database_password(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PGPASSWORD="Wrong-Db-Pass-1111")
    proc = run_cli(["doctor"], env)
    assert proc.returncode == 1
    assert "error: database: cannot connect to PostgreSQL" in proc.stderr
    assert "password authentication failed" in proc.stderr
    assert "Wrong-Db-Pass-1111" not in proc.stdout + proc.stderr
    _assert_clean(proc, cli_env)


def test_not_a_prefect_database(cli_env: dict[str, str]) -> None:
    env = dict(cli_env)
    env["PREFECT_DR_DATABASE_URL"] = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    proc = run_cli(["doctor", "--json"], env)
    assert proc.returncode == 1
    assert "not a Prefect database" in str(_checks(proc)["prefect schema"]["detail"])


def test_identity_not_matching_recipients(cli_env: dict[str, str], tmp_path) -> None:
    other = tmp_path / "other.txt"
    assert run_cli(["keygen", "-o", str(other)], cli_env).returncode == 0
    env = dict(cli_env, PREFECT_DR_AGE_IDENTITY_FILE=str(other))
    proc = run_cli(["doctor", "--json"], env)
    assert proc.returncode == 1
    assert "matches none of the recipients" in str(_checks(proc)["age identity"]["detail"])


@pytest.fixture()
def stopped(request: pytest.FixtureRequest, stack_env: dict[str, str]) -> Iterator[str]:
    service = request.param
    subprocess.run([str(STACK), "down", service], check=True, capture_output=True)
    try:
        yield service
    finally:
        subprocess.run([str(STACK), "up"], check=True, capture_output=True)


@pytest.mark.parametrize("stopped", ["s3"], indirect=True)
def test_s3_stopped(stopped: str, cli_env: dict[str, str]) -> None:
    proc = run_cli(["doctor", "--json"], cli_env, timeout=120)
    assert proc.returncode == 1
    checks = _checks(proc)
    assert checks["repository"]["status"] == "fail"
    assert "cannot reach the S3 endpoint" in str(checks["repository"]["detail"])
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: repository: {checks['repository']['detail']}"]
    _assert_clean(proc, cli_env)


@pytest.mark.parametrize("stopped", ["pg"], indirect=True)
def test_database_stopped(stopped: str, cli_env: dict[str, str]) -> None:
    proc = run_cli(["doctor"], cli_env, timeout=120)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: database: cannot connect")
    _assert_clean(proc, cli_env)
