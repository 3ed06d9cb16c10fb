"""backup, list and show against the real stack (PostgreSQL 15, SeaweedFS, Prefect 3)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import clone_prefect_db, drop_db, listed_backups, run_cli, s3_client, take_backup
from cryptography.fernet import Fernet

from prefect_dr.lock import ADVISORY_KEY

pytestmark = pytest.mark.integration


def _fetch(env: dict[str, str], key: str) -> bytes:
    return s3_client(env).get_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key)["Body"].read()


def _decrypt_with_age(blob: bytes, identity: Path) -> bytes:
    return subprocess.run(["age", "-d", "-i", str(identity)], input=blob, check=True,
                          capture_output=True).stdout


def _zstd_d(blob: bytes) -> bytes:
    return subprocess.run(["zstd", "-d", "-c"], input=blob, check=True,
                          capture_output=True).stdout


@pytest.fixture()
def repo_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The stack's settings with a prefix of this test's own."""
    return dict(cli_env, PREFECT_DR_S3_PREFIX=f"t-{uuid.uuid4().hex[:12]}")


def test_full_and_config_only_backups_are_complete(repo_env: dict[str, str],
                                                   identity: tuple[Path, str]) -> None:
    full = take_backup(repo_env, "--label", "env=ci", "--label", "by=test")
    config_only = take_backup(repo_env, "--kind", "config-only")
    listed = listed_backups(repo_env)
    assert listed[full["backup_id"]]["status"] == "complete"
    assert listed[full["backup_id"]]["kind"] == "full"
    assert listed[full["backup_id"]]["labels"] == {"env": "ci", "by": "test"}
    assert listed[config_only["backup_id"]]["kind"] == "config-only"
    assert listed[config_only["backup_id"]]["status"] == "complete"

    manifest = json.loads(run_cli(["show", full["backup_id"], "--json"], repo_env).stdout)
    assert manifest["format_version"] == 4 and manifest["alembic_revision"]  # runs split
    assert manifest["prefect_version"] == "3.9.1"
    assert manifest["row_counts"]["block_document"]["rows"] >= 2
    assert manifest["row_counts"]["flow_run"]["rows"] >= 1
    assert json.loads(run_cli(["show", "--latest", "--json"], repo_env).stdout)[
        "backup_id"] == full["backup_id"]  # --latest means the newest full backup
    co = json.loads(run_cli(["show", "--latest", "--kind", "config-only", "--json"],
                            repo_env).stdout)
    assert co["backup_id"] == config_only["backup_id"]
    assert co["row_counts"]["flow_run"]["rows"] == 0  # run history left out
    assert co["row_counts"]["variable"] == manifest["row_counts"]["variable"]
    raw = _fetch(repo_env, manifest["artifacts"][0]["key"].rsplit("/", 1)[0] + "/manifest.json")
    assert b"s3cr3t-dr-seed-value" not in raw and b"fernet_key" not in raw


def test_dump_decrypts_with_stock_age_and_pg_restore_accepts_it(
        repo_env: dict[str, str], identity: tuple[Path, str]) -> None:
    result = take_backup(repo_env)
    manifest = json.loads(run_cli(["show", result["backup_id"], "--json"], repo_env).stdout)
    dump = next(a for a in manifest["artifacts"] if a["name"] == "dump")
    plain = _zstd_d(_decrypt_with_age(_fetch(repo_env, dump["key"]), identity[0]))
    import hashlib

    assert hashlib.sha256(plain).hexdigest() == dump["plaintext_sha256"]
    listing = subprocess.run(["pg_restore", "--list"], input=plain, capture_output=True,
                             check=True).stdout.decode()
    assert "TABLE DATA public block_document" in listing
    # format 4: the runs' rows are artifacts of their own; the dump keeps their tables
    assert "TABLE public flow_run " in listing and "TABLE DATA public flow_run " not in listing

    config = next(a for a in manifest["artifacts"] if a["name"] == "config")
    export = json.loads(_zstd_d(_decrypt_with_age(_fetch(repo_env, config["key"]),
                                                  identity[0])))
    assert export["format"] == "prefect-dr-config-export" and export["format_version"] == 1
    secret = next(b for b in export["block_documents"] if b["name"] == "dr-secret")
    assert secret["decrypted"] and secret["data"]["value"] == "s3cr3t-dr-seed-value"
    names = {v["name"]: v["value"] for v in export["variables"]}
    assert names["dr_number"] == 42 and names["dr_object"] == {"a": [1, 2], "b": {"c": True}}
    assert any(p["name"] == "dr-pool" for p in export["work_pools"])
    assert any(d["name"] == "dr-deployment" for d in export["deployments"])


def test_concurrent_backup_exits_with_lock_held(repo_env: dict[str, str]) -> None:
    with psycopg.connect(repo_env["PREFECT_DR_DATABASE_URL"],
                         password=repo_env["PGPASSWORD"], autocommit=True) as holder:
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]
        proc = run_cli(["backup"], repo_env)
    assert proc.returncode == 11, proc.stderr
    assert "another backup of this database is running" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_backups_at_once_one_wins(repo_env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "prefect_dr", "backup", "--json"]
    procs = [subprocess.Popen(cmd, env=repo_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted(p.wait(timeout=300) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    # both may succeed one after the other if the first ends before the second starts,
    # but never may both fail, and a failure is always the lock-held code
    assert results in ([0, 0], [0, 11])


def test_stale_lock_object_of_a_dead_process_is_taken_over(repo_env: dict[str, str]) -> None:
    import socket

    from prefect_dr.layout import Layout

    s3 = s3_client(repo_env)
    first = take_backup(repo_env)  # learn the lock key from a real run's database fingerprint
    assert first["ok"]
    prefix = Layout(repo_env["PREFECT_DR_S3_PREFIX"]).root + "locks/"
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "started_at":
              "2026-01-01T00:00:00+00:00", "run_id": "deadbeef"}
    with psycopg.connect(repo_env["PREFECT_DR_DATABASE_URL"], password=repo_env["PGPASSWORD"],
                         autocommit=True) as conn:
        row = conn.execute("SELECT system_identifier::text, current_database() "
                           "FROM pg_control_system()").fetchone()
    import hashlib

    fp = hashlib.sha256(f"{row[0]}/{row[1]}".encode()).hexdigest()[:16]
    s3.put_object(Bucket=repo_env["PREFECT_DR_S3_BUCKET"], Key=f"{prefix}backup-{fp}.json",
                  Body=json.dumps(record).encode())
    second = take_backup(repo_env)
    assert second["ok"]
    left = s3.list_objects_v2(Bucket=repo_env["PREFECT_DR_S3_BUCKET"], Prefix=prefix)
    assert left.get("KeyCount", 0) == 0


def test_bad_inputs_fail_in_one_line(repo_env: dict[str, str], tmp_path: Path) -> None:
    secrets = [repo_env["PGPASSWORD"], repo_env["AWS_SECRET_ACCESS_KEY"]]
    cases = [
        (dict(repo_env, AWS_SECRET_ACCESS_KEY="Wrong-Secret-For-Test-9"), 1,
         "rejected the credentials"),
        (dict(repo_env, PGPASSWORD="Wrong-Db-Pass-For-Test-9"), 1, "cannot connect"),
        ({k: v for k, v in repo_env.items() if k != "PREFECT_DR_AGE_RECIPIENTS"}, 2,
         "no age recipient"),
        (dict(repo_env, PREFECT_DR_AGE_RECIPIENTS="age1notakey"), 2, "not an age recipient"),
    ]
    for env, code, needle in cases:
        proc = run_cli(["backup"], env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == code, (needle, out)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], (needle, out)
        assert "Traceback" not in out
        for secret in [*secrets, "Wrong-Secret-For-Test-9", "Wrong-Db-Pass-For-Test-9"]:
            assert secret not in out
    # nothing that looks complete was left behind
    assert all(b["status"] != "complete" for b in listed_backups(repo_env).values())


def _wait_for_upload_start(env: dict[str, str], proc: subprocess.Popen, prefix: str,
                           timeout: float = 60) -> None:
    """Wait until the backup's dump upload has begun (a multipart upload exists)."""
    s3 = s3_client(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ups = s3.list_multipart_uploads(Bucket=env["PREFECT_DR_S3_BUCKET"], Prefix=prefix)
        if ups.get("Uploads"):
            return
        time.sleep(0.02)


@pytest.fixture()
def slow_env(repo_env: dict[str, str], bulky_db: str) -> Iterator[dict[str, str]]:
    """repo_env for the bulky database, whose S3 endpoint is a 4 MB/s proxy, so a backup
    takes seconds to upload."""
    from urllib.parse import urlsplit

    from slowproxy import SlowProxy

    target = urlsplit(repo_env["PREFECT_DR_S3_ENDPOINT_URL"])
    proxy = SlowProxy((target.hostname, target.port), rate=4_000_000)
    yield dict(repo_env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url,
               PREFECT_DR_DATABASE_URL=bulky_db)
    proxy.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_leaves_failed_record_and_no_open_upload(slow_env: dict[str, str],
                                                         sig: signal.Signals) -> None:
    repo_env = slow_env
    from prefect_dr.layout import Layout

    root = Layout(repo_env["PREFECT_DR_S3_PREFIX"]).root
    proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "backup"], env=repo_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_upload_start(repo_env, proc, root)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    listed = listed_backups(repo_env)
    assert proc.returncode == 130, err
    (entry,) = listed.values()
    assert entry["status"] == "failed"
    assert "signal" in entry["error"] or "interrupt" in entry["error"]
    s3 = s3_client(repo_env)
    assert not s3.list_multipart_uploads(Bucket=repo_env["PREFECT_DR_S3_BUCKET"],
                                         Prefix=root).get("Uploads")
    assert "Traceback" not in err


def test_sigkill_never_leaves_a_complete_looking_backup(slow_env: dict[str, str]) -> None:
    repo_env = slow_env
    from prefect_dr.layout import Layout

    root = Layout(repo_env["PREFECT_DR_S3_PREFIX"]).root
    killed = 0
    for delay in (0.0, 0.5, 1.5):
        proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "backup"], env=repo_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_upload_start(repo_env, proc, root)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        killed += proc.returncode == -signal.SIGKILL
    listed = listed_backups(repo_env)
    assert killed >= 1
    incomplete = [b for b in listed.values() if b["status"] == "incomplete"]
    assert len(incomplete) >= 1
    for b in listed.values():
        assert b["status"] in ("incomplete", "complete")
        if b["status"] == "complete":  # finished before the kill: must be whole
            manifest = json.loads(run_cli(["show", b["backup_id"], "--json"], repo_env).stdout)
            for art in manifest["artifacts"]:
                head = s3_client(repo_env).head_object(Bucket=repo_env["PREFECT_DR_S3_BUCKET"],
                                                 Key=art["key"])
                assert head["ContentLength"] == art["size"]
    # the lock of a killed run does not block the next backup on this host
    assert take_backup(repo_env)["ok"]


def test_env_only_block_key_is_escrowed_or_refused(repo_env: dict[str, str],
                                                   identity: tuple[Path, str]) -> None:
    """A Prefect whose key lives only in PREFECT_SERVER_ENCRYPTION_KEY: clone the stack's
    database, re-encrypt every block with a new key and remove the stored key, as such a
    server leaves its database."""
    clone = "prefect_envkey_test"
    url = repo_env["PREFECT_DR_DATABASE_URL"]
    pw = repo_env["PGPASSWORD"]
    with psycopg.connect(url, password=pw, autocommit=True) as conn:
        old = conn.execute("SELECT value FROM configuration WHERE key='ENCRYPTION_KEY'"
                           ).fetchone()[0]["fernet_key"]
    clone_url = clone_prefect_db(repo_env, clone)
    new_key = Fernet.generate_key().decode()
    try:
        with psycopg.connect(clone_url, password=pw, autocommit=True) as conn:
            for bid, token in conn.execute(
                    "SELECT id, data #>> '{}' FROM block_document").fetchall():
                plain = Fernet(old.encode()).decrypt(token.encode())
                conn.execute("UPDATE block_document SET data = to_json(%s::text) WHERE id = %s",
                             (Fernet(new_key.encode()).encrypt(plain).decode(), bid))
            conn.execute("DELETE FROM configuration WHERE key = 'ENCRYPTION_KEY'")
        env = dict(repo_env, PREFECT_DR_DATABASE_URL=clone_url)
        refused = run_cli(["backup"], env)
        assert refused.returncode == 1
        assert "no encryption key" in refused.stderr and "Traceback" not in refused.stderr
        key_file = Path(identity[0]).parent / "prefect-key.txt"
        key_file.write_text(new_key)
        escrowed = take_backup(dict(env, PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE=str(key_file)))
        assert "block-key" in escrowed["artifacts"]
        manifest = json.loads(run_cli(["show", escrowed["backup_id"], "--json"], env).stdout)
        assert manifest["block_key"] == {"source": "file", "escrowed": True, "blocks": 2,
                                         "undecryptable": 0}
        art = next(a for a in manifest["artifacts"] if a["name"] == "block-key")
        assert json.loads(_decrypt_with_age(_fetch(env, art["key"]), identity[0])) == {
            "fernet_key": new_key}
        proc = run_cli(["backup", "--json"], dict(env, PREFECT_SERVER_ENCRYPTION_KEY=new_key))
        assert proc.returncode == 0 and new_key not in proc.stdout + proc.stderr
    finally:
        drop_db(repo_env, clone)
