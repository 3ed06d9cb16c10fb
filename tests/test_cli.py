"""The CLI as a user meets it: real processes, exit codes, no tracebacks, no secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import run_cli

from prefect_dr import __version__

DB_PASSWORD = "Db-Pass-4f9c2e7a1b"
AWS_SECRET = "Aws-Secret-8d3b6f0c2a"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_"))}
    env.update(extra)
    env["COLUMNS"] = "200"
    return env


def test_version() -> None:
    proc = run_cli(["--version"], _env())
    assert proc.returncode == 0 and proc.stdout.strip() == f"prefect-dr {__version__}"


def test_unknown_flag_is_usage_error_without_traceback() -> None:
    proc = run_cli(["doctor", "--no-such-flag"], _env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: No such option: --no-such-flag (see 'prefect-dr doctor --help')"], proc.stderr


def test_usage_errors_are_one_line_and_json_with_json() -> None:
    for args, needle in [(["backup", "--kind", "weird"], "'weird' is not one of"),
                         (["nosuch"], "No such command 'nosuch'"),
                         (["--json", "list", "--nope"], "No such option: --nope"),
                         (["list", "--json-typo"], "No such option: --json-typo")]:
        proc = run_cli(args, _env())
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
        if "--json" in args:
            doc = json.loads(proc.stdout)
            assert doc["ok"] is False and doc["exit_code"] == 2 and needle in doc["error"]


def test_no_command_prints_the_help_and_exits_2() -> None:
    proc = run_cli([], _env())
    assert proc.returncode == 2 and "Back up:" in proc.stderr and "Traceback" not in proc.stderr


def test_config_error_exit_code_and_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[s3]\nbucket = "x"\nnope = 1\n')
    proc = run_cli(["--config", str(cfg), "config", "show"], _env())
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "2 problems" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_show_sources_and_redaction(tmp_path: Path) -> None:
    cfg = tmp_path / "dr.toml"
    cfg.write_text('[s3]\nbucket = "from-file"\n')
    env = _env(PREFECT_DR_DATABASE_URL=f"postgresql://prefect:{DB_PASSWORD}@db/prefect",
               PGPASSWORD=DB_PASSWORD, AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEY1",
               AWS_SECRET_ACCESS_KEY=AWS_SECRET, PREFECT_DR_S3_PREFIX="env-prefix")
    proc = run_cli(["--config", str(cfg), "--region", "eu-west-3", "config", "show", "--json"],
                   env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["name"]: r for r in data["settings"]}
    assert rows["s3_bucket"]["source"] == f"file {cfg}"
    assert rows["s3_prefix"]["source"] == "env PREFECT_DR_S3_PREFIX"
    assert rows["s3_region"] == {"name": "s3_region", "env": "PREFECT_DR_S3_REGION",
                                 "value": "eu-west-3", "source": "flag --region"}
    assert rows["database_url"]["value"] == "postgresql://prefect:***@db/prefect"
    assert data["aws_credentials"].startswith("env (access key AKIA")
    text = run_cli(["--config", str(cfg), "config", "show"], env)
    for out in (proc.stdout + proc.stderr, text.stdout + text.stderr):
        assert DB_PASSWORD not in out and AWS_SECRET not in out


def test_keygen_writes_identity_and_refuses_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "id.txt"
    proc = run_cli(["keygen", "--output", str(key)], _env())
    assert proc.returncode == 0 and proc.stdout.strip().startswith("age1")
    assert "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
    again = run_cli(["keygen", "--output", str(key)], _env())
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr


def test_json_mode_reports_errors_as_json(tmp_path: Path) -> None:
    proc = run_cli(["--json", "--config", str(tmp_path / "missing.toml"), "config", "show"],
                   _env())
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {"ok": False, "schema_version": 1, "exit_code": 2,
                                       "error": proc.stderr.split("error: ", 1)[1].strip()}


def test_logs_are_json_lines_with_run_id_when_not_a_tty(tmp_path: Path) -> None:
    proc = run_cli(["config", "show"], _env(PREFECT_DR_S3_BUCKT="typo"))
    assert proc.returncode == 0
    record = json.loads(proc.stderr.splitlines()[0])
    assert record["level"] == "warning" and len(record["run_id"]) == 12
    assert "PREFECT_DR_S3_BUCKT" in record["msg"]


def test_k8s_render_uses_settings_and_validates_schedule() -> None:
    import yaml

    env = _env(PREFECT_DR_S3_BUCKET="acme-backups", PREFECT_DR_S3_PREFIX="prod",
               PREFECT_DR_DATABASE_URL="postgresql://prefect@db:5432/prefect")
    proc = run_cli(["k8s", "render", "--schedule", "0 */6 * * *"], env)
    assert proc.returncode == 0, proc.stderr
    objects = list(yaml.safe_load_all(proc.stdout))
    cronjobs = {o["metadata"]["name"]: o for o in objects if o and o["kind"] == "CronJob"}
    backup = next(o for name, o in cronjobs.items() if name.endswith("backup"))
    assert backup["spec"]["schedule"] == "0 */6 * * *"
    config = next(o for o in objects if o and o["kind"] == "ConfigMap")
    assert "acme-backups" in json.dumps(config)
    bad = run_cli(["k8s", "render", "--schedule", "every day"], env)
    assert bad.returncode == 2 and "invalid cron" in bad.stderr


def _db_env_of_backup(stdout: str) -> tuple[list[dict], dict]:
    import yaml

    objects = [o for o in yaml.safe_load_all(stdout) if o]
    backup = next(o for o in objects if o["kind"] == "CronJob"
                  and o["metadata"]["name"].endswith("-backup"))
    container = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    return [e for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})
            and e["name"] in ("PGPASSWORD", "PREFECT_API_DATABASE_CONNECTION_URL")], config["data"]


def test_k8s_render_database_secret() -> None:
    env = _env(PREFECT_DR_S3_BUCKET="acme-backups",
               PREFECT_DR_DATABASE_URL="postgresql://dr@db:5432/prefect")
    proc = run_cli(["k8s", "render"], env)
    assert proc.returncode == 0, proc.stderr
    db_env, data = _db_env_of_backup(proc.stdout)
    assert db_env == [{"name": "PREFECT_API_DATABASE_CONNECTION_URL", "valueFrom": {
        "secretKeyRef": {"name": "prefect-server-postgresql-connection",
                         "key": "connection-string"}}}]
    assert "PREFECT_DR_DATABASE_URL" not in data
    proc = run_cli(["k8s", "render", "--database-secret", "my-db"], env)
    assert _db_env_of_backup(proc.stdout)[0][0]["valueFrom"]["secretKeyRef"] == {
        "name": "my-db", "key": "connection-string"}
    proc = run_cli(["k8s", "render", "--database-secret", "dr-db:PGPASSWORD"], env)
    assert proc.returncode == 0, proc.stderr
    db_env, data = _db_env_of_backup(proc.stdout)
    assert db_env[0]["name"] == "PGPASSWORD"
    assert data["PREFECT_DR_DATABASE_URL"] == "postgresql://dr@db:5432/prefect"
    # Prefect's own URL (with its password) never reaches the manifests.
    prefect_env = _env(PREFECT_DR_S3_BUCKET="acme-backups", PREFECT_API_DATABASE_CONNECTION_URL=
                       f"postgresql+asyncpg://prefect:{DB_PASSWORD}@db:5432/prefect")
    proc = run_cli(["k8s", "render"], prefect_env)
    assert proc.returncode == 0 and DB_PASSWORD not in proc.stdout + proc.stderr
    proc = run_cli(["k8s", "render", "--database-secret", "dr-db:PGPASSWORD"], prefect_env)
    assert proc.returncode == 2 and "must not carry a password" in proc.stderr
    assert DB_PASSWORD not in proc.stdout + proc.stderr
    bad = run_cli(["k8s", "render", "--database-secret", "dr-db:PGPASSWORD"],
                  _env(PREFECT_DR_S3_BUCKET="acme-backups"))
    assert bad.returncode == 2 and "database_url" in bad.stderr


def test_metrics_variables_are_not_reported_unknown() -> None:
    proc = run_cli(["config", "show"], _env(PREFECT_DR_PUSHGATEWAY_URL="http://127.0.0.1:9"))
    assert proc.returncode == 0 and "unknown environment variable" not in proc.stderr


def test_database_url_flags_malformed_or_with_password_are_usage_errors() -> None:
    for args, needle in [
            (["verify", "--latest", "--scratch-url", "postgresql://x@[h/db"],
             "--scratch-url is not a valid URL"),
            (["restore", "--latest", "--target-url", "postgresql://x@h:port/db"],
             "--target-url is not a valid URL"),
            (["rollback", "--list", "--target-url", "postgresql://x@[h/db"],
             "--target-url is not a valid URL"),
            (["verify", "--latest", "--scratch-url", "postgresql://x:Sekr1t@h/db"],
             "--scratch-url must not carry a password")]:
        proc = run_cli(args, _env())
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, lines)
        assert "Sekr1t" not in proc.stderr + proc.stdout
