"""Regression tests of issue 20: combinations of documented commands that lost data, hung or
leaked (docs/reliability.md, "Invariants across commands"). Each runs the real CLI against the
real stack (PostgreSQL, SeaweedFS S3)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import listed_backups, run_cli, take_backup

FAILPOINT = Path(__file__).resolve().parent / "chaos" / "failpoint.py"


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout)


def _with_failpoint(args: list[str], env: dict[str, str], spec: str, sig: str = "KILL",
                    timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(env, PREFECT_DR_CHAOS_FAILPOINT=spec, PREFECT_DR_CHAOS_FAILPOINT_SIGNAL=sig)
    return subprocess.run([sys.executable, str(FAILPOINT), *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_stop_during_history_copy_ends_the_backup_and_frees_the_lock(
        clone: dict[str, str], sig: str) -> None:
    """Finding 1: a stop signal while the history COPY streams out of the snapshot hung the
    backup in the lock release (the connection was still busy in COPY), and every later
    backup exited 11. ``timeout`` fails the test if the run hangs."""
    proc = _with_failpoint(["backup"], clone,
                           "prefect_dr.table_copy:CopyOutReader._fill:before:1", sig)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "did not finish within" not in proc.stderr  # ended by itself, not by the deadline
    (entry,) = listed_backups(clone).values()
    assert entry["status"] == "failed"
    assert "signal" in (entry["error"] or "")
    assert take_backup(clone)["ok"]  # not locked out


def test_stop_while_the_store_hangs_ends_within_the_bound(clone: dict[str, str]) -> None:
    """Finding 7: a SIGTERM while S3 stopped answering took ~61 s to end the backup
    (Kubernetes kills at 30 s). Every command ends within 20 s of a stop signal (I3), and the
    next run is not locked out."""
    from urllib.parse import urlsplit

    from tests.chaos.netfault import FaultProxy

    s3 = urlsplit(clone["PREFECT_DR_S3_ENDPOINT_URL"])
    proxy = FaultProxy((s3.hostname or "127.0.0.1", s3.port or 80))
    env = dict(clone, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "backup"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any("db.dump" in r.path for r in proxy.requests):
            assert proc.poll() is None and time.monotonic() < deadline, "upload never started"
            time.sleep(0.05)
        proxy.blackhole()
        time.sleep(1.0)  # the upload is now waiting on a store that never answers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)  # raises (fails) past the bound
        assert proc.returncode == 130, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.up()
    assert take_backup(env)["ok"]  # the dead run's lock is taken over, not waited for
    proxy.close()


def _dry_plan(env: dict[str, str], *args: str) -> dict:
    proc = run_cli(["--json", "restore", *args, "--dry-run"], env)
    assert proc.returncode == 0, proc.stderr
    return _json(proc)["plan"] if "plan" in _json(proc) else _json(proc)


def _prune(env: dict[str, str], *args: str) -> dict[str, dict]:
    proc = run_cli(["--json", "prune", *args], env)
    assert proc.returncode == 0, proc.stderr
    return {b["backup_id"]: b for b in _json(proc)["backups"]}


def test_prune_keeps_what_a_backfill_needs_and_only_whole_backups_count(
        clone: dict[str, str]) -> None:
    """Findings 2, 3 and 6: prune deleted the backup an unfinished tiered backfill needed;
    partial (backfill=unfinished) and safety backups stood in for whole ones in prune,
    status, --latest and the restore plan."""
    from tests.test_tiered_restore_integration import _with_password, add_history, counts

    env, pw = clone, clone["PGPASSWORD"]
    url = _with_password(env["PREFECT_DR_DATABASE_URL"], pw)
    add_history(url, pw, rows=500)
    older = take_backup(env)["backup_id"]
    newest_whole = take_backup(env)["backup_id"]
    killed = _with_failpoint(["restore", older, "--tiered", "--yes", "--no-safety-backup"],
                             env, "prefect_dr.restore:finish_backfill:before:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial_id = take_backup(env)["backup_id"]
    shown = _json(run_cli(["--json", "show", partial_id], env))
    assert shown["labels"] == {"backfill": "unfinished"}

    kept = _prune(env, "--keep-last", "1")
    assert set(kept) == {older, newest_whole, partial_id}
    assert kept[older]["action"] == "keep"
    assert any(r.startswith("needed: the history backfill") for r in kept[older]["reasons"])
    assert "newest complete" in kept[newest_whole]["reasons"]
    assert kept[partial_id]["reasons"] == ["partial, and no whole backup is newer"]

    status = _json(run_cli(["--json", "status"], env))
    assert status["items"][0]["newest"] == newest_whole
    shown = _json(run_cli(["--json", "show", "--latest"], env))
    assert shown["backup_id"] == newest_whole
    plan = _dry_plan(env, partial_id, "--target-url",
                     env["PREFECT_DR_DATABASE_URL"] + "_elsewhere")
    assert any("unfinished history backfill" in w for w in plan["warnings"])

    resumed = run_cli(["restore", "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr  # the backup it needs is still there
    manifest = _json(run_cli(["--json", "show", older], env))
    want = {t: e["rows"] for t, e in manifest["row_counts"].items()}
    assert counts(url, pw, ("log", "events")) == {t: want[t] for t in ("log", "events")}
    after = _prune(env, "--keep-last", "1")
    assert after[older]["action"] == "remove"  # unpinned once the backfill finished

    # finding 6: an in-place restore's safety backup never becomes "the newest full backup"
    done = run_cli(["--json", "restore", newest_whole, "--yes"], env)
    assert done.returncode == 0, done.stderr
    safety = _json(done)["safety_backup_id"]
    assert safety
    assert _json(run_cli(["--json", "show", "latest"], env))["backup_id"] == newest_whole
    assert _json(run_cli(["--json", "status"], env))["items"][0]["newest"] == newest_whole
    planned = _prune(env, "--keep-last", "1", "--dry-run")
    assert planned[newest_whole]["action"] == "keep"
    assert planned[safety]["reasons"] == ["safety backup within 1w"]
    short = _prune(env, "--keep-last", "1", "--keep-safety-within", "1s", "--dry-run")
    assert short[safety]["action"] == "remove"
    assert short[newest_whole]["action"] == "keep"


def test_a_killed_restore_leaves_no_plaintext_and_its_database_is_found(
        clone: dict[str, str], tmp_path: Path) -> None:
    """Finding 8: a SIGKILLed restore left a plaintext staged dump (the block key row in it)
    and a ``<db>_restore_<stamp>`` database that doctor and rollback --list did not show and
    only a later restore to the same target removed."""
    from tests.conftest import databases

    env = dict(clone, PREFECT_DR_STAGING_DIR=str(tmp_path))
    backup_id = take_backup(env)["backup_id"]
    killed = _with_failpoint(["restore", backup_id, "--yes", "--jobs", "2",
                              "--no-safety-backup"], env, "prefect_dr.pg.restore:run_file:before:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(tmp_path.iterdir()) == []  # the staged dump never had a name
    (left,) = databases(env, env["_DB"] + "_restore_")
    listed = _json(run_cli(["--json", "rollback", "--list"], env))
    assert {"name": left, "kind": "restore"}.items() <= next(
        k for k in listed["kept"] if k["name"] == left).items()
    doctor = _json(run_cli(["--json", "doctor"], env))
    check = next(c for c in doctor["checks"] if c["name"] == "half-restored databases")
    assert check["status"] == "warn" and left in check["detail"]
    other = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/" + env["_DB"] + "_other"
    done = run_cli(["restore", backup_id, "--target-url", other, "--yes", "--jobs", "1"], env)
    assert done.returncode == 0, done.stderr  # another target on the same server ...
    assert databases(env, env["_DB"] + "_restore_") == []  # ... cleans up the dead run's


def test_copied_verifications_count_at_the_source_only(clone: dict[str, str]) -> None:
    """Finding 9: status on a copy repository was green from verification records copied
    from the source, although nothing was ever verified there."""
    backup_id = take_backup(clone, "--kind", "config-only")["backup_id"]
    verified = run_cli(["verify", backup_id], clone)
    assert verified.returncode == 0, verified.stderr
    copy_env = dict(clone, PREFECT_DR_S3_PREFIX=clone["PREFECT_DR_S3_PREFIX"] + "-copy")
    target = f"s3://{clone['PREFECT_DR_S3_BUCKET']}/{copy_env['PREFECT_DR_S3_PREFIX']}"
    copied = run_cli(["copy", backup_id, "--to", target], clone)
    assert copied.returncode == 0, copied.stderr
    probe = ["--json", "status", "--kind", "config-only", "--verify-cron", "0 0 1 1 *"]
    assert run_cli(probe, clone).returncode == 0  # verified here
    there = run_cli(probe, copy_env)
    assert there.returncode == 15, there.stdout  # nothing was verified in the copy
    entry = listed_backups(copy_env)[backup_id]
    assert entry["verification"] is None
    assert entry["source_verification"]["result"] == "passed"
    assert entry["source_verification"]["repository"].endswith(clone["PREFECT_DR_S3_PREFIX"])


def test_latest_word_show_of_an_incomplete_backup_and_smoke_setup(
        clone: dict[str, str]) -> None:
    """Findings 4, 10 and 11: ``show latest`` chose a config-only backup; ``--json show`` of
    an incomplete backup printed a success-shaped document; a smoke-test Prefect that cannot
    run the backup's revision marked a sound backup failed (exit 13) instead of exit 16."""
    from tests.conftest import s3_client

    full = take_backup(clone)["backup_id"]
    config_only = take_backup(clone, "--kind", "config-only")["backup_id"]
    assert _json(run_cli(["--json", "show", "latest"], clone))["backup_id"] == full
    plan = _dry_plan(clone, "latest", "--target-url",
                     clone["PREFECT_DR_DATABASE_URL"] + "_elsewhere")
    assert plan["backup_id"] == full and plan["kind"] == "full"

    broken = "20200101T000000Z-abcdef"  # one object, no manifest, no status: incomplete
    s3_client(clone).put_object(
        Bucket=clone["PREFECT_DR_S3_BUCKET"], Body=b"x",
        Key=f"{clone['PREFECT_DR_S3_PREFIX']}/v1/backups/{broken}/db.dump.zst.age")
    shown = run_cli(["--json", "show", broken], clone)
    assert shown.returncode == 10
    assert _json(shown) == {"ok": False, "schema_version": 1, "exit_code": 10,
                            "error": _json(shown)["error"]}
    assert "incomplete" in _json(shown)["error"]

    old_prefect = Path(__file__).resolve().parent.parent / ".cache/prefect/3.4.25/bin/python"
    if not old_prefect.exists():
        pytest.skip("Prefect 3.4.25 venv missing (scripts/bootstrap makes it)")
    smoke = run_cli(["verify", config_only, "--prefect-smoke", "--prefect-python",
                     str(old_prefect)], clone)
    assert smoke.returncode == 16, smoke.stderr
    assert "newer than" in smoke.stderr
    assert listed_backups(clone)[config_only]["verification"] is None  # no verdict on the backup


def test_a_password_in_the_query_never_reaches_a_command_line(clone: dict[str, str]) -> None:
    """Finding 5: ``?password=`` in a database URL was accepted and put on pg_dump's argv."""
    secret = "Qu3ryPassw0rdNeverShown"
    url = clone["PREFECT_DR_DATABASE_URL"] + f"?password={secret}"
    for args, env in ((["--database-url", url, "backup"], clone),
                      (["backup"], dict(clone, PREFECT_DR_DATABASE_URL=url)),
                      (["verify", "--latest", "--scratch-url", url], clone),
                      (["restore", "--latest", "--target-url", url, "--dry-run"], clone)):
        proc = run_cli(args, env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert secret not in proc.stderr + proc.stdout
        assert "password" in proc.stderr


def test_a_lock_left_by_a_dead_run_on_another_host_is_taken_over(clone: dict[str, str]) -> None:
    """I3: a backup killed in another pod left a lock object that locked every later backup
    out for 12 h; the lock object names its database session, and a session that has ended
    makes it stale on any host (a live one still holds it)."""
    import datetime as dt

    from prefect_dr.backup import _database_fingerprint
    from prefect_dr.layout import Layout
    from tests.conftest import s3_client

    bucket, layout = clone["PREFECT_DR_S3_BUCKET"], Layout(clone["PREFECT_DR_S3_PREFIX"])
    s3 = s3_client(clone)
    with psycopg.connect(clone["PREFECT_DR_DATABASE_URL"], password=clone["PGPASSWORD"]) as live:
        key = layout.lock(f"backup-{_database_fingerprint(live)}")
        alive = live.execute("SELECT pg_backend_pid()").fetchone()[0]
        for backend, expect in ((alive, 11), (2**30, 0)):
            record = {"host": "another-pod", "pid": 1, "backend_pid": backend,
                      "started_at": dt.datetime.now(dt.UTC).isoformat(), "run_id": "r"}
            s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
            proc = run_cli(["backup"], clone)
            assert proc.returncode == expect, proc.stderr
