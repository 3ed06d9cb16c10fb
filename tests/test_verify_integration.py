"""verify against the real stack: a good backup passes; every kind of damage is caught."""

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
from conftest import run_cli, s3_client

pytestmark = pytest.mark.integration


def _scratch_dbs(env: dict[str, str]) -> list[str]:
    with psycopg.connect(env["PREFECT_DR_DATABASE_URL"], password=env["PGPASSWORD"]) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'prefect\\_dr\\_scratch\\_%'")]


@pytest.fixture()
def repo(cli_env: dict[str, str]) -> Iterator[tuple[dict[str, str], dict]]:
    """A repository of this test's own holding one fresh full backup; yields (env, manifest)."""
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"v-{uuid.uuid4().hex[:10]}")
    proc = run_cli(["backup", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(run_cli(["show", "--latest", "--json"], env).stdout)
    yield env, manifest
    assert _scratch_dbs(env) == [], "a scratch database was left behind"


def _replace(env: dict[str, str], key: str, fn) -> None:
    s3 = s3_client(env)
    body = s3.get_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key)["Body"].read()
    s3.put_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key, Body=fn(body))


def _manifest_key(manifest: dict) -> str:
    return manifest["artifacts"][0]["key"].rsplit("/", 1)[0] + "/manifest.json"


def _verify(env: dict[str, str], *args: str) -> tuple[int, dict, str]:
    proc = run_cli(["verify", "--json", *args], env)
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_fresh_backup_verifies_and_is_recorded(repo) -> None:
    env, manifest = repo
    code, report, _ = _verify(env, "--latest", "--prefect-smoke")
    assert code == 0, report
    (rec,) = report["reports"]
    assert rec["result"] == "passed" and rec["backup_id"] == manifest["backup_id"]
    names = [c["name"] for c in rec["checks"]]
    for needed in ("integrity", "restore", "schema revision", "row counts", "block decryption",
                   "config export", "extensions", "prefect smoke"):
        assert needed in names
    smoke = next(c for c in rec["checks"] if c["name"] == "prefect smoke")
    assert "data matches the export" in smoke["detail"]
    listed = json.loads(run_cli(["list", "--json"], env).stdout)["backups"]
    assert listed[0]["verification"]["result"] == "passed"
    keys = [o["Key"] for o in s3_client(env).list_objects_v2(
        Bucket=env["PREFECT_DR_S3_BUCKET"], Prefix=env["PREFECT_DR_S3_PREFIX"])["Contents"]]
    assert any("/verifications/" in k for k in keys)


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_dump_fails_naming_the_artifact(repo, damage: str) -> None:
    env, manifest = repo
    dump = next(a for a in manifest["artifacts"] if a["name"] == "dump")

    def hurt(body: bytes) -> bytes:
        if damage == "flip":
            i = len(body) // 2
            return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
        if damage == "truncate":
            return body[: len(body) - 1000]
        return body + b"extra"

    _replace(env, dump["key"], hurt)
    code, report, err = _verify(env, manifest["backup_id"])
    assert code == 13, report
    assert report["reports"][0]["failed_check"] == "integrity (dump)"
    assert f"backup {manifest['backup_id']}: integrity (dump)" in err
    listed = json.loads(run_cli(["list", "--json"], env).stdout)["backups"]
    assert listed[0]["verification"]["result"] == "failed"


@pytest.mark.parametrize("edit", ["revision", "row_count"])
def test_edited_manifest_fails(repo, edit: str) -> None:
    env, manifest = repo

    def change(body: bytes) -> bytes:  # unsigned: the checks after the signature's
        data = json.loads(body)
        data.pop("signature")
        if edit == "revision":
            data["alembic_revision"] = "000000000000"
        else:
            data["row_counts"]["variable"]["rows"] += 1
        return json.dumps(data).encode()

    _replace(env, _manifest_key(manifest), change)
    code, report, _ = _verify(env, manifest["backup_id"], "--allow-unsigned")
    assert code == 13
    expected = "schema revision" if edit == "revision" else "row counts"
    assert report["reports"][0]["failed_check"] == expected


def test_signed_manifest_edit_is_a_signature_failure(cli_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    key = tmp_path / "signing.pem"
    public = run_cli(["keygen", "--signing", "-o", str(key)], cli_env).stdout.strip()
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"s-{uuid.uuid4().hex[:10]}",
               PREFECT_DR_SIGNING_KEY_FILE=str(key), PREFECT_DR_VERIFY_KEY=public)
    assert run_cli(["backup"], env).returncode == 0
    manifest = json.loads(run_cli(["show", "--latest", "--json"], env).stdout)
    assert manifest["signature"]["alg"] == "ed25519"
    code, report, _ = _verify(env, "--latest")
    assert code == 0, report
    _replace(env, _manifest_key(manifest),
             lambda b: b.replace(b'"labels": {}', b'"labels": {"x": "y"}'))
    code, report, err = _verify(env, "--latest")
    assert code == 13
    assert report["reports"][0]["failed_check"] == "manifest signature"
    assert "signature does not match" in err


def test_wrong_identity_is_a_key_error(repo, tmp_path: Path) -> None:
    env, _ = repo
    other = tmp_path / "other.txt"
    assert run_cli(["keygen", "-o", str(other)], env).returncode == 0
    code, report, err = _verify(dict(env, PREFECT_DR_AGE_IDENTITY_FILE=str(other)), "--latest")
    assert code == 12, report
    assert "none of the configured identities" in err
    # the verifier's key problem is no verdict on the backup: no record is written
    listed = json.loads(run_cli(["list", "--json"], env).stdout)
    assert [b["verification"] for b in listed["backups"]] == [None], listed


def test_no_such_backup(repo) -> None:
    env, _ = repo
    proc = run_cli(["verify", "20200101T000000Z-abcdef"], env)
    assert proc.returncode == 10 and "no backup" in proc.stderr


def test_sigint_mid_restore_drops_scratch_and_next_verify_cleans_a_killed_one(
        cli_env: dict[str, str], bulky_db: str) -> None:
    from urllib.parse import urlsplit

    from slowproxy import SlowProxy

    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"k-{uuid.uuid4().hex[:10]}",
               PREFECT_DR_DATABASE_URL=bulky_db)
    assert run_cli(["backup"], env).returncode == 0
    target = urlsplit(env["PREFECT_DR_S3_ENDPOINT_URL"])
    proxy = SlowProxy((target.hostname, target.port), rate=4_000_000)
    slow = dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    try:
        for sig in (signal.SIGINT, signal.SIGKILL):
            proc = subprocess.Popen([sys.executable, "-m", "prefect_dr", "verify", "--latest"],
                                    env=slow, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while not _scratch_dbs(env) and time.monotonic() < deadline:
                time.sleep(0.05)
            # inside the streamed restore: the dump is flowing into the scratch database
            start = proxy.forwarded
            while proxy.forwarded < start + 256 * 1024 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
            if sig == signal.SIGINT:
                assert proc.returncode == 130, err
                assert "Traceback" not in err
                assert _scratch_dbs(env) == []
            else:
                assert len(_scratch_dbs(env)) == 1  # a SIGKILLed run cannot clean up
    finally:
        proxy.close()
    code, report, _ = _verify(env, "--latest")
    assert code == 0, report
    assert _scratch_dbs(env) == []
