"""Repositories beyond one S3 bucket, on the real stack: local files, Azure Blob (Azurite) and
Google Cloud Storage (fake-gcs-server) hold backups that verify and restore; `copy` puts complete
backups into a second repository (S3 -> Azure, S3 -> files), is idempotent, resumes after a
stop or a SIGKILL, and never copies a tampered backup as complete."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import run_cli, s3_client

from prefect_dr import copy
from prefect_dr import layout as lay
from prefect_dr.catalog import list_backups
from prefect_dr.errors import Interrupted
from prefect_dr.layout import Layout
from prefect_dr.storage.file import FileStorage

pytestmark = pytest.mark.integration


def _counts(url: str, password: str) -> dict[str, int]:
    with psycopg.connect(url, password=password) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def _url(backend: str, env: dict[str, str], tmp_path: Path) -> str:
    run = uuid.uuid4().hex[:10]
    if backend == "file":
        return f"file://{tmp_path}/repo-{run}"
    if backend == "azure":
        return f"azure://{env['PREFECT_DR_STACK_AZURE_CONTAINER']}/t-{run}"
    return f"gs://{env['PREFECT_DR_STACK_GCS_BUCKET']}/t-{run}"


def _ok(proc: object) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("backend", ["file", "azure", "gcs"])
def test_backup_list_verify_restore(backend: str, clone: dict[str, str],
                                    tmp_path: Path) -> None:
    url = _url(backend, clone, tmp_path)
    if backend == "file":
        Path(url[len("file://"):]).mkdir()
    env = dict(clone, PREFECT_DR_REPOSITORY=url)
    proc = run_cli(["backup", "--json"], env)
    backup_id = _ok(proc)["backup_id"]
    assert "Request URL" not in proc.stderr  # the cloud libraries' request logs stay quiet
    listed = _ok(run_cli(["list", "--json"], env))["backups"]
    assert [(b["id"], b["status"]) for b in listed] == [(backup_id, "complete")]
    assert _ok(run_cli(["verify", "--latest", "--json"], env))["ok"] is True
    target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{env['_DB']}_{backend}"
    _ok(run_cli(["restore", "--latest", "--yes", "--target-url", target, "--json",
                 "--jobs", "1"], env))
    assert _counts(target, env["PGPASSWORD"]) == _counts(env["PREFECT_DR_DATABASE_URL"],
                                                          env["PGPASSWORD"])


def test_copy_s3_to_azure_and_files_then_verify_and_restore_from_the_copies(
        clone: dict[str, str], tmp_path: Path) -> None:
    env = clone  # the S3 repository of the stack, under a prefix of its own
    backup_id = _ok(run_cli(["backup", "--json"], env))["backup_id"]
    azure = _url("azure", env, tmp_path)
    files = tmp_path / "offsite"
    files.mkdir()
    prom = tmp_path / "copies.prom"
    done = _ok(run_cli(["copy", "--latest", "--to", azure, "--json", "--metrics-file",
                        str(prom)], env))
    assert [(b["backup_id"], b["result"]) for b in done["backups"]] == [(backup_id, "copied")]
    again = _ok(run_cli(["copy", "--latest", "--to", azure, "--json"], env))
    assert [b["result"] for b in again["backups"]] == ["skipped"]
    _ok(run_cli(["copy", "--all", "--to", f"file://{files}", "--json", "--metrics-file",
                 str(prom)], env))
    copied = [line for line in prom.read_text().splitlines()
              if line.startswith("prefect_dr_copy_backups{")]
    assert len(copied) == 2, copied  # one series per target: the second did not replace
    assert any(f'target="file://{files}"' in line for line in copied)
    # verify from the Azure copy; restore from the file copy
    assert _ok(run_cli(["--repository", azure, "verify", backup_id, "--json"], env))["ok"]
    target = env["PREFECT_DR_DATABASE_URL"].rsplit("/", 1)[0] + f"/{env['_DB']}_copy"
    _ok(run_cli(["restore", backup_id, "--repository", f"file://{files}", "--yes",
                 "--target-url", target, "--jobs", "1", "--json"], env))
    assert _counts(target, env["PGPASSWORD"]) == _counts(env["PREFECT_DR_DATABASE_URL"],
                                                          env["PGPASSWORD"])
    # the manifest is carried as it was, bound to its new repository and signed again
    source = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
    copied = json.loads(run_cli(["show", backup_id, "--repository", azure, "--json"],
                                env).stdout)
    assert copied.pop("repository") == azure and source.pop("repository") != azure
    assert copied.pop("signature")["key_id"] == source.pop("signature")["key_id"]
    assert source == copied


class _StopsAfter(FileStorage):
    """A file repository whose second upload is stopped as by SIGTERM."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writers = 0

    def open_writer(self, key: str, **kwargs: object) -> object:
        self.writers += 1
        if self.writers == 2:
            raise Interrupted("stopped by signal SIGTERM")
        return super().open_writer(key, **kwargs)


def _config_only_backup(env: dict[str, str], root: Path) -> str:
    root.mkdir()
    proc = run_cli(["backup", "--kind", "config-only", "--json"],
                   dict(env, PREFECT_DR_REPOSITORY=f"file://{root}"))
    return _ok(proc)["backup_id"]


def test_copy_stopped_midway_then_rerun_completes_without_duplicates(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    backup_id = _config_only_backup(cli_env, tmp_path / "a")
    source = copy.Repository(FileStorage(tmp_path / "a"), Layout(""))
    (tmp_path / "b").mkdir()
    entries = list_backups(source.storage, source.layout)
    stopping = copy.Repository(_StopsAfter(tmp_path / "b"), Layout("offsite"))
    with pytest.raises(Interrupted):
        copy.run(source, stopping, entries)
    half = list_backups(stopping.storage, stopping.layout)
    assert [(e.backup_id, e.status) for e in half] == [(backup_id, "incomplete")]
    target = copy.Repository(FileStorage(tmp_path / "b"), Layout("offsite"))
    result = copy.run(source, target, entries)
    assert [(b.result, b.objects_kept) for b in result.backups] == [("copied", 1)]
    names = sorted(k.key.rsplit("/", 1)[1] for k in target.storage.list(""))
    assert names == sorted(k.key.rsplit("/", 1)[1] for k in source.storage.list(""))
    assert target.storage.list_incomplete_uploads("") == []
    full = list_backups(target.storage, target.layout)
    assert [(e.backup_id, e.status) for e in full] == [(backup_id, "complete")]
    assert copy.run(source, target, entries).backups[0].result == "skipped"


def _whole(root: Path, entries: list) -> None:
    """Every backup with a manifest in the file repository ``root`` holds each artifact the
    manifest lists, with its size and SHA-256."""
    for entry in entries:
        if entry.manifest is None:
            continue
        for artifact in entry.manifest.artifacts:
            data = (root / Layout("").artifact(entry.backup_id,
                                               artifact.location.rsplit("/", 1)[1])).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (artifact.size,
                                                                     artifact.sha256)


def test_copy_killed_midway_then_rerun_completes_without_duplicates(
        clone: dict[str, str], tmp_path: Path) -> None:
    """A real `copy --all` process, S3 -> files, SIGKILLed while it writes the second of three
    backups (its reads slowed by a proxy in front of S3); then run again."""
    from slowproxy import SlowProxy

    env = clone  # a database (whose backups no other test holds up) and a prefix of its own
    prefix = env["PREFECT_DR_S3_PREFIX"]
    ids = [_ok(run_cli(["backup", "--json"], env))["backup_id"] for _ in range(3)]
    target = tmp_path / "offsite"
    target.mkdir()
    to = f"file://{target}"
    first_manifest = target / Layout("").artifact(ids[0], lay.MANIFEST)
    second = target / Layout("").backup_dir(ids[1])
    s3 = urlsplit(env["PREFECT_DR_S3_ENDPOINT_URL"])
    proxy = SlowProxy((s3.hostname, s3.port), rate=50_000)  # a ~110 kB backup in ~2 s
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect_dr", "copy", "--all", "--to", to],
            env=dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        # the first backup complete in the target, an object of the second being written
        while not (first_manifest.exists() and second.is_dir()
                   and list(second.glob(".*.partial"))):
            assert proc.poll() is None, (
                f"copy ended before it could be killed ({proxy.forwarded} bytes through the "
                f"proxy; target: {sorted(str(p.relative_to(target)) for p in target.rglob('*'))})")
            assert time.monotonic() < deadline, "copy did not get to the second backup"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proxy.close()
    assert proc.returncode == -signal.SIGKILL
    # after the kill: what has a manifest is whole; the backup cut short is incomplete
    half = list_backups(FileStorage(target), Layout(""))
    _whole(target, half)
    status = {e.backup_id: e.status for e in half}
    assert status[ids[0]] == "complete"
    assert status.get(ids[1], "incomplete") == "incomplete"
    assert status.get(ids[2], "incomplete") == "incomplete"
    listed = _ok(run_cli(["--repository", to, "list", "--json"], env))["backups"]
    assert [b["id"] for b in listed if b["status"] == "complete"] == [ids[0]]
    # the rerun (at full speed) skips the copied backup and finishes the others
    again = _ok(run_cli(["copy", "--all", "--to", to, "--json"], env))
    assert [(b["backup_id"], b["result"]) for b in again["backups"]] == [
        (ids[0], "skipped"), (ids[1], "copied"), (ids[2], "copied")]
    full = list_backups(FileStorage(target), Layout(""))
    assert [(e.backup_id, e.status) for e in full] == [(b, "complete") for b in ids]
    _whole(target, full)
    # exactly once: the target holds the source's objects byte for byte (manifests bound to
    # the target and signed again), and nothing else (the killed run's temporary file is an
    # incomplete upload for prune)
    client = s3_client(env)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=env["PREFECT_DR_S3_BUCKET"], Prefix=f"{prefix}/v1/backups/")
    source = {o["Key"][len(prefix) + 1:]: client.get_object(
        Bucket=env["PREFECT_DR_S3_BUCKET"], Key=o["Key"])["Body"].read()
        for page in pages for o in page.get("Contents", ())}
    copied = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*")
              if p.is_file() and not p.name.endswith(".partial")}
    assert copied.keys() == source.keys()
    for key, body in source.items():
        if not key.endswith(lay.MANIFEST):
            assert copied[key] == body, key
            continue
        here, there = json.loads(copied[key]), json.loads(body)
        assert here.pop("repository") == f"file://{target}" != there.pop("repository")
        here.pop("signature"), there.pop("signature")
        assert here == there
    assert sorted(k.split("/")[2] for k in source if k.endswith(lay.MANIFEST)) == ids
    leftovers = FileStorage(target).list_incomplete_uploads("")
    assert len(leftovers) <= 1 and all(ids[1] in u.key for u in leftovers)
    # the backup the kill cut short restores from the copy
    assert _ok(run_cli(["--repository", to, "verify", ids[1], "--json"], env))["ok"] is True


def test_a_tampered_object_is_not_copied_as_complete(cli_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    backup_id = _config_only_backup(cli_env, tmp_path / "a")
    dump = tmp_path / "a" / Layout("").artifact(backup_id, lay.DUMP)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    (tmp_path / "b").mkdir()
    env = dict(cli_env, PREFECT_DR_REPOSITORY=f"file://{tmp_path / 'a'}")
    proc = run_cli(["copy", backup_id, "--to", f"file://{tmp_path / 'b'}"], env)
    assert proc.returncode == 13, proc.stderr
    assert "does not match its manifest" in proc.stderr
    target = FileStorage(tmp_path / "b")
    assert target.stat(Layout("").artifact(backup_id, lay.MANIFEST)) is None
    assert [e.status for e in list_backups(target, Layout(""))] in ([], ["incomplete"])


def test_backup_copy_to_copies_each_backup_once_complete(cli_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = dict(cli_env, PREFECT_DR_REPOSITORY=f"file://{tmp_path / 'a'}",
               PREFECT_DR_COPY_TO=f"file://{tmp_path / 'b'}")
    metrics = tmp_path / "m.prom"
    out = _ok(run_cli(["backup", "--kind", "config-only", "--json", "--metrics-file",
                       str(metrics)], env))
    assert f'repository="file://{tmp_path / "a"}"' in metrics.read_text()
    assert [(c["target"], c["backups"][0]["result"]) for c in out["copies"]] == [
        (f"file://{tmp_path / 'b'}", "copied")]
    listed = _ok(run_cli(["--repository", f"file://{tmp_path / 'b'}", "list", "--json"], env))
    assert [(b["id"], b["status"]) for b in listed["backups"]] == [(out["backup_id"],
                                                                    "complete")]
    # prune works per repository: the copy's older backup goes, its folder with it
    newer = _ok(run_cli(["backup", "--kind", "config-only", "--json"], env))["backup_id"]
    pruned = _ok(run_cli(["--repository", f"file://{tmp_path / 'b'}", "prune", "--kind",
                          "config-only", "--keep-last", "1", "--min-verified", "0", "--json"],
                         env))
    assert pruned["counts"]["removed"] == 1
    left = sorted({p.name for p in (tmp_path / "b" / "v1" / "backups").iterdir()})
    assert left == [newer]


def test_azure_and_gcs_reads_check_the_stored_checksum(stack_env: dict[str, str]) -> None:
    """An object whose bytes do not match the checksum the store keeps fails the read."""
    from azure.storage.blob import ContentSettings
    from conftest import azure_storage, gcs_storage

    from prefect_dr.errors import StorageError

    key = f"checksum-{uuid.uuid4().hex[:8]}/obj"
    azure = azure_storage(stack_env)
    blob = azure.client.get_blob_client(key)
    blob.upload_blob(b"payload")
    blob.set_http_headers(ContentSettings(content_md5=bytearray(16)))  # not the payload's MD5
    try:
        with pytest.raises(StorageError, match="md5 checksum mismatch"):
            azure.get_bytes(key)
    finally:
        azure.delete(key)
    gcs = gcs_storage(stack_env)
    gcs.put_bytes(key, b"payload")
    try:
        reader = gcs.open_reader(key)
        raw = reader.raw
        raw._expected = ("crc32c", "AAAAAA==")  # as if the stored CRC32C differed
        with pytest.raises(StorageError, match="crc32c checksum mismatch"):
            reader.read()
        assert gcs.stat(key) is not None and gcs._reload(key).crc32c  # GCS keeps one
    finally:
        gcs.delete(key)
