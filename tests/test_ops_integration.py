"""status and metrics against the real stack: promtool checks the text, a real Pushgateway
on loopback receives it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, require_program, run_cli, s3_client

pytestmark = pytest.mark.integration


@pytest.fixture()
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return dict(cli_env, PREFECT_DR_S3_PREFIX=f"o-{uuid.uuid4().hex[:10]}")


@pytest.fixture()
def pushgateway() -> Iterator[str]:
    program = require_program("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen([program, f"--web.listen-address=127.0.0.1:{port}",
                             "--persistence.file="],  # Debian's default file is shared
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/-/ready", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_status_is_stale_until_a_backup_is_taken(env: dict[str, str]) -> None:
    empty = run_cli(["status", "--cron", "0 3 * * *", "--json"], env)
    assert empty.returncode == 15
    assert json.loads(empty.stdout)["items"][0]["detail"].startswith("no complete full backup;")
    assert run_cli(["backup"], env).returncode == 0
    manifest = json.loads(run_cli(["show", "--latest", "--json"], env).stdout)
    fresh = run_cli(["status", "--cron", "0 3 * * *"], env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    # the same backup, as if taken two days ago: older than the daily schedule allows
    s3 = s3_client(env)
    key = manifest["artifacts"][0]["key"].rsplit("/", 1)[0] + "/manifest.json"
    import datetime as dt

    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).isoformat()
    manifest["started_at"] = manifest["finished_at"] = old
    s3.put_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key,
                  Body=json.dumps(manifest).encode())
    stale = run_cli(["status", "--cron", "0 3 * * *"], env)
    assert stale.returncode == 15
    assert "error: full backup: newest complete full backup" in stale.stderr and "is missing" in \
        stale.stderr
    bad = run_cli(["status", "--cron", "every day"], env)
    assert bad.returncode == 2 and "invalid cron schedule" in bad.stderr


def test_metrics_textfile_passes_promtool_and_reaches_pushgateway(
        env: dict[str, str], tmp_path: Path, pushgateway: str) -> None:
    promtool = require_program("promtool")
    prom = tmp_path / "prefect-dr.prom"
    common = ["--metrics-file", str(prom), "--pushgateway", pushgateway,
              "--metrics-instance", "test-host"]
    assert run_cli([*common, "backup"], env).returncode == 0
    assert run_cli([*common, "verify", "--latest"], env).returncode == 0
    failing = run_cli([*common, "show", "20200101T000000Z-abcdef"], env)
    assert failing.returncode == 10
    text = prom.read_text()
    check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    repo = f'repository="s3://{env["PREFECT_DR_S3_BUCKET"]}/{env["PREFECT_DR_S3_PREFIX"]}"'
    assert f'prefect_dr_last_run_success{{command="backup",kind="full",{repo}}} 1.0' in text
    assert f'prefect_dr_last_run_success{{command="show",kind="",{repo}}} 0.0' in text
    assert 'prefect_dr_last_success_timestamp_seconds{command="show"' not in text
    assert f'prefect_dr_backup_bytes{{kind="full",{repo},stage="uploaded"}}' in text
    assert f"prefect_dr_verification_success{{{repo}}} 1.0" in text
    for secret in (env["PGPASSWORD"], env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in text
    pushed = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert 'prefect_dr_last_run_success{command="backup",instance="test-host",job="prefect-dr",' \
        f'kind="full",{repo}}} 1' in pushed
    assert 'prefect_dr_verification_success{command="verify",instance="test-host",' \
        f'job="prefect-dr",{repo}}} 1' in pushed


def test_a_success_replaces_a_settings_failure_in_pushgateway_and_textfile(
        env: dict[str, str], tmp_path: Path, pushgateway: str) -> None:
    """A backup that fails on its settings (before the repository is opened, so without a
    repository label), then a good one: the Pushgateway and the textfile hold one
    last_run_success of the backup, 1 (issue 22: it stayed 0 for ever)."""
    prom = tmp_path / "prefect-dr.prom"
    common = ["--metrics-file", str(prom), "--pushgateway", pushgateway,
              "--metrics-instance", "ns/prefect-dr"]
    broken = dict(env, PREFECT_DR_AGE_RECIPIENTS="not-a-recipient")
    assert run_cli([*common, "backup"], broken).returncode == 2
    pushed = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    failed = [line for line in pushed.splitlines()
              if line.startswith("prefect_dr_last_run_success{")]
    assert len(failed) == 1 and failed[0].endswith(" 0") and "repository=" not in failed[0]
    assert run_cli([*common, "backup"], env).returncode == 0
    pushed = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    runs = [line for line in pushed.splitlines()
            if line.startswith("prefect_dr_last_run_success{")]
    assert len(runs) == 1 and runs[0].endswith(" 1") and "repository=" in runs[0], runs
    text = [line for line in prom.read_text().splitlines()
            if line.startswith("prefect_dr_last_run_success{")]
    assert len(text) == 1 and text[0].endswith(" 1.0"), text
