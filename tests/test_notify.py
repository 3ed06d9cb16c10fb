"""Notifications: what is sent when, what a message says (never a secret), and delivery through
apprise to a real HTTP receiver on loopback (``json://``); an undeliverable notification never
changes the exit code."""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, s3_client

from prefect_dr import config, notify, redact


class Receiver:
    """A loopback HTTP server that records every POST (path, headers, JSON body)."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                received.append({"path": self.path, "headers": dict(self.headers),
                                 "raw": body, "json": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, token: str = "notify-token-1234") -> str:
        """An apprise json:// URL to this receiver carrying a (basic auth) secret."""
        return f"json://dr:{token}@127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outcome(**changes: Any) -> notify.Outcome:
    values: dict[str, Any] = {"command": "backup", "exit_code": 1, "run_id": "abc123def456",
                              "host": "db-host", "error": "S3 refused the credentials",
                              "kind": "full"}
    values.update(changes)
    return notify.Outcome(**values)


# ---- units -------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "on", "asked", "sent"), [
    ({}, "failure", None, True),                                   # a failed backup
    ({"exit_code": 0}, "failure", None, False),                    # success: quiet by default
    ({"exit_code": 0}, "always", None, True),
    ({"exit_code": 0, "command": "verify", "recovered": True}, "failure", None, True),
    ({"command": "prune"}, "failure", None, True),
    ({"command": "restore", "exit_code": 14}, "failure", None, True),
    ({"command": "list", "exit_code": 10}, "always", None, False),  # not a notifying command
    ({"command": "status", "exit_code": 15}, "failure", None, False),  # status: only if asked
    ({"command": "status", "exit_code": 15}, "failure", True, True),
    ({"command": "status", "exit_code": 0}, "failure", True, False),
    ({"command": "status", "exit_code": 0}, "always", True, True),
    ({}, "failure", False, False),                                 # --no-notify
])
def test_what_is_worth_a_notification(changes: dict[str, Any], on: str, asked: bool | None,
                                      sent: bool) -> None:
    assert notify.wanted(_outcome(**changes), on=on, asked=asked) is sent


def test_the_message_is_short_names_the_backup_and_holds_no_secret() -> None:
    redact.register("s3cr3t-aws-key-value")
    title, body, kind = notify.message(_outcome(
        backup_id="20261126T153000Z-a1b2c3", instance="prod/prefect-dr",
        error="cannot upload: key s3cr3t-aws-key-value rejected by postgresql://u:pw@db/x"))
    assert title == "prefect-dr backup failed on prod/prefect-dr"
    assert kind == "failure"
    assert body.splitlines() == [
        "backup failed (exit 1: failure)",
        "backup: 20261126T153000Z-a1b2c3 (full)",
        "error: cannot upload: key *** rejected by postgresql://u:***@db/x",
        "run: abc123def456",
        "host: db-host",
        "instance: prod/prefect-dr",
    ]
    _, body, kind = notify.message(_outcome(command="status", exit_code=15, error=None,
                                            detail="full backup: newest is 2 days old"))
    assert body.splitlines()[:3] == ["backups are stale (exit 15: stale)", "kind: full",
                                     "full backup: newest is 2 days old"]
    assert kind == "warning"
    title, _, kind = notify.message(_outcome(command="verify", exit_code=0, recovered=True))
    assert title == "prefect-dr verify passed after a failed verification on db-host"
    assert kind == "success"


def test_urls_are_split_and_registered_as_secrets() -> None:
    text = "json://a:tok-one@h/x, slack://T1/B2/C3 mailto://u:p@h?to=a@x,b@x"
    assert notify.split_urls(text) == ["json://a:tok-one@h/x", "slack://T1/B2/C3",
                                       "mailto://u:p@h?to=a@x,b@x"]
    settings = config.load(env={"PREFECT_DR_NOTIFY": text})
    assert settings.notify_urls == text and settings.notify_on == "failure"
    assert redact.redact("sent to slack://T1/B2/C3") == "sent to ***"
    shown = {row["name"]: row["value"] for row in settings.display()}
    assert shown["notify_urls"] == redact.MASK
    with pytest.raises(Exception, match="PREFECT_DR_NOTIFY_ON must be failure or always"):
        config.load(env={"PREFECT_DR_NOTIFY_ON": "sometimes"})


def test_delivery_to_a_real_receiver_and_to_nowhere(receiver: Receiver,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    assert notify.deliver(_outcome(), receiver.url()) is True
    [request] = receiver.requests
    assert request["path"] == "/hook"
    assert request["json"]["title"] == "prefect-dr backup failed on db-host"
    assert request["json"]["type"] == "failure"
    assert "notify-token-1234" not in request["raw"]
    unreachable = f"json://127.0.0.1:{_closed_port()}/hook"
    assert notify.deliver(_outcome(), unreachable) is False
    assert "notification not delivered" in caplog.text
    assert notify.deliver(_outcome(), "nosuchscheme://x/y") is False
    assert "is not a URL apprise can use" in caplog.text
    assert notify.deliver(_outcome(exit_code=0), receiver.url()) is None  # nothing due
    assert len(receiver.requests) == 1


# ---- the CLI against the real stack --------------------------------------------------------

def _env(cli_env: dict[str, str], **extra: str) -> dict[str, str]:
    return dict(cli_env, PREFECT_DR_S3_PREFIX=f"n-{uuid.uuid4().hex[:10]}", **extra)


def _run_id(stderr: str) -> str:
    match = re.search(r"\[run ([0-9a-f]{12})\]|\"run_id\": \"([0-9a-f]{12})\"", stderr)
    assert match, stderr
    return match.group(1) or match.group(2)


@pytest.mark.integration
def test_a_backup_with_wrong_s3_credentials_notifies_once_without_secrets(
        cli_env: dict[str, str], receiver: Receiver) -> None:
    wrong = "wrong-secret-" + uuid.uuid4().hex
    env = _env(cli_env, AWS_SECRET_ACCESS_KEY=wrong, PREFECT_DR_NOTIFY=receiver.url(),
               PREFECT_DR_S3_RETRY_DEADLINE="5")
    proc = run_cli(["backup"], env)
    assert proc.returncode == 1, proc.stderr
    [request] = receiver.requests
    message = request["json"]
    host = socket.gethostname()
    assert message["title"] == f"prefect-dr backup failed on {host}"
    lines = message["message"].splitlines()
    assert lines[0] == "backup failed (exit 1: failure)"
    assert "kind: full" in lines or any(line.startswith("backup: ") for line in lines)
    assert any(line.startswith("error: ") and len(line) > 10 for line in lines), lines
    assert f"run: {_run_id(proc.stderr)}" in lines and f"host: {host}" in lines
    for secret in (wrong, env["PGPASSWORD"], "notify-token-1234", env["AWS_ACCESS_KEY_ID"]):
        assert secret not in request["raw"] and secret not in proc.stderr + proc.stdout


@pytest.mark.integration
def test_status_notify_when_stale_sends_one_message(cli_env: dict[str, str],
                                                    receiver: Receiver) -> None:
    env = _env(cli_env, PREFECT_DR_NOTIFY=receiver.url())
    quiet = run_cli(["status", "--cron", "0 3 * * *"], env)  # a probe: silent unless asked
    assert quiet.returncode == 15 and receiver.requests == []
    proc = run_cli(["status", "--cron", "0 3 * * *", "--notify"], env)
    assert proc.returncode == 15
    [request] = receiver.requests
    lines = request["json"]["message"].splitlines()
    assert request["json"]["type"] == "warning"
    assert lines[0] == "backups are stale (exit 15: stale)"
    assert "kind: full" in lines
    assert any("no complete full backup" in line for line in lines), lines
    assert f"run: {_run_id(proc.stderr)}" in lines
    assert "notify-token-1234" not in request["raw"]


@pytest.mark.integration
def test_an_unreachable_notification_url_leaves_the_exit_code(cli_env: dict[str, str]) -> None:
    nowhere = f"json://dr:notify-token-1234@127.0.0.1:{_closed_port()}/hook"
    env = _env(cli_env, PREFECT_DR_NOTIFY=nowhere, PREFECT_DR_NOTIFY_ON="always")
    stale = run_cli(["status", "--cron", "0 3 * * *", "--notify"], env)
    assert stale.returncode == 15
    assert "notification not delivered" in stale.stderr
    missing = run_cli(["verify", "20200101T000000Z-abcdef"], env)
    assert missing.returncode == 10
    assert "notification not delivered" in missing.stderr
    ok = run_cli(["prune", "--dry-run", "--keep-last", "3"], env)
    assert ok.returncode == 0, ok.stderr
    assert "notification not delivered" in ok.stderr
    for proc in (stale, missing, ok):
        assert "notify-token-1234" not in proc.stderr + proc.stdout


@pytest.mark.integration
def test_verify_passing_after_a_failed_verification_says_so(
        cli_env: dict[str, str], receiver: Receiver) -> None:
    env = _env(cli_env, PREFECT_DR_NOTIFY=receiver.url())
    assert run_cli(["backup", "--kind", "config-only"], env).returncode == 0
    assert run_cli(["verify", "--latest", "--kind", "config-only"], env).returncode == 0
    assert receiver.requests == []  # a pass after a pass is no news
    shown = json.loads(run_cli(["show", "--latest", "--kind", "config-only", "--json"],
                               env).stdout)
    backup_id = shown.get("backup_id") or shown["manifest"]["backup_id"]
    s3 = s3_client(env)
    bucket, prefix = env["PREFECT_DR_S3_BUCKET"], env["PREFECT_DR_S3_PREFIX"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
            if "/verifications/" in o["Key"]]
    record = json.loads(s3.get_object(Bucket=bucket, Key=keys[-1])["Body"].read())
    record["result"] = "failed"  # as if that verification had failed (signed by the verifier)
    from prefect_dr import signing

    record.pop("signature")
    record = signing.sign_record(record, signing.load_private(
        Path(env["PREFECT_DR_SIGNING_KEY_FILE"])))
    s3.put_object(Bucket=bucket, Key=keys[-1], Body=json.dumps(record).encode())
    proc = run_cli(["verify", "--latest", "--kind", "config-only"], env)
    assert proc.returncode == 0, proc.stderr
    [request] = receiver.requests
    assert request["json"]["type"] == "success"
    lines = request["json"]["message"].splitlines()
    assert lines[0] == "verify passed after a failed verification"
    assert f"backup: {backup_id} (config-only)" in lines
