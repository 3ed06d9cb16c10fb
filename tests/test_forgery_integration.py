"""Issue 27 on the real stack: someone who can write to the repository (and knows the public
age recipient) cannot make verify or restore accept what they wrote, and nothing of it runs.

Each forgery is made the way an attacker would: a replacement object encrypted to the
recipient, the manifest's sizes and checksums rewritten to match. The signed manifest refuses
it before anything is downloaded, restored or created.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import backup_manifest, databases, run_cli, s3_client

pytestmark = pytest.mark.integration


def _keys(env: dict[str, str]) -> list[str]:
    listed = s3_client(env).list_objects_v2(Bucket=env["PREFECT_DR_S3_BUCKET"],
                                            Prefix=env["PREFECT_DR_S3_PREFIX"] + "/")
    return [o["Key"] for o in listed.get("Contents", [])]


def _get(env: dict[str, str], key: str) -> bytes:
    return s3_client(env).get_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key)["Body"].read()


def _put(env: dict[str, str], key: str, body: bytes) -> None:
    s3_client(env).put_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key, Body=body)


def _manifest_key(manifest: dict) -> str:
    return manifest["artifacts"][0]["key"].rsplit("/", 1)[0] + "/manifest.json"


def _encrypted(env: dict[str, str], plaintext: bytes, compressed: bool) -> tuple[bytes, dict]:
    """``plaintext`` encrypted to the repository's public recipient, as an attacker can; with
    the manifest fields that describe it."""
    from prefect_dr import crypto, pipeline

    class Sink(io.BytesIO):
        def abort(self) -> None:  # the Writer protocol
            pass

    sink = Sink()
    stats = pipeline.encrypt_to(io.BytesIO(plaintext), sink,
                                [crypto.parse_recipient(env["PREFECT_DR_AGE_RECIPIENTS"])],
                                zstd_level=2 if compressed else None)
    return sink.getvalue(), {"size": stats.size, "sha256": stats.sha256,
                             "plaintext_size": stats.plaintext_size,
                             "plaintext_sha256": stats.plaintext_sha256}


def _forge_artifact(env: dict[str, str], manifest: dict, name: str, plaintext: bytes) -> None:
    """Replace (or add) artifact ``name`` with ``plaintext`` encrypted to the recipient and
    rewrite the manifest to match, keeping its old signature."""
    body = json.loads(_get(env, _manifest_key(manifest)))
    entry = next((a for a in body["artifacts"] if a["name"] == name), None)
    if entry is None:  # the escrowed block key: added where there was none
        entry = dict(body["artifacts"][0], name=name, content="fernet-key+json",
                     compression="none",
                     key=body["artifacts"][0]["key"].rsplit("/", 1)[0] + "/block-key.age")
        body["artifacts"].append(entry)
    data, fields = _encrypted(env, plaintext, entry["compression"] == "zstd")
    entry.update(fields)
    _put(env, entry["key"], data)
    _put(env, _manifest_key(manifest), json.dumps(body, indent=2).encode())


def _refused(env: dict[str, str], backup_id: str, *extra: str) -> tuple[str, str]:
    """verify and restore of ``backup_id`` both exit 13 with one line, and create nothing."""
    before = databases(env, "prefect")
    verify = run_cli(["verify", backup_id, *extra], env)
    target = f"prefect_forged_{uuid.uuid4().hex[:6]}"
    url = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/" + target
    restore = run_cli(["restore", backup_id, "--target-url", url, "--yes", *extra], env)
    for proc in (verify, restore):
        assert proc.returncode == 13, proc.stderr
        assert "Traceback" not in proc.stderr
    assert databases(env, "prefect") == before, "a database was created"
    return verify.stderr, restore.stderr


@pytest.fixture(scope="module")
def repo(stack_env: dict[str, str], identity: tuple[Path, str]) -> Iterator[dict]:
    """A repository of its own holding a full and a config-only backup, pristine copies of
    their objects, and the environment; each test restores the objects it forged."""
    from conftest import clean_cli_env

    env = clean_cli_env(stack_env, identity, PREFECT_DR_S3_PREFIX=f"f-{uuid.uuid4().hex[:10]}")
    full = backup_manifest(env)
    config_only = backup_manifest(env, "--kind", "config-only")
    pristine = {k: _get(env, k) for k in _keys(env)}
    yield {"env": env, "full": full, "config": config_only}
    for key in _keys(env):
        if key not in pristine:
            s3_client(env).delete_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key)


@pytest.fixture()
def fresh(repo: dict) -> Iterator[dict]:
    """``repo`` with the objects a test forged put back as they were."""
    env = repo["env"]
    pristine = {k: _get(env, k) for k in _keys(env)}
    yield repo
    for key in _keys(env):
        if key not in pristine:
            s3_client(env).delete_object(Bucket=env["PREFECT_DR_S3_BUCKET"], Key=key)
    for key, body in pristine.items():
        _put(env, key, body)


def _forged_dump(env: dict[str, str]) -> bytes:
    """A Prefect-shaped pg_dump archive with one extra table, as the issue's attacker built."""
    import subprocess

    from conftest import clone_prefect_db, drop_db

    name = f"prefect_src_{uuid.uuid4().hex[:6]}"
    url = clone_prefect_db(env, name)
    try:
        with psycopg.connect(url, password=env["PGPASSWORD"], autocommit=True) as conn:
            conn.execute("CREATE TABLE forged_marker (x int)")
        return subprocess.run(["pg_dump", "-Fc", "--dbname", url],
                              env={**env, "PGPASSWORD": env["PGPASSWORD"]},
                              check=True, capture_output=True).stdout
    finally:
        drop_db(env, name)


@pytest.mark.parametrize("what", ["dump", "history", "config", "block-key", "manifest"])
def test_forged_backup_is_refused_by_verify_and_restore(fresh: dict, what: str) -> None:
    env = fresh["env"]
    manifest = fresh["config"] if what in ("dump", "config", "block-key") else fresh["full"]
    if what == "dump":
        _forge_artifact(env, manifest, "dump", _forged_dump(env))
    elif what == "history":
        table = next(a for a in manifest["artifacts"] if a.get("table"))
        _forge_artifact(env, manifest, table["name"], b"")
    elif what == "config":
        _forge_artifact(env, manifest, "config", json.dumps({"forged": True}).encode())
    elif what == "block-key":
        _forge_artifact(env, manifest, "block-key",
                        json.dumps({"fernet_key": "A" * 43 + "="}).encode())
    else:  # the manifest alone: a full backup relabelled config-only
        key = _manifest_key(manifest)
        _put(env, key, _get(env, key).replace(b'"kind": "full"', b'"kind": "config-only"'))
    verify, restore = _refused(env, manifest["backup_id"])
    assert "signature does not match" in verify and "signature does not match" in restore
    # --allow-unsigned accepts the unsigned, never the edited
    _, restore = _refused(env, manifest["backup_id"], "--allow-unsigned")
    assert "signature does not match" in restore


def test_manifest_moved_from_another_backup_or_replayed_under_a_new_id(fresh: dict) -> None:
    env = fresh["env"]
    full, config_only = fresh["full"], fresh["config"]
    # another backup's signed manifest put in place of this one's
    _put(env, _manifest_key(config_only), _get(env, _manifest_key(full)))
    verify, restore = _refused(env, config_only["backup_id"])
    assert f"describes backup {full['backup_id']}" in verify + restore
    # an old backup replayed, every object, under a new (newer) id
    new_id = "29991231T235959Z-abcdef"
    old_dir = _manifest_key(full).rsplit("/", 1)[0]
    new_dir = old_dir.rsplit("/", 1)[0] + "/" + new_id
    for key in _keys(env):
        if key.startswith(old_dir + "/") and "/verifications/" not in key:
            _put(env, new_dir + key[len(old_dir):], _get(env, key))
    verify, restore = _refused(env, new_id)
    assert f"describes backup {full['backup_id']}" in verify + restore
    listed = {b["id"]: b["status"] for b in json.loads(
        run_cli(["list", "--json"], env).stdout)["backups"]}
    assert listed[new_id] == "corrupt"


def test_backup_moved_from_another_repository_is_refused_but_a_copy_is_trusted(
        fresh: dict) -> None:
    env = fresh["env"]
    bid = fresh["config"]["backup_id"]
    source_dir = _manifest_key(fresh["config"]).rsplit("/", 1)[0]
    moved = dict(env, PREFECT_DR_S3_PREFIX=f"m-{uuid.uuid4().hex[:10]}")
    for key in _keys(env):
        if key.startswith(source_dir + "/"):
            _put(moved, f"{moved['PREFECT_DR_S3_PREFIX']}/{key.split('/', 1)[1]}", _get(env, key))
    try:
        _, restore = _refused(moved, bid)
        assert "moved from another repository" in restore
        # a real copy (prefect-dr copy) is bound to its target and signed again
        copied = dict(env, PREFECT_DR_S3_PREFIX=f"c-{uuid.uuid4().hex[:10]}")
        url = f"s3://{env['PREFECT_DR_S3_BUCKET']}/{copied['PREFECT_DR_S3_PREFIX']}"
        proc = run_cli(["copy", bid, "--to", url], env)
        assert proc.returncode == 0, proc.stderr
        shown = json.loads(run_cli(["show", bid, "--json"], copied).stdout)
        assert shown["repository"] == url
        dry = run_cli(["restore", bid, "--dry-run", "--target-url",
                       env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/prefect_dry_x"],
                      copied)
        assert dry.returncode == 0, dry.stderr
        assert "signed by key" in dry.stdout + dry.stderr
    finally:
        for e in (moved, locals().get("copied")):
            if e:
                for key in _keys(e):
                    s3_client(e).delete_object(Bucket=e["PREFECT_DR_S3_BUCKET"], Key=key)


def test_forged_verification_record_counts_as_unsigned(fresh: dict, tmp_path: Path) -> None:
    env = fresh["env"]
    manifest = fresh["full"]
    record = {"format": "prefect-dr-verification", "format_version": 1,
              "backup_id": manifest["backup_id"], "result": "passed",
              "started_at": "2099-01-01T00:00:00+00:00",
              "finished_at": "2099-01-01T00:00:01+00:00", "checks": []}
    folder = _manifest_key(manifest).rsplit("/", 1)[0]
    _put(env, f"{folder}/verifications/20990101T000000Z-ffffff.json", json.dumps(record).encode())
    listed = {b["id"]: b for b in json.loads(run_cli(["list", "--json"], env).stdout)["backups"]}
    assert listed[manifest["backup_id"]]["verification"]["result"] == "unsigned"
    # signed by a key the reader does not trust: unsigned too
    other = tmp_path / "other.pem"
    assert run_cli(["keygen", "--signing", "-o", str(other)], env).returncode == 0
    from prefect_dr import signing

    signed = signing.sign_record(record, signing.load_private(other))
    _put(env, f"{folder}/verifications/20990101T000000Z-ffffff.json", json.dumps(signed).encode())
    listed = {b["id"]: b for b in json.loads(run_cli(["list", "--json"], env).stdout)["backups"]}
    assert listed[manifest["backup_id"]]["verification"]["result"] == "unsigned"


def test_forged_status_record_is_ignored(fresh: dict) -> None:
    env = fresh["env"]
    bid = "20990101T000000Z-eeeeee"
    folder = _manifest_key(fresh["full"]).rsplit("/", 2)[0] + "/" + bid
    _put(env, f"{folder}/status.json", json.dumps({
        "format": "prefect-dr-status", "format_version": 1, "backup_id": bid, "kind": "full",
        "status": "failed", "error": "forged", "started_at": "2099-01-01T00:00:00+00:00",
        "labels": {}}).encode())
    listed = {b["id"]: b for b in json.loads(run_cli(["list", "--json"], env).stdout)["backups"]}
    assert listed[bid]["status"] == "incomplete"
    assert "not signed by a trusted key" in listed[bid]["error"]


def test_reader_without_verify_key_refuses_unless_allow_unsigned(fresh: dict) -> None:
    env = dict(fresh["env"])
    env.pop("PREFECT_DR_VERIFY_KEY")
    bid = fresh["config"]["backup_id"]
    verify, restore = _refused(env, bid)
    assert "no verify key is configured" in verify and "PREFECT_DR_VERIFY_KEY" in restore
    for cmd in (["block-key", bid, "-o", "-"], ["restore-config", bid, "--dry-run"]):
        proc = run_cli(cmd, env)
        assert proc.returncode == 13 and "--allow-unsigned" in proc.stderr, proc.stderr
    url = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/prefect_dry_y"
    dry = run_cli(["restore", bid, "--dry-run", "--target-url", url, "--allow-unsigned"], env)
    assert dry.returncode == 0, dry.stderr
    assert "accepted by --allow-unsigned" in dry.stderr


def test_writer_without_signing_key(fresh: dict) -> None:
    env = dict(fresh["env"])
    env.pop("PREFECT_DR_SIGNING_KEY_FILE")
    proc = run_cli(["backup", "--kind", "config-only"], env)
    assert proc.returncode == 2 and "PREFECT_DR_SIGNING_KEY_FILE" in proc.stderr
    doctor = run_cli(["doctor", "--json"], env)
    assert doctor.returncode == 1
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["signing key"]["status"] == "fail"
    # explicitly unsigned: written, and refused by readers unless --allow-unsigned
    proc = run_cli(["backup", "--kind", "config-only", "--json"],
                   dict(env, PREFECT_DR_SIGNING_REQUIRED="false"))
    assert proc.returncode == 0, proc.stderr
    bid = json.loads(proc.stdout)["backup_id"]
    _, restore = _refused(fresh["env"], bid)
    assert "is not signed" in restore
    verify = run_cli(["verify", bid, "--allow-unsigned"], fresh["env"])
    assert verify.returncode == 0, verify.stderr
    # --latest passes over the untrusted newest backup instead of being stopped by it
    url = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/prefect_dry_l"
    dry = run_cli(["restore", "--latest", "--kind", "config-only", "--dry-run", "--json",
                   "--target-url", url], fresh["env"])
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["plan"]["backup_id"] == fresh["config"]["backup_id"]
    assert f"--latest passes over {bid}" in dry.stderr


def test_key_rotation_and_unknown_keys(fresh: dict, tmp_path: Path) -> None:
    env = fresh["env"]
    new_key = tmp_path / "new.pem"
    new_public = run_cli(["keygen", "--signing", "-o", str(new_key)], env).stdout.strip()
    rotated = dict(env, PREFECT_DR_SIGNING_KEY_FILE=str(new_key))
    proc = run_cli(["backup", "--kind", "config-only", "--json"], rotated)
    assert proc.returncode == 0, proc.stderr
    bid = json.loads(proc.stdout)["backup_id"]
    _, restore = _refused(env, bid)  # the reader knows only the old key
    assert "unknown key" in restore
    both = dict(env, PREFECT_DR_VERIFY_KEY=f"{env['PREFECT_DR_VERIFY_KEY']},{new_public}")
    for backup_id in (bid, fresh["config"]["backup_id"]):  # new and old backups, one reader
        url = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/prefect_dry_z"
        dry = run_cli(["restore", backup_id, "--dry-run", "--target-url", url], both)
        assert dry.returncode == 0, dry.stderr


def test_keygen_makes_both_keys(tmp_path: Path) -> None:
    from conftest import run_cli as cli

    out = tmp_path / "id.txt"
    proc = cli(["keygen", "-o", str(out)], {"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    recipient, verify_key = proc.stdout.split()
    assert recipient.startswith("age1") and len(verify_key) == 44
    pem = out.with_name("id.signing.pem")
    assert oct(pem.stat().st_mode & 0o777) == "0o600" and b"PRIVATE KEY" in pem.read_bytes()
    assert "PRIVATE" not in proc.stdout + proc.stderr
    assert hashlib.sha256(pem.read_bytes()).hexdigest() not in proc.stdout


def _admin(env: dict[str, str], db: str = "postgres") -> psycopg.Connection:
    from prefect_dr.pg.scratch import with_database

    return psycopg.connect(with_database(env["PREFECT_DR_STACK_PG_ADMIN_URL"], db),
                           password=env["PREFECT_DR_STACK_PG_ADMIN_PASSWORD"], autocommit=True)


def _program_dump(env: dict[str, str], marker: Path) -> bytes:
    """A Prefect database with a function that shells out (COPY ... TO PROGRAM) and a table
    whose CHECK calls it: loading the table's rows runs the program."""
    import subprocess

    from conftest import clone_prefect_db, drop_db

    name = f"prefect_src_{uuid.uuid4().hex[:6]}"
    url = clone_prefect_db(env, name)
    try:
        with psycopg.connect(url, password=env["PGPASSWORD"], autocommit=True) as conn:
            conn.execute("CREATE FUNCTION forged_f(x int) RETURNS boolean LANGUAGE plpgsql AS "
                         "$$ BEGIN RETURN true; END $$")
            conn.execute("CREATE TABLE forged_t (x int CHECK (forged_f(x)))")
            conn.execute("INSERT INTO forged_t VALUES (1)")
            conn.execute(
                "CREATE OR REPLACE FUNCTION forged_f(x int) RETURNS boolean LANGUAGE plpgsql AS "
                f"$$ BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker}'''; "
                "RETURN true; END $$")
        return subprocess.run(["pg_dump", "-Fc", "--dbname", url], env=env, check=True,
                              capture_output=True).stdout
    finally:
        drop_db(env, name)


def test_forged_archive_runs_as_the_owner_never_as_superuser(fresh: dict,
                                                             tmp_path: Path) -> None:
    env = fresh["env"]
    manifest = fresh["config"]
    marker = Path(f"/tmp/prefect-dr-forged-{uuid.uuid4().hex[:8]}")
    _forge_artifact(env, manifest, "dump", _program_dump(env, marker))
    key = _manifest_key(manifest)  # an attacker cannot sign: the manifest goes unsigned
    body = json.loads(_get(env, key))
    body.pop("signature")
    _put(env, key, json.dumps(body).encode())
    target = f"prefect_owned_{uuid.uuid4().hex[:6]}"
    with _admin(env) as conn:
        conn.execute(f'CREATE DATABASE "{target}" OWNER prefect')
    # the restore connects as the superuser, as the documented set-up did
    admin_env = dict(env, PGPASSWORD=env["PREFECT_DR_STACK_PG_ADMIN_PASSWORD"])
    admin_url = env["PREFECT_DR_STACK_PG_ADMIN_URL"].rsplit("/", 1)[0] + "/" + target
    argv = ["restore", manifest["backup_id"], "--target-url", admin_url, "--yes",
            "--no-safety-backup", "--allow-unsigned", "--allow-history-loss"]
    try:
        dry = run_cli([*argv, "--dry-run", "--json"], admin_env)
        plan = json.loads(dry.stdout)["plan"]
        assert plan["restore_role"] == "prefect"
        assert any(o.startswith("FUNCTION public.forged_f") for o in plan["foreign_objects"])
        assert "TABLE public.forged_t" in plan["foreign_objects"]
        refused = run_cli(argv, admin_env)
        assert refused.returncode == 13, refused.stderr
        assert "executable object" in refused.stderr and "forged_f" in refused.stderr
        ran = run_cli([*argv, "--allow-foreign-objects"], admin_env)
        assert ran.returncode != 0, ran.stderr
        assert "external program" in ran.stderr, ran.stderr  # COPY TO PROGRAM, refused
        assert not marker.exists(), "the archive's program ran"
        # a database owned by a superuser is not restored as that superuser
        with _admin(env) as conn:
            conn.execute(f'ALTER DATABASE "{target}" OWNER TO postgres')
        refused = run_cli([*argv, "--allow-foreign-objects"], admin_env)
        assert refused.returncode == 2 and "owned by superuser postgres" in refused.stderr
        assert not marker.exists()
    finally:
        with _admin(env) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        marker.unlink(missing_ok=True)


def test_a_prefect_dump_holds_nothing_foreign(fresh: dict) -> None:
    env = fresh["env"]
    url = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + "/prefect_dry_toc"
    dry = run_cli(["restore", fresh["full"]["backup_id"], "--dry-run", "--json",
                   "--target-url", url], env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["plan"]
    assert plan["foreign_objects"] == [] and plan["restore_role"] == "prefect"
    contents = next(f for f in plan["preflight"] if f["name"] == "contents")
    assert contents["ok"], contents
