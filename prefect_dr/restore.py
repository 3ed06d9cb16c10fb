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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from prefect_dr import (
    backfill,
    backfill_state,
    crypto,
    interrupt,
    pins,
    pipeline,
    prefect_runtime,
    reconcile,
    restore_stream,
    semantic,
)
from prefect_dr import backup as backup_mod
from prefect_dr.checks import Check, Checks, Report
from prefect_dr.config import Settings
from prefect_dr.errors import (
    DRError,
    Interrupted,
    LockHeldError,
    VerificationError,
)
from prefect_dr.kinds import LABEL_SAFETY, Kind
from prefect_dr.layout import Layout
from prefect_dr.manifest import ARTIFACT_DUMP, Manifest
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
from prefect_dr.units import human_bytes

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
    #: seconds from the start until the target held phase 1 under its final name
    serving_after: float | None = None
    backfilled: list[backfill_state.Loaded] = dataclasses.field(default_factory=list)
    #: why the safety backup of the kept database failed (the restore itself succeeded)
    safety_error: str | None = None
    #: what the reconciliation changed in the restored database before the swap
    reconciled: reconcile.Counts | None = None
    #: roles the backup granted to that the target server lacks (their grants not restored)
    missing_roles: list[str] = dataclasses.field(default_factory=list)
    #: --flush-redis: keys deleted per family, or why it failed (the restore itself succeeded)
    flushed: dict[str, int] | None = None
    flush_error: str | None = None


def _load_identities(settings: Settings) -> list[crypto.Identity]:
    settings.require("age_identity_file")
    return crypto.load_identities(Path(settings.age_identity_file))


def _drop_leftovers(admin: psycopg.Connection, db: str) -> list[str]:
    """Drop the half-restored databases of dead runs on this server (restore lock held)."""
    dropped = []
    for name in pgswap.half_restored(admin, db):
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
            staging_dir: str | None = None, started: float | None = None,
            on_serving: Callable[[str], None] = lambda _: None) -> Result:
    """Carry out ``plan``. Before the swap, any failure leaves the live database untouched and
    drops the half-restored one; a failure inside the swap is undone.

    ``on_serving`` is told, once, the moment the restored database is live (the CLI shows it
    prominently: in a tiered restore that is long before the command ends).

    Raises RestoreRefusedError (a preflight finding of ``plan`` refuses it), LockHeldError,
    VerificationError, ConnectedClientsError, DatabaseError, StorageError, CryptoKeyError,
    Interrupted.
    """
    if plan.refusal is not None:
        raise RestoreRefusedError(plan.refusal)
    # serving_after counts from ``started``: the operator's confirmation (docs/operations.md)
    started = time.monotonic() if started is None else started
    identities = _load_identities(settings)
    url, db, admin_url = target_of(settings, target_url)
    admin = pgc.connect(admin_url)
    try:
        _take_lock(admin)
        _drop_leftovers(admin, db)
        layout, pin = Layout(settings.layout_prefix), pins.backfill_name(url)
        pins.remove(storage, layout, pin, except_for=plan.backup_id)  # stale: none unfinished
        if plan.tiered and manifest.needs_backfill:  # restore --resume needs the backup: I1
            pins.add(storage, layout, plan.backup_id, pin,
                     f"the history backfill of restore --tiered into {pgc.describe(url)}")
        # The archive runs as the role the plan named (never a superuser: its "role" check).
        role = plan.restore_role or (pgswap.owner(admin, db) if plan.target_exists else None)
        me = str(admin.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(plan.restore_db), sql.Identifier(role or me)))
        pgswap.comment(admin, plan.restore_db,
                       f"{pgswap.RESTORING_NOTE} from backup {plan.backup_id} into {db}; "
                       "left only by a run that died")
        report = Report(plan.backup_id, dt.datetime.now(dt.UTC).isoformat())
        checks = Checks(report)
        restored_url = with_database(url, plan.restore_db)
        try:
            on_step(f"restoring backup {plan.backup_id} into {plan.restore_db}")
            export_doc, escrowed = restore_stream.read_small_artifacts(
                storage, manifest, identities, checks)
            dump = manifest.artifact(ARTIFACT_DUMP)
            if dump is None:
                raise VerificationError(f"backup {plan.backup_id} has no dump artifact")
            as_role = role if role and role != me else None
            folder = staging_dir or tempfile.gettempdir()
            staged, how = staging_choice(manifest, jobs, folder, settings.staging_limit)
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
                        f"({human_bytes(staging_need(manifest))} needed); free space there, set "
                        "PREFECT_DR_STAGING_DIR to a larger folder, or pass --jobs 1 "
                        "(streams, stages nothing)") from None
            else:
                restore_stream.restore_dump(storage, dump, identities, restored_url,
                                            choice, progress, checks, role=as_role)
            deferred: frozenset[str] = frozenset()
            if manifest.needs_backfill:
                with pgc.connect(restored_url) as conn:
                    backfill.prepare(conn, manifest, as_role, storage=storage,
                                     identities=identities, progress=progress)
                if plan.tiered:
                    deferred = manifest.backfill_tables
                else:  # plain: the history goes in before the swap, by the same code
                    backfill.run(restored_url, storage, manifest, identities, role=as_role,
                                 progress=progress, on_step=on_step, jobs=jobs)
            on_step("checking the restored database")
            with pgc.connect(restored_url) as conn:
                semantic.semantic_checks(conn, manifest, export_doc, escrowed, env, checks,
                                         deferred=deferred)
                on_step("reconciling Prefect's runtime state (in-flight runs, concurrency "
                        "slots)")
                reconciled = reconcile.checked(conn, manifest, plan.reconcile_policy, checks)
                missing_roles = semantic.restore_privileges(conn, manifest, checks, as_role)
            if missing_roles:
                log.warning("grants of backup %s to roles missing on this server are not "
                            "restored: %s (create them and grant again)", plan.backup_id,
                            ", ".join(missing_roles))
            if plan.target_exists and not force_disconnect:
                pgswap.refuse_clients(admin, db)
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
                pgswap.settled(admin, plan.restore_db, ours=True)  # our just-closed sessions
                with admin.transaction():
                    pgswap.rename(admin, plan.restore_db, db)
                    pgswap.comment(admin, db, restored_note)
        except BaseException:
            if pgswap.exists(admin, plan.restore_db):
                drop_database(admin, plan.restore_db)
            if not interrupt.pending():  # a stop leaves the pin: the next run cleans it
                pins.remove(storage, layout, pin)
            raise
        # From here the restored database is live: nothing below may drop it. The restore
        # lock stays held through phase 2 and the safety backup.
        result = Result(plan, report.checks, None, plan.aside_db,
                        serving_after=round(time.monotonic() - started, 3),
                        reconciled=reconciled, missing_roles=missing_roles)
        if plan.flush_redis:  # Prefect is stopped: its stale keys go before it starts
            on_step(f"deleting Prefect's stale keys in Redis at "
                    f"{prefect_runtime.describe(plan.flush_redis)}")
            try:
                result.flushed = prefect_runtime.flush(plan.flush_redis,
                                                       plan.flush_families, env)
            except DRError as exc:
                interrupt.raise_if_noted()
                log.error("%s", exc.message)
                result.flush_error = exc.message
        on_step(f"{db} holds backup {plan.backup_id}" + (
            " (phase 1): Prefect can be started now; the history follows" if deferred else ""))
        on_serving(f"Prefect can be started now: {db} holds backup {plan.backup_id}" + (
            " (its run history is still loading; runs show as it arrives)" if deferred
            else ""))
        _after_swap(settings, storage, manifest, plan, result, checks, url, identities,
                    as_role, env, progress, on_step, deferred, jobs)
        return result
    except psycopg.Error as exc:
        raise DRError(f"restore failed: {pgc.first_line(exc)}") from None
    finally:
        admin.close()


def _after_swap(settings: Settings, storage: Storage, manifest: Manifest, plan: Plan,
                result: Result, checks: Checks, url: str,
                identities: list[crypto.Identity], role: str | None,
                env: Mapping[str, str], progress: pipeline.Progress | None,
                on_step: Callable[[str], None], deferred: frozenset[str], jobs: int) -> None:
    """Phase 2 (tiered), then the safety backup of the kept database, whatever phase 2's
    outcome short of a stop signal. Raises phase 2's error, pointing at ``--resume``."""
    def safety() -> None:
        if plan.safety_backup and plan.aside_db:
            result.safety_backup_id, result.safety_error = _safety_backup(
                settings, storage, plan, with_database(url, plan.aside_db), env, on_step,
                progress)

    try:
        if deferred:
            result.backfilled = finish_backfill(url, storage, Layout(settings.layout_prefix),
                                                manifest, identities, checks,
                                                role=role, progress=progress,
                                                on_step=on_step, jobs=jobs)
    except BaseException as exc:
        # a stop signal (even one a library wrapped as its own error) skips the safety backup
        stopped = interrupt.pending() or exc
        if not isinstance(stopped, Interrupted | KeyboardInterrupt):
            safety()
        if isinstance(stopped, DRError) and not isinstance(stopped, Interrupted):
            raise DRError(f"{stopped.message}; {plan.target_db} serves backup "
                          f"{plan.backup_id} without all of its history: 'prefect-dr restore "
                          "--resume' finishes the backfill",
                          exit_code=stopped.exit_code) from None
        raise stopped from None
    safety()


def finish_backfill(url: str, storage: Storage, layout: Layout, manifest: Manifest,
                    identities: list[crypto.Identity], checks: Checks, *,
                    role: str | None, progress: pipeline.Progress | None,
                    on_step: Callable[[str], None], jobs: int = 1
                    ) -> list[backfill_state.Loaded]:
    """Phase 2 into the live database at ``url`` (``jobs`` tables at a time), then each
    backfilled table's rows checked:
    the backup's (exactly the manifest's count, checked as they load) plus those Prefect wrote
    since phase 1; then the backup's pin is removed. Raises what :func:`backfill.run` raises,
    VerificationError."""
    loaded = backfill.run(url, storage, manifest, identities, role=role, progress=progress,
                          on_step=on_step, jobs=jobs, strict=False)
    pins.remove(storage, layout, pins.backfill_name(url))  # the backup is no longer needed
    with pgc.connect(url) as conn:
        for item in loaded:
            with checks.run("backfill", item.table) as out:
                have = pgc.count_rows(conn, item.table)
                want = int(manifest.row_counts.get(item.table, {}).get("rows", item.rows))
                # Prefect may delete runs while they load (their count is checked as they
                # load); history rows it only adds
                runs = item.table in manifest.run_tables
                if item.rows != want or (have < want and not runs):
                    raise VerificationError(f"table {item.table}: {have} rows after the "
                                            f"backfill, the manifest says {want}")
                out["detail"] = (f"{item.rows} rows from the backup (manifest: {want}), " + (
                    f"{item.skipped} kept out (written by Prefect meanwhile), " if runs else
                    f"{item.merged} written meanwhile, ") + f"{have} now")
    return loaded


def _safety_backup(settings: Settings, storage: Storage, plan: Plan, kept_url: str,
                   env: Mapping[str, str], on_step: Callable[[str], None],
                   progress: pipeline.Progress | None = None
                   ) -> tuple[str | None, str | None]:
    """Back up the database the swap kept aside (nobody uses it, so nothing waits for it),
    as a new phase of ``progress`` (its bytes dumped, no total: the dump's size is known only
    at its end). Returns (backup id, None) or (None, why it failed): the restore itself is
    done."""
    on_step(f"safety backup of the previous database, kept as {plan.aside_db}")
    if progress is not None:
        progress.begin(f"safety backup of {plan.aside_db}", "dumped")
    safety_settings = dataclasses.replace(
        settings, values={**settings.values, "database_url": kept_url})
    try:
        safety = backup_mod.run(safety_settings, storage, backup_mod.Request(
            kind=Kind.FULL, labels={LABEL_SAFETY: "pre-restore", "restore-of": plan.backup_id,
                                    "database": plan.target_db},
            allow_undecryptable_blocks=True), env=env, progress=progress)
    except DRError as exc:
        interrupt.raise_if_noted()
        if isinstance(exc, Interrupted):
            raise
        log.error("the safety backup of %s failed: %s", plan.aside_db, exc.message)
        return None, exc.message
    return safety.backup_id, None


def unfinished(settings: Settings, target_url: str | None = None
               ) -> list[backfill_state.TableState]:
    """The unfinished history backfill in the target database ([] when none, or no target).
    Raises DatabaseError."""
    url, db, admin_url = target_of(settings, target_url)
    with pgc.connect(admin_url) as admin:
        if not pgswap.exists(admin, db):
            return []
    with pgc.connect(url) as conn:
        return backfill_state.state_of(conn)


def resume(settings: Settings, storage: Storage, manifest: Manifest, *,
           target_url: str | None, progress: pipeline.Progress | None = None,
           on_step: Callable[[str], None] = lambda _: None) -> tuple[list[backfill_state.Loaded],
                                                                     list[Check]]:
    """Finish the unfinished history backfill of ``manifest``'s backup in the live target,
    under the restore lock. Returns what was loaded and the checks of the counts.
    Raises BackfillError (none, or of another backup), LockHeldError, and what
    :func:`finish_backfill` raises."""
    identities = _load_identities(settings)
    url, db, admin_url = target_of(settings, target_url)
    try:
        with pgc.connect(admin_url) as admin:
            _take_lock(admin)
            role = pgswap.owner(admin, db)
            me = str(admin.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
            checks = Checks(Report(manifest.backup_id, dt.datetime.now(dt.UTC).isoformat()))
            loaded = finish_backfill(url, storage, Layout(settings.layout_prefix), manifest,
                                     identities, checks,
                                     role=role if role != me else None, progress=progress,
                                     on_step=on_step, jobs=pipeline.available_cpus())
            return loaded, checks.report.checks
    except psycopg.Error as exc:
        raise DRError(f"resume failed: {pgc.first_line(exc)}") from None


def next_steps(manifest: Manifest, result: Result) -> list[str]:
    """What the operator must do after a restore, in order."""
    steps = [
        "Restart every Prefect server and worker: the server caches the block encryption "
        "key, automations and concurrency leases for up to an hour.",
        "Set PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION=false (or delete "
        "~/.prefect/memo_store.toml) so block types are registered against the restored "
        "database.",
    ]
    if result.reconciled is not None:
        steps.append("Reconciled before the swap: " + "; ".join(reconcile.describe(
            result.reconciled, result.plan.reconcile_policy, planned=False)) + ".")
    if result.flushed is not None:
        steps.append("Deleted Prefect's stale keys in Redis: " + ", ".join(
            f"{name} {n}" for name, n in result.flushed.items()) + ".")
    elif result.flush_error:
        steps.append(f"{result.flush_error}: delete them before starting Prefect — "
                     f"{result.plan.redis_notes[0]}.")
    elif result.plan.redis_used:
        steps.append(result.plan.redis_notes[0] + ".")
    if result.missing_roles:
        steps.append("Grants to roles this server lacks were not restored: "
                     f"{', '.join(result.missing_roles)}; create them, then grant again "
                     f"('prefect-dr show {manifest.backup_id} --json' lists the grants under "
                     "'privileges').")
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
    kind: str  # "pre_restore" | "rolled_back" | "restore" (half-restored, of a dead run)
    stamp: str
    size: int
    comment: str

    @property
    def age(self) -> dt.timedelta:
        """Time since it was set aside."""
        made = dt.datetime.strptime(self.stamp, STAMP_FORMAT).replace(tzinfo=dt.UTC)
        return dt.datetime.now(dt.UTC) - made

    @property
    def database(self) -> str:
        """The database it was kept beside (its name before ``_<kind>_<stamp>``)."""
        return self.name[:-len(f"_{self.kind}_{self.stamp}")]


def resumes(pending: list[backfill_state.TableState], backup_id: str, *,
            dry_run: bool = False) -> bool:
    """Whether a restore of ``backup_id`` finishes the target's unfinished history backfill
    (``pending``) instead of restoring again: the backfill is that backup's, and the run is no
    dry run."""
    return bool(pending) and pending[0].backup_id == backup_id and not dry_run


def kept(settings: Settings, target_url: str | None = None) -> list[Kept]:
    """Databases kept beside the target, newest first; kind ``restore``: half-restored, left by
    a restore that was killed (the next restore or rollback drops it; so does ``--drop``)."""
    _, db, admin_url = target_of(settings, target_url)
    pattern = f"^{re.escape(db)}_(pre_restore|rolled_back|restore)_(\\d{{14}})$"
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
            _drop_leftovers(admin, db)
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

