"""`verify`: prove a backup restorable by restoring it into a scratch database and checking it.

For each backup: the manifest signature (when a verify key is configured); every artifact
streamed, size and ciphertext sha256 checked, decrypted (age authenticates every chunk) and its
plaintext sha256 checked; the dump restored by pg_restore into a fresh scratch database as it
streams; then, on the restored database: schema revision, per-table row counts, every block
document decrypting with the restored (or escrowed) key, the configuration export agreeing with
the database, required extensions; optionally a real Prefect server started on the scratch
database and read through its API. A record of every check is written next to the manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from prefect_dr import __version__, crypto, export, interrupt, pipeline, signing, smoke
from prefect_dr import prefect_schema as ps
from prefect_dr.catalog import (
    COMPLETE,
    BackupEntry,
    list_backups,
    require_complete,
    select_one,
)
from prefect_dr.config import Settings
from prefect_dr.errors import (
    CryptoKeyError,
    DatabaseError,
    DRError,
    Interrupted,
    NotFoundError,
    StorageError,
    VerificationError,
)
from prefect_dr.layout import Layout
from prefect_dr.lock import pid_alive
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import dump, tools
from prefect_dr.pg import restore as pgr
from prefect_dr.pg.scratch import ScratchDatabase
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)
REQUIRED_EXTENSIONS = ("pg_trgm",)
RECORD_FORMAT = "prefect-dr-verification"


@dataclass
class Check:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str
    duration_s: float = 0.0
    artifact: str | None = None


@dataclass
class Report:
    """Everything one verification of one backup found."""

    backup_id: str
    started_at: str
    finished_at: str = ""
    checks: list[Check] = field(default_factory=list)
    scratch_database: str | None = None
    key_error: bool = False

    @property
    def ok(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed_check(self) -> Check | None:
        """The first failed check."""
        return next((c for c in self.checks if not c.ok), None)

    def to_record(self) -> dict[str, Any]:
        """The verification record stored in the bucket (and printed by --json)."""
        failed = self.failed_check
        return {
            "format": RECORD_FORMAT, "format_version": 1, "backup_id": self.backup_id,
            "tool_version": __version__, "started_at": self.started_at,
            "finished_at": self.finished_at, "result": "passed" if self.ok else "failed",
            "failed_check": (f"{failed.name}" + (f" ({failed.artifact})" if failed.artifact
                                                 else "")) if failed else None,
            "scratch_database": self.scratch_database,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class Options:
    """How to verify."""

    scratch_url: str | None = None
    keep_scratch: bool = False
    prefect_smoke: bool = False
    write_record: bool = True


class Checks:
    """Collects checks; ``run`` times one and turns a DRError into a failed check."""

    def __init__(self, report: Report) -> None:
        self.report = report

    @contextmanager
    def run(self, name: str, artifact: str | None = None) -> Iterator[dict[str, str]]:
        out = {"detail": "ok"}
        start = time.monotonic()
        try:
            yield out
        except CryptoKeyError as exc:
            self.report.key_error = True
            self._add(name, False, exc.message, start, artifact)
            raise
        except DRError as exc:
            self._add(name, False, exc.message, start, artifact)
            raise
        except psycopg.Error as exc:
            self._add(name, False, pgc.first_line(exc), start, artifact)
            raise VerificationError(f"{name}: {pgc.first_line(exc)}") from None
        self._add(name, True, out["detail"], start, artifact)

    def _add(self, name: str, ok: bool, detail: str, start: float,
             artifact: str | None) -> None:
        self.report.checks.append(Check(name, ok, detail, round(time.monotonic() - start, 3),
                                        artifact))

    def fail(self, name: str, detail: str, artifact: str | None = None) -> None:
        """Record a failed check without raising."""
        self.report.checks.append(Check(name, False, detail, 0.0, artifact))


def _expect(a: Artifact) -> pipeline.StreamStats:
    return pipeline.StreamStats(a.plaintext_size, a.plaintext_sha256, a.size, a.sha256)


def _decrypt_small(storage: Storage, artifact: Artifact,
                   identities: list[crypto.Identity]) -> bytes:
    out = io.BytesIO()
    with storage.open_reader(artifact.key) as reader:
        pipeline.decrypt_from(reader, out, identities, compressed=artifact.compression == "zstd",
                              expect=_expect(artifact))
    return out.getvalue()


def select(storage: Storage, layout: Layout, *, backup_id: str | None = None,
           latest: bool = False, all_: bool = False, since: dt.timedelta | None = None,
           kind: str | None = None, now: dt.datetime | None = None) -> list[BackupEntry]:
    """The complete backups a verify run covers: ``backup_id``; the newest complete backup of
    ``kind`` (full by default) with ``latest`` or no selector; every complete one (of ``kind``
    when given) with ``all_`` or ``since``. Raises NotFoundError when there are none,
    UsageError for a backup id of another kind."""
    if backup_id or latest or not (all_ or since):
        entry = select_one(storage, layout, backup_id, latest=latest or not backup_id,
                           kind=kind)
        require_complete(entry)
        return [entry]
    entries = [e for e in list_backups(storage, layout)
               if e.status == COMPLETE and (kind is None or e.kind == kind)]
    if since is not None:
        cutoff = (now or dt.datetime.now(dt.UTC)) - since
        entries = [e for e in entries
                   if e.started_at and dt.datetime.fromisoformat(e.started_at) >= cutoff]
    if not entries:
        raise NotFoundError("no complete backup matches (see 'prefect-dr list')")
    return entries


def verify_one(settings: Settings, storage: Storage, manifest: Manifest, options: Options, *,
               env: Mapping[str, str], progress: pipeline.Progress | None = None,
               clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> Report:
    """Verify one backup; returns the report (never raises for a failed check).

    Writes the verification record unless ``options.write_record`` is off or the run failed on
    a key error. Raises ConfigError when settings are missing, StorageError when the store is
    unreachable or the record cannot be written.
    """
    settings.require("age_identity_file")
    if not (options.scratch_url or settings.database_url):
        settings.require("database_url")
    report = Report(manifest.backup_id, clock().isoformat())
    checks = Checks(report)
    try:
        _verify(settings, storage, manifest, options, env, progress, checks)
    except (Interrupted, StorageError):
        raise  # an interrupted run, or an unreachable store, proves nothing: no record
    except DRError as exc:
        if isinstance(exc, DatabaseError) and (not report.checks or report.checks[-1].ok):
            raise  # the scratch server is unreachable: not a verdict on the backup
        if not report.checks or report.checks[-1].ok:
            checks.fail("verify", exc.message)
    report.finished_at = clock().isoformat()
    # A key error (missing, malformed or wrong identity) is a fault of this verifier's set-up,
    # not a verdict on the backup: it exits 12 and leaves the backup's record as it was.
    if options.write_record and not report.key_error:
        _write_record(settings, storage, report, clock)
    return report


def _verify(settings: Settings, storage: Storage, manifest: Manifest, options: Options,
            env: Mapping[str, str], progress: pipeline.Progress | None, checks: Checks) -> None:
    if settings.verify_key:
        with checks.run("manifest signature") as out:
            signing.check(manifest, signing.load_public(settings.verify_key))
            out["detail"] = f"signed by key {manifest.signature.get('key_id')}"  # type: ignore[union-attr]
    with checks.run("identity"):
        identities = crypto.load_identities(Path(settings.age_identity_file).expanduser())

    export_doc, escrowed = read_small_artifacts(storage, manifest, identities, checks)
    dump_artifact = manifest.artifact("dump")
    if dump_artifact is None:
        checks.fail("integrity", "the manifest lists no dump artifact", "dump")
        return
    admin_url = options.scratch_url or settings.database_url
    with ScratchDatabase(admin_url, keep=options.keep_scratch) as scratch:
        checks.report.scratch_database = scratch.name
        restore_dump(storage, dump_artifact, identities, scratch.url, settings, progress,
                      checks)
        with scratch.connect() as conn:
            semantic_checks(conn, manifest, export_doc, escrowed, env, checks)
        if options.prefect_smoke:
            given = ps.configured_key(env)
            with checks.run("prefect smoke") as out:
                out["detail"] = smoke.check(scratch.url, manifest, export_doc,
                                            block_key=escrowed or (given.key if given else None))


def read_small_artifacts(storage: Storage, manifest: Manifest,
                         identities: list[crypto.Identity], checks: Checks
                         ) -> tuple[dict[str, Any] | None, str | None]:
    """Check and decrypt every artifact but the dump; return (export, escrowed block key)."""
    export_doc: dict[str, Any] | None = None
    escrowed: str | None = None
    for artifact in manifest.artifacts:
        if artifact.name == "dump":
            continue
        with checks.run("integrity", artifact.name) as out:
            data = _decrypt_small(storage, artifact, identities)
            out["detail"] = f"{artifact.size} bytes, sha256 ok, decrypted, plaintext sha256 ok"
        if artifact.name == "config":
            with checks.run("export format", artifact.name):
                export_doc = export.parse(data, f"configuration export of {manifest.backup_id}")
        elif artifact.name == "block-key":
            escrowed = str(json.loads(data)["fernet_key"])
    return export_doc, escrowed


def restore_dump(storage: Storage, artifact: Artifact, identities: list[crypto.Identity],
                 url: str, settings: Settings, progress: pipeline.Progress | None,
                 checks: Checks, role: str | None = None) -> None:
    """Stream the dump into pg_restore: integrity and restore in one pass.

    Records an ``integrity`` and a ``restore`` check; raises the DRError of a failed one.
    """
    start = time.monotonic()
    proc = pgr.start(url, bin_dir=settings.pg_bin_dir, role=role)
    integrity_error: DRError | None = None
    try:
        with storage.open_reader(artifact.key) as reader:
            pipeline.decrypt_from(reader, proc.stdin, identities,
                                  compressed=artifact.compression == "zstd",
                                  expect=_expect(artifact), progress=progress)
    except (BrokenPipeError, ConnectionResetError):
        pass  # pg_restore stopped reading: its own error is reported below
    except (Interrupted, StorageError):
        proc.kill()
        raise
    except DRError as exc:
        proc.kill()
        interrupt.raise_if_noted()  # a stop a library wrapped: pg_restore is stopped too
        integrity_error = exc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if integrity_error is not None:
        checks.report.key_error = isinstance(integrity_error, CryptoKeyError)
        checks.report.checks.append(Check("integrity", False, integrity_error.message,
                                          round(time.monotonic() - start, 3), "dump"))
        raise integrity_error
    checks.report.checks.append(Check(
        "integrity", True, f"{artifact.size} bytes, sha256 ok, decrypted, plaintext sha256 ok",
        round(time.monotonic() - start, 3), "dump"))
    with checks.run("restore", "dump") as out:
        proc.wait()
        out["detail"] = "pg_restore into the scratch database succeeded"


STAGING_PREFIX = "prefect-dr-restore-"


def remove_stale_staging(staging_dir: str) -> list[str]:
    """Delete staged dumps whose process is gone (a SIGKILLed restore): they hold plaintext."""
    removed = []
    for path in Path(staging_dir).glob(f"{STAGING_PREFIX}*.dump"):
        pid_text = path.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
                log.warning("removed %s, staged by a restore that no longer runs", path)
    return removed


def restore_dump_staged(storage: Storage, artifact: Artifact,
                        identities: list[crypto.Identity], url: str, settings: Settings,
                        progress: pipeline.Progress | None, checks: Checks, *,
                        jobs: int, staging_dir: str, role: str | None = None) -> None:
    """Decrypt the dump to a private (0600) file, checking its integrity, then restore it with
    ``pg_restore --jobs``: parallel data loading and index builds. The file is always removed.

    Records an ``integrity`` and a ``restore`` check; raises the DRError of a failed one.
    """
    remove_stale_staging(staging_dir)
    fd, path = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".dump",
                                dir=staging_dir)
    try:
        with checks.run("integrity", "dump") as out, os.fdopen(fd, "wb") as staged, \
                storage.open_reader(artifact.key) as reader:
            pipeline.decrypt_from(reader, staged, identities,
                                  compressed=artifact.compression == "zstd",
                                  expect=_expect(artifact), progress=progress)
            out["detail"] = (f"{artifact.size} bytes, sha256 ok, decrypted, plaintext sha256 ok "
                             f"(staged {artifact.plaintext_size} bytes)")
        with checks.run("restore", "dump") as out:
            program = tools.find("pg_restore", settings.pg_bin_dir)
            clean, child_env = dump.child_env(url)
            proc = dump.ClientProcess(pgr.restore_argv(program, clean, jobs=jobs, file=path,
                                                       role=role),
                                      child_env, "pg_restore", stdout=subprocess.DEVNULL)
            try:
                proc.wait()
            except BaseException:
                proc.kill()
                raise
            out["detail"] = f"pg_restore --jobs {jobs} succeeded"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def semantic_checks(conn: psycopg.Connection, manifest: Manifest,
                     export_doc: dict[str, Any] | None, escrowed: str | None,
                     env: Mapping[str, str], checks: Checks) -> None:
    failures = 0

    def soft(name: str, fn: Callable[[dict[str, str]], None]) -> None:
        nonlocal failures
        try:
            with checks.run(name) as out:
                fn(out)
        except DRError:
            interrupt.raise_if_noted()
            failures += 1

    def revision(out: dict[str, str]) -> None:
        got = pgc.alembic_revision(conn)
        if got != manifest.alembic_revision:
            raise VerificationError(f"alembic revision {got} != manifest's "
                                    f"{manifest.alembic_revision}")
        out["detail"] = f"alembic revision {got}"

    def row_counts(out: dict[str, str]) -> None:
        exact = 0
        for table, entry in sorted(manifest.row_counts.items()):
            if not entry.get("exact"):
                continue
            got = pgc.count_rows(conn, table) if pgc.table_exists(conn, table) else None
            if got != entry["rows"]:
                raise VerificationError(f"table {table}: {got} rows restored, manifest says "
                                        f"{entry['rows']}")
            exact += 1
        out["detail"] = f"{exact} tables match exactly"

    def blocks(out: dict[str, str]) -> None:
        docs = ps.encrypted_blocks(conn)
        stored, given = ps.database_key(conn), ps.configured_key(env)
        key = escrowed or (stored.key if stored else None) or (given.key if given else None)
        if not docs:
            out["detail"] = "no block documents"
            return
        if key is None:
            raise VerificationError(f"{len(docs)} block documents and no key to decrypt them")
        bad = ps.undecryptable(docs, key)
        allowed = int(manifest.block_key.get("undecryptable") or 0)
        if len(bad) > allowed:
            raise VerificationError(f"{len(bad)} block documents do not decrypt "
                                    f"(first: {bad[0]!r})")
        out["detail"] = f"{len(docs) - len(bad)} of {len(docs)} block documents decrypt"

    def agreement(out: dict[str, str]) -> None:
        if export_doc is None:
            raise VerificationError("no configuration export to compare")
        _compare_export(conn, export_doc)
        out["detail"] = ", ".join(f"{k} {v}" for k, v in export_doc.get("summary", {}).items()
                                  if v)

    def extensions(out: dict[str, str]) -> None:
        have = {r[0] for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}
        missing = [e for e in REQUIRED_EXTENSIONS if e not in have]
        if missing:
            raise VerificationError(f"missing extensions: {', '.join(missing)}")
        out["detail"] = ", ".join(sorted(have))

    for name, fn in (("schema revision", revision), ("row counts", row_counts),
                     ("block decryption", blocks), ("config export", agreement),
                     ("extensions", extensions)):
        soft(name, fn)
    if failures:
        raise VerificationError(f"{failures} semantic checks failed")


def _names(conn: psycopg.Connection, table: str, where: str = "") -> set[str]:
    if not pgc.table_exists(conn, table):
        return set()
    return {str(r[0]) for r in conn.execute(f"SELECT name FROM {table} {where}").fetchall()}


def _compare_export(conn: psycopg.Connection, export_doc: dict[str, Any]) -> None:
    """Raise VerificationError unless the export names what the restored database holds."""
    pairs = [
        ("block documents", {b["name"] for b in export_doc.get("block_documents", [])},
         _names(conn, "block_document")),
        ("variables", {v["name"] for v in export_doc.get("variables", [])},
         _names(conn, "variable")),
        ("work pools", {p["name"] for p in export_doc.get("work_pools", [])},
         _names(conn, "work_pool")),
        ("deployments", {d["name"] for d in export_doc.get("deployments", [])},
         _names(conn, "deployment")),
        ("automations", {a["name"] for a in export_doc.get("automations", [])},
         _names(conn, "automation")),
    ]
    for what, exported, restored in pairs:
        if exported != restored:
            diff = sorted(exported ^ restored)[:3]
            raise VerificationError(f"{what} differ between export and database: {diff}")
    values = {v["name"]: v.get("value") for v in export_doc.get("variables", [])}
    if pgc.table_exists(conn, "variable"):
        for name, value in conn.execute("SELECT name, value FROM variable").fetchall():
            if values.get(name) != value:
                raise VerificationError(f"variable {name!r} differs between export and database")


def _write_record(settings: Settings, storage: Storage, report: Report,
                  clock: Callable[[], dt.datetime]) -> None:
    record = report.to_record()
    if settings.signing_key_file:
        record = signing.sign_record(record, signing.load_private(
            Path(settings.signing_key_file).expanduser()))
    stamp = clock().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    key = Layout(settings.s3_prefix or "").verification(report.backup_id, stamp)
    storage.put_bytes(key, (json.dumps(record, indent=2) + "\n").encode(), "application/json")
