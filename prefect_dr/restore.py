"""`restore` and `rollback`: restore beside the live database, swap, keep the old one, undo.

Names (``<db>`` is the target database):
- ``<db>_restore_<stamp>``: the database being restored; dropped on any failure before the swap
  (a SIGKILLed run's one is dropped by the next restore, under the restore lock);
- ``<db>_pre_restore_<stamp>``: the live database, renamed aside by the swap and kept;
- ``<db>_rolled_back_<stamp>``: a restored database that `rollback` swapped out, kept.
Each kept database carries a comment saying what it is. Nothing is ever dropped implicitly except
a half-restored ``<db>_restore_<stamp>``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from prefect_dr import backup as backup_mod
from prefect_dr import crypto, pipeline, restore_stream, schema_gate, semantic, signing
from prefect_dr import prefect_schema as ps
from prefect_dr.checks import Check, Checks, Report
from prefect_dr.config import Settings
from prefect_dr.errors import (
    SCHEMA_REFUSED,
    DRError,
    LockHeldError,
    VerificationError,
)
from prefect_dr.manifest import Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import swap as pgswap
from prefect_dr.pg.scratch import drop_database, with_database
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)
RESTORE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"prefect-dr:restore").digest()[:8], "big",
                                  signed=True)
STAMP_FORMAT = "%Y%m%d%H%M%S"
MAX_IDENTIFIER = 63


class SchemaRefusedError(DRError):
    """The backup's schema revision is newer than the target's Prefect can run."""

    exit_code = SCHEMA_REFUSED


@dataclass
class Plan:
    """Everything a restore will do, computed without changing anything."""

    backup_id: str
    kind: str
    prefect_version: str | None
    backup_revision: str | None
    target: str  # host:port/db, no credentials
    target_db: str
    target_exists: bool
    target_revision: str | None
    schema_ok: bool
    schema_reason: str
    config_diff: list[dict[str, Any]] = field(default_factory=list)
    history_diff: list[dict[str, Any]] = field(default_factory=list)
    restore_db: str = ""
    aside_db: str | None = None
    creates: list[str] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)
    disk_needed: int | None = None
    safety_backup: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass
class Result:
    """What a restore did."""

    plan: Plan
    checks: list[Check]
    safety_backup_id: str | None
    kept_db: str | None


def _names(db: str, stamp: str) -> tuple[str, str]:
    restore_db, aside = f"{db}_restore_{stamp}", f"{db}_pre_restore_{stamp}"
    if len(aside) > MAX_IDENTIFIER:
        raise DRError(f"database name {db!r} is too long to keep a renamed copy beside it "
                      f"({MAX_IDENTIFIER} characters at most for {aside!r})")
    return restore_db, aside


def target_of(settings: Settings, target_url: str | None) -> tuple[str, str, str]:
    """(target URL, target database name, maintenance URL on the same server)."""
    url = target_url or settings.database_url
    if not url:
        settings.require("database_url")
    db = pgc.urlsplit_db(url)
    return url, db, with_database(url, "postgres")


def _counts(conn: psycopg.Connection, tables: list[str]) -> dict[str, tuple[int, bool]]:
    out: dict[str, tuple[int, bool]] = {}
    for table in tables:
        if not pgc.table_exists(conn, table):
            continue
        if table in ps.CONFIG_TABLES:
            out[table] = (pgc.count_rows(conn, table), True)
        else:
            row = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                               "WHERE oid = %s::regclass", (f"public.{table}",)).fetchone()
            estimate = int(row[0]) if row else 0
            out[table] = ((pgc.count_rows(conn, table), True) if estimate < 100_000
                          else (estimate, False))
    return out


def make_plan(settings: Settings, manifest: Manifest, *, target_url: str | None,
              allow_newer_schema: bool, safety_backup: bool,
              now: dt.datetime | None = None) -> Plan:
    """Compute the plan (what --dry-run prints). Changes nothing. Raises DatabaseError."""
    url, db, admin_url = target_of(settings, target_url)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime(STAMP_FORMAT)
    restore_db, aside = _names(db, stamp)
    with pgc.connect(admin_url) as admin:
        target_exists = pgswap.exists(admin, db)
    target_revision = None
    current: dict[str, tuple[int, bool]] = {}
    if target_exists:
        with pgc.connect(url) as conn:
            target_revision = pgc.alembic_revision(conn)
            current = _counts(conn, sorted(manifest.row_counts))
    verdict = schema_gate.judge(manifest.alembic_revision, target_revision,
                                schema_gate.installed_revisions())
    plan = Plan(
        backup_id=manifest.backup_id, kind=manifest.kind,
        prefect_version=manifest.prefect_version, backup_revision=manifest.alembic_revision,
        target=pgc.describe(url), target_db=db, target_exists=target_exists,
        target_revision=target_revision,
        schema_ok=verdict.ok or allow_newer_schema,
        schema_reason=verdict.reason + (" (overridden by --allow-newer-schema)"
                                        if allow_newer_schema and not verdict.ok else ""),
        restore_db=restore_db, aside_db=aside if target_exists else None,
        creates=[restore_db],
        renames=([(db, aside), (restore_db, db)] if target_exists else [(restore_db, db)]),
        disk_needed=manifest.database_size,
        safety_backup=safety_backup and target_exists,
    )
    for table, entry in sorted(manifest.row_counts.items()):
        now_rows, exact = current.get(table, (0, True))
        row = {"table": table, "backup": entry["rows"], "current": now_rows,
               "change": entry["rows"] - now_rows,
               "exact": bool(entry.get("exact")) and exact}
        (plan.config_diff if table in ps.CONFIG_TABLES else plan.history_diff).append(row)
    return plan


def _load_identities(settings: Settings) -> list[crypto.Identity]:
    settings.require("age_identity_file")
    return crypto.load_identities(Path(settings.age_identity_file).expanduser())


def check_signature(settings: Settings, manifest: Manifest) -> None:
    """With PREFECT_DR_VERIFY_KEY set, refuse an unsigned or wrongly signed manifest."""
    if settings.verify_key:
        signing.check(manifest, signing.load_public(settings.verify_key))


def _drop_leftovers(admin: psycopg.Connection, db: str) -> list[str]:
    pattern = re.escape(db) + r"_restore_\d{14}"
    dropped = []
    for name in [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s", (f"^{pattern}$",))]:
        if not pgswap.sessions(admin, name):
            log.warning("dropping %s, left by an interrupted restore", name)
            drop_database(admin, name)
            dropped.append(name)
    return dropped


def _take_lock(admin: psycopg.Connection) -> None:
    row = admin.execute("SELECT pg_try_advisory_lock(%s)", (RESTORE_LOCK_KEY,)).fetchone()
    if not row or not row[0]:
        raise LockHeldError("another restore or rollback on this server is running")


def staging_choice(manifest: Manifest, jobs: int, staging_dir: str) -> tuple[bool, str]:
    """Whether to stage the dump for a parallel restore, and why (or why not)."""
    dump_artifact = manifest.artifact("dump")
    if jobs < 2 or dump_artifact is None:
        return False, "streamed into pg_restore (one job)"
    try:
        free = shutil.disk_usage(staging_dir).free
    except OSError:
        return False, f"streamed: staging folder {staging_dir} is not usable"
    need = int(dump_artifact.plaintext_size * 1.1) + 64 * 1024 * 1024
    if free < need:
        return False, (f"streamed: {staging_dir} has {free} bytes free, staging needs {need}")
    return True, f"staged in {staging_dir} ({dump_artifact.plaintext_size} bytes), {jobs} jobs"


def execute(settings: Settings, storage: Storage, manifest: Manifest, plan: Plan, *,
            target_url: str | None, force_disconnect: bool,
            env: Mapping[str, str], progress: pipeline.Progress | None = None,
            on_step: Callable[[str], None] = lambda _: None, jobs: int = 1,
            staging_dir: str | None = None) -> Result:
    """Carry out ``plan``. Before the swap, any failure leaves the live database untouched and
    drops the half-restored one; a failure inside the swap is undone.

    Raises SchemaRefusedError, LockHeldError, VerificationError, ConnectedClientsError,
    DatabaseError, StorageError, CryptoKeyError, Interrupted.
    """
    if not plan.schema_ok:
        raise SchemaRefusedError(f"refusing to restore backup {plan.backup_id}: "
                                 f"{plan.schema_reason}")
    check_signature(settings, manifest)
    identities = _load_identities(settings)
    url, db, admin_url = target_of(settings, target_url)
    admin = pgc.connect(admin_url)
    try:
        _take_lock(admin)
        _drop_leftovers(admin, db)
        role = pgswap.owner(admin, db) if plan.target_exists else None
        me = str(admin.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(plan.restore_db), sql.Identifier(role or me)))
        report = Report(plan.backup_id, dt.datetime.now(dt.UTC).isoformat())
        checks = Checks(report)
        restored_url = with_database(url, plan.restore_db)
        try:
            on_step(f"restoring backup {plan.backup_id} into {plan.restore_db}")
            export_doc, escrowed = restore_stream.read_small_artifacts(
                storage, manifest, identities, checks)
            dump = manifest.artifact("dump")
            if dump is None:
                raise VerificationError(f"backup {plan.backup_id} has no dump artifact")
            as_role = role if role and role != me else None
            folder = staging_dir or tempfile.gettempdir()
            staged, how = staging_choice(manifest, jobs, folder)
            on_step(f"restore: {how}")
            if staged:
                restore_stream.restore_dump_staged(
                    storage, dump, identities, restored_url, settings, progress, checks,
                    jobs=jobs, staging_dir=folder, role=as_role)
            else:
                restore_stream.restore_dump(storage, dump, identities, restored_url,
                                            settings, progress, checks, role=as_role)
            on_step("checking the restored database")
            with pgc.connect(restored_url) as conn:
                semantic.semantic_checks(conn, manifest, export_doc, escrowed, env, checks)
            safety_id = None
            if plan.safety_backup:
                on_step(f"safety backup of the live database {db}")
                safety_settings = dataclasses.replace(
                    settings, values={**settings.values, "database_url": url})
                safety = backup_mod.run(safety_settings, storage, backup_mod.Request(
                    kind="full", labels={"safety": "pre-restore", "restore-of": plan.backup_id},
                    allow_undecryptable_blocks=True), env=env)
                safety_id = safety.backup_id
            on_step("swapping databases")
            stamp = plan.restore_db.rsplit("_", 1)[1]
            restored_note = f"prefect-dr: restored backup {plan.backup_id} at {stamp}"
            if plan.target_exists:
                assert plan.aside_db is not None
                pgswap.swap(admin, db, plan.restore_db, plan.aside_db,
                            force_disconnect=force_disconnect, comments={
                                plan.aside_db: f"prefect-dr: {db} before restore {stamp} of "
                                               f"backup {plan.backup_id}; undo with "
                                               "'prefect-dr rollback'",
                                db: restored_note})
            else:
                with admin.transaction():
                    pgswap.rename(admin, plan.restore_db, db)
                    pgswap.comment(admin, db, restored_note)
        except BaseException:
            if pgswap.exists(admin, plan.restore_db):
                drop_database(admin, plan.restore_db)
            raise
        return Result(plan, report.checks, safety_id, plan.aside_db)
    except psycopg.Error as exc:
        raise DRError(f"restore failed: {pgc.first_line(exc)}") from None
    finally:
        admin.close()


# -- rollback ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kept:
    """A database kept by restore or rollback."""

    name: str
    kind: str  # "pre_restore" | "rolled_back"
    stamp: str
    size: int
    comment: str

    @property
    def age(self) -> dt.timedelta:
        """Time since it was set aside."""
        made = dt.datetime.strptime(self.stamp, STAMP_FORMAT).replace(tzinfo=dt.UTC)
        return dt.datetime.now(dt.UTC) - made


def kept(settings: Settings, target_url: str | None = None) -> list[Kept]:
    """Databases kept beside the target, newest first."""
    _, db, admin_url = target_of(settings, target_url)
    pattern = f"^{re.escape(db)}_(pre_restore|rolled_back)_(\\d{{14}})$"
    with pgc.connect(admin_url) as admin:
        rows = admin.execute(
            "SELECT datname, pg_database_size(oid), shobj_description(oid, 'pg_database') "
            "FROM pg_database WHERE datname ~ %s", (pattern,)).fetchall()
    out = []
    for name, size, note in rows:
        match = re.match(pattern, name)
        assert match
        out.append(Kept(name, match.group(1), match.group(2), int(size), str(note or "")))
    return sorted(out, key=lambda k: k.stamp, reverse=True)


def rollback_target(settings: Settings, target_url: str | None = None) -> tuple[Kept, str]:
    """The pre-restore database a rollback would bring back, and the name the current database
    would get. Raises DRError when there is none or it is ambiguous."""
    _, db, admin_url = target_of(settings, target_url)
    candidates = [k for k in kept(settings, target_url) if k.kind == "pre_restore"]
    if not candidates:
        raise DRError(f"no pre-restore database of {db} to roll back to")
    with pgc.connect(admin_url) as admin:
        note = pgswap.comment_of(admin, db) if pgswap.exists(admin, db) else ""
    match = re.search(r"restored backup \S+ at (\d{14})", note)
    if not match:
        raise DRError(f"{db} was not made by a prefect-dr restore (no restore comment), so "
                      "which kept database to bring back is ambiguous; rename by hand")
    chosen = [k for k in candidates if k.stamp == match.group(1)]
    if len(chosen) != 1:
        raise DRError(f"{db} was restored at {match.group(1)} but no single pre-restore "
                      "database of that restore exists; rename by hand")
    stamp = dt.datetime.now(dt.UTC).strftime(STAMP_FORMAT)
    return chosen[0], f"{db}_rolled_back_{stamp}"


def rollback(settings: Settings, *, target_url: str | None = None,
             force_disconnect: bool = False) -> tuple[str, str]:
    """Swap the pre-restore database back; the restored one is kept. Returns (brought back,
    kept as). Raises DRError, ConnectedClientsError, LockHeldError."""
    chosen, aside = rollback_target(settings, target_url)
    _, db, admin_url = target_of(settings, target_url)
    try:
        with pgc.connect(admin_url) as admin:
            _take_lock(admin)
            pgswap.swap(admin, db, chosen.name, aside, force_disconnect=force_disconnect,
                        comments={
                            aside: f"prefect-dr: {db} rolled back at {aside.rsplit('_', 1)[1]} "
                                   f"(was restored, replaced by {chosen.name})",
                            db: f"prefect-dr: rolled back to the database of {chosen.stamp} "
                                f"(was {chosen.name})"})
    except psycopg.Error as exc:
        raise DRError(f"rollback failed: {pgc.first_line(exc)}") from None
    return chosen.name, aside


def drop_kept(settings: Settings, name: str, *, target_url: str | None = None) -> None:
    """Drop one kept database (only names `kept` lists). Raises DRError."""
    names = {k.name for k in kept(settings, target_url)}
    if name not in names:
        raise DRError(f"{name} is not a database kept by prefect-dr "
                      "(see 'prefect-dr rollback --list')")
    _, _, admin_url = target_of(settings, target_url)
    with pgc.connect(admin_url) as admin:
        _take_lock(admin)
        if pgswap.sessions(admin, name):
            raise pgswap.ConnectedClientsError(f"clients are connected to {name}")
        drop_database(admin, name)

