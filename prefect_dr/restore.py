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
import errno
import hashlib
import logging
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from prefect_dr import backup as backup_mod
from prefect_dr import crypto, pipeline, restore_stream, semantic
from prefect_dr.checks import Check, Checks, Report
from prefect_dr.config import Settings
from prefect_dr.errors import (
    DRError,
    LockHeldError,
    VerificationError,
)
from prefect_dr.kinds import Kind
from prefect_dr.manifest import Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import swap as pgswap
from prefect_dr.pg.scratch import drop_database, with_database
from prefect_dr.restore_plan import (
    STAMP_FORMAT,
    Plan,
    RestoreRefusedError,
    staging_choice,
    staging_need,
    target_of,
)
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)
RESTORE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"prefect-dr:restore").digest()[:8], "big",
                                  signed=True)


@dataclass
class Result:
    """What a restore did."""

    plan: Plan
    checks: list[Check]
    safety_backup_id: str | None
    kept_db: str | None


def _load_identities(settings: Settings) -> list[crypto.Identity]:
    settings.require("age_identity_file")
    return crypto.load_identities(Path(settings.age_identity_file))


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


def execute(settings: Settings, storage: Storage, manifest: Manifest, plan: Plan, *,
            target_url: str | None, force_disconnect: bool,
            env: Mapping[str, str], progress: pipeline.Progress | None = None,
            on_step: Callable[[str], None] = lambda _: None, jobs: int = 1,
            staging_dir: str | None = None) -> Result:
    """Carry out ``plan``. Before the swap, any failure leaves the live database untouched and
    drops the half-restored one; a failure inside the swap is undone.

    Raises RestoreRefusedError (a preflight finding of ``plan`` refuses it), LockHeldError,
    VerificationError, ConnectedClientsError, DatabaseError, StorageError, CryptoKeyError,
    Interrupted.
    """
    if plan.refusal is not None:
        raise RestoreRefusedError(plan.refusal)
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
            choice = plan.restore_client or restore_stream.choose_for(settings, manifest,
                                                                       admin_url)
            if jobs >= 2 and not staged:
                log.warning("restore: %s", how)
            else:
                on_step(f"restore: {how}")
            if staged:
                try:
                    restore_stream.restore_dump_staged(
                        storage, dump, identities, restored_url, choice, progress, checks,
                        jobs=jobs, staging_dir=folder, role=as_role)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    raise DRError(
                        f"no space left in {folder} while staging the decrypted dump "
                        f"({staging_need(manifest)} bytes needed); free space there, set "
                        "PREFECT_DR_STAGING_DIR to a larger folder, or pass --jobs 1 "
                        "(streams, stages nothing)") from None
            else:
                restore_stream.restore_dump(storage, dump, identities, restored_url,
                                            choice, progress, checks, role=as_role)
            on_step("checking the restored database")
            with pgc.connect(restored_url) as conn:
                semantic.semantic_checks(conn, manifest, export_doc, escrowed, env, checks)
            safety_id = None
            if plan.target_exists and not force_disconnect:
                pgswap.refuse_clients(admin, db)  # before the safety backup, not after it
            if plan.safety_backup:
                on_step(f"safety backup of the live database {db}")
                safety_settings = dataclasses.replace(
                    settings, values={**settings.values, "database_url": url})
                safety = backup_mod.run(safety_settings, storage, backup_mod.Request(
                    kind=Kind.FULL, labels={"safety": "pre-restore", "restore-of": plan.backup_id},
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


def next_steps(manifest: Manifest, result: Result) -> list[str]:
    """What the operator must do after a restore, in order."""
    steps = [
        "Restart every Prefect server and worker: the server caches the block encryption "
        "key, automations and concurrency leases for up to an hour.",
        "Set PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION=false (or delete "
        "~/.prefect/memo_store.toml) so block types are registered against the restored "
        "database.",
    ]
    if result.kept_db:
        steps.append(f"The previous database is kept as {result.kept_db}: "
                     "'prefect-dr rollback' brings it back; "
                     f"'prefect-dr rollback --drop {result.kept_db}' frees its space.")
    if manifest.block_key.get("escrowed"):
        steps.append("This backup's block key was escrowed: start Prefect with the same "
                     "PREFECT_SERVER_ENCRYPTION_KEY; if it is lost, 'prefect-dr block-key "
                     f"{manifest.backup_id} -o FILE' recovers it (docs/break-glass.md).")
    return steps


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

