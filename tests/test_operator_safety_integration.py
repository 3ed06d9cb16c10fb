"""Operator safety on the real stack (issue 12): the backup kind is explicit everywhere, every
precondition is checked before heavy work, and status/doctor tell the truth.

The schedule docs/operations.md recommends (hourly config-only beside daily full backups) is
the setting: a config-only backup is the newest, and nothing may take it for a full one.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import databases, listed_backups, run_cli, take_backup

pytestmark = pytest.mark.integration


def _count(env: dict[str, str], table: str, url: str | None = None) -> int:
    with psycopg.connect(url or env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"]) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def _key_of(url: str, pw: str) -> str:
    with psycopg.connect(url, password=pw) as conn:
        row = conn.execute("SELECT value FROM configuration WHERE key = 'ENCRYPTION_KEY'"
                           ).fetchone()
    value = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return str(value["fernet_key"])


def test_latest_is_full_and_a_config_only_backup_cannot_erase_history(
        clone: dict[str, str]) -> None:
    env, db = clone, clone["_DB"]
    full_id = take_backup(env)["backup_id"]
    config_id = take_backup(env, "--kind", "config-only")["backup_id"]  # the newest of all
    runs = _count(env, "flow_run")
    assert runs > 0

    dry = run_cli(["restore", "--latest", "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["plan"]["backup_id"] == full_id
    shown = run_cli(["show", "--latest", "--json"], env)
    assert json.loads(shown.stdout)["backup_id"] == full_id
    shown = run_cli(["show", "--latest", "--kind", "config-only", "--json"], env)
    assert json.loads(shown.stdout)["backup_id"] == config_id
    listed = run_cli(["list", "--kind", "config-only", "--json"], env)
    assert [b["backup_id"] for b in json.loads(listed.stdout)["backups"]] == [config_id]
    verified = run_cli(["verify", "--latest", "--json"], env)
    assert verified.returncode == 0, verified.stderr
    assert [r["backup_id"] for r in json.loads(verified.stdout)["reports"]] == [full_id]

    # the config-only backup over a database with run history: refused, nothing changed
    for args in (["--yes"], ["--dry-run"], ["--latest", "--kind", "config-only", "--yes"]):
        ref = [] if "--latest" in args else [config_id]
        proc = run_cli(["restore", *ref, *args], env)
        assert proc.returncode == 2, (args, proc.stderr)
        line = _one_error_line(proc.stderr)
        assert f"flow_run {runs} rows" in line and "--allow-history-loss" in line, line
    plan = run_cli(["restore", config_id, "--dry-run", "--json"], env)
    assert plan.returncode == 2
    out = json.loads(plan.stdout)  # one document: the plan and the refusal
    assert out["ok"] is False and out["plan"]["refused"]["check"] == "history"
    assert out["exit_code"] == 2 and "--allow-history-loss" in out["error"]
    assert out["plan"]["history_loss"]["flow_run"] == runs
    assert _count(env, "flow_run") == runs
    assert databases(env, db) == [db]
    assert sorted(listed_backups(env)) == sorted([full_id, config_id])  # no safety backup taken

    # the override: history goes, configuration stays, the warning is said
    blocks = _count(env, "block_document")
    done = run_cli(["restore", config_id, "--yes", "--allow-history-loss", "--jobs", "1"], env)
    assert done.returncode == 0, done.stderr
    assert "deletes the run history" in done.stderr
    assert _count(env, "flow_run") == 0 and _count(env, "block_document") == blocks


def test_status_counts_full_backups_and_their_verifications_only(
        cli_env: dict[str, str]) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"st-{uuid.uuid4().hex[:10]}")
    take_backup(env, "--kind", "config-only")
    verified = run_cli(["verify", "--latest", "--kind", "config-only"], env)
    assert verified.returncode == 0, verified.stderr
    schedule = ["--cron", "0 2 * * *", "--verify-cron", "30 4 * * *"]
    stale = run_cli(["status", *schedule, "--json"], env)
    assert stale.returncode == 15, stale.stderr
    items = json.loads(stale.stdout)["items"]
    assert [(i["what"], i["ok"]) for i in items] == [("full backup", False),
                                                     ("full verification", False)]
    fresh = run_cli(["status", *schedule, "--kind", "config-only"], env)
    assert fresh.returncode == 0, fresh.stderr + fresh.stdout
    assert run_cli(["verify", "--latest"], env).returncode == 10  # no full backup to verify


@pytest.mark.parametrize("command", [
    ["show", "20261126T153000Z-a1b2c3", "--latest"],
    ["restore", "20261126T153000Z-a1b2c3", "--latest", "--dry-run"],
    ["restore-config", "20261126T153000Z-a1b2c3", "--latest", "--dry-run"],
    ["verify", "20261126T153000Z-a1b2c3", "--latest"],
    ["verify", "20261126T153000Z-a1b2c3", "--all"],
    ["block-key", "20261126T153000Z-a1b2c3", "--latest", "-o", "/nonexistent/key"],
])
def test_an_id_and_latest_together_are_a_usage_error(cli_env: dict[str, str],
                                                     command: list[str]) -> None:
    proc = run_cli(command, cli_env)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert "not both" in line or "one of ID, --latest" in line, line


@contextlib.contextmanager
def _client(url: str, pw: str) -> Iterator[None]:
    with psycopg.connect(url, password=pw, application_name="dr-test-client"):
        yield


def test_preflight_refuses_before_anything_is_created_or_uploaded(
        clone: dict[str, str], tmp_path: Path) -> None:
    env, db = clone, clone["_DB"]
    backup_id = take_backup(env)["backup_id"]

    with _client(env["PREFECT_DR_DATABASE_URL"], env["PGPASSWORD"]):
        proc = run_cli(["restore", "--latest", "--yes"], env)
        assert proc.returncode == 1, proc.stderr
        line = _one_error_line(proc.stderr)
        assert "clients are connected" in line and "dr-test-client" in line
        assert "--force-disconnect" in line
        # the runbook looks at the plan before stopping Prefect: a dry run warns
        dry = run_cli(["restore", "--latest", "--dry-run", "--json"], env)
        assert dry.returncode == 0, dry.stderr
        warnings = json.loads(dry.stdout)["plan"]["warnings"]
        assert any("dr-test-client" in w and "a restore now would be refused" in w
                   for w in warnings), warnings
    assert databases(env, db) == [db]
    assert list(listed_backups(env)) == [backup_id]  # no safety backup

    other = tmp_path / "other-identity.txt"
    keygen = subprocess.run([sys.executable, "-m", "prefect_dr", "keygen", "-o", str(other)],
                            capture_output=True, text=True, check=True, env=env)
    assert keygen.returncode == 0
    for identity, needle in ((other, "matches none of backup"),
                             (tmp_path / "missing.txt", "does not exist")):
        proc = run_cli(["restore", "--latest", "--yes"],
                       dict(env, PREFECT_DR_AGE_IDENTITY_FILE=str(identity)))
        assert proc.returncode == 12, proc.stderr
        assert needle in _one_error_line(proc.stderr)
    assert databases(env, db) == [db]
    assert list(listed_backups(env)) == [backup_id]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


@pytest.fixture()
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (skips where mounting is not allowed)."""
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_staging_fallback_warns_and_a_full_disk_is_one_line(clone: dict[str, str],
                                                            tiny_tmpfs: Path) -> None:
    env = clone
    take_backup(env)
    dry = run_cli(["restore", "--latest", "--dry-run", "--jobs", "2", "--json"],
                  dict(env, PREFECT_DR_STAGING_DIR=str(tiny_tmpfs)))
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["plan"]
    assert plan["staging"].startswith("streaming with one job")
    assert any("PREFECT_DR_STAGING_DIR" in w for w in plan["warnings"])
    assert "WARNING" in dry.stderr or '"level": "warning"' in dry.stderr.lower()

    filler = tiny_tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=16"],
                   capture_output=True, check=False)  # fills it (ENOSPC)
    target = tiny_tmpfs / "block.key"
    proc = run_cli(["block-key", "--latest", "-o", str(target)], env)
    assert proc.returncode == 1, proc.stderr
    assert "no space left on the device" in _one_error_line(proc.stderr)
    assert not target.exists()  # no truncated key file left behind


def test_block_key_recovers_the_key_from_the_dump_and_from_escrow(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"bk-{uuid.uuid4().hex[:10]}")
    key = _key_of(env["PREFECT_DR_DATABASE_URL"], env["PGPASSWORD"])
    in_dump = take_backup(env, "--kind", "config-only")["backup_id"]
    out = tmp_path / "key"
    proc = run_cli(["block-key", "--latest", "-o", str(out), "--json"], env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True, "schema_version": 1, "backup_id": in_dump,
                                       "source": "dump", "file": str(out)}
    assert out.read_text().strip() == key
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert key not in proc.stdout + proc.stderr
    again = run_cli(["block-key", in_dump, "-o", str(out)], env)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert run_cli(["block-key", in_dump], env).returncode == 2  # -o is required
    to_stdout = run_cli(["block-key", in_dump, "-o", "-"], env)
    assert to_stdout.returncode == 0 and to_stdout.stdout.strip() == key

    escrowed = take_backup(dict(env, PREFECT_SERVER_ENCRYPTION_KEY=key),
                           "--kind", "config-only")["backup_id"]
    shown = json.loads(run_cli(["show", escrowed, "--json"], env).stdout)
    assert shown["block_key"]["escrowed"] is True
    out2 = tmp_path / "escrowed.key"
    proc = run_cli(["block-key", escrowed, "-o", str(out2), "--json"], env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["source"] == "escrowed"
    assert out2.read_text().strip() == key


def test_doctor_fails_when_the_next_backup_would(clone: dict[str, str]) -> None:
    """Without the block key, backups fail: doctor must say so with a non-zero exit; allowed
    by setting, doctor and the backup pass (and the manifest says what is undecryptable)."""
    env = clone
    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"],
                         autocommit=True) as conn:
        conn.execute("DELETE FROM configuration WHERE key = 'ENCRYPTION_KEY'")
    doctor = run_cli(["doctor", "--json"], env)
    assert doctor.returncode == 1, doctor.stdout
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["block encryption key"]["status"] == "fail"
    assert "the next backup would fail" in checks["block encryption key"]["detail"]
    backup = run_cli(["backup"], env)
    assert backup.returncode == 1 and "block documents" in backup.stderr

    allowed = dict(env, PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS="true")
    doctor = run_cli(["doctor", "--json"], allowed)
    assert doctor.returncode == 0, doctor.stdout
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["block encryption key"]["status"] == "warn"
    backup_id = take_backup(allowed, "--kind", "config-only")["backup_id"]
    shown = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
    assert shown["block_key"]["undecryptable"] == shown["block_key"]["blocks"] > 0


def test_a_tampered_kind_is_a_bad_signature_not_a_history_loss(clone: dict[str, str],
                                                                tmp_path: Path) -> None:
    """The signature is checked before any other finding trusts the manifest: a signed full
    backup whose manifest was edited to say config-only is refused as tampered (13), not as a
    history loss (2)."""
    from conftest import s3_client

    key = tmp_path / "signing.pem"
    made = subprocess.run([sys.executable, "-m", "prefect_dr", "keygen", "--signing", "-o",
                           str(key)], capture_output=True, text=True, check=True)
    env = dict(clone, PREFECT_DR_SIGNING_KEY_FILE=str(key),
               PREFECT_DR_VERIFY_KEY=made.stdout.strip())
    backup_id = take_backup(env)["backup_id"]
    manifest = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
    manifest["kind"] = "config-only"
    folder = manifest["artifacts"][0]["key"].rsplit("/", 1)[0]
    s3_client(env).put_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=f"{folder}/manifest.json",
                              Body=json.dumps(manifest).encode())
    proc = run_cli(["restore", backup_id, "--dry-run"], env)
    assert proc.returncode == 13, proc.stderr
    assert "signature" in _one_error_line(proc.stderr)
