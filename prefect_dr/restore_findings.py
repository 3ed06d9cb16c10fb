"""The preflight checks of a restore plan, one function each (restore_plan.make_plan runs them
in order, before anything is created, downloaded or uploaded): each returns a Finding that is
ok, a warning, or a refusal with its exit code (docs/exit-codes.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from prefect_dr import (
    archive_toc,
    crypto,
    interrupt,
    restore_stream,
)
from prefect_dr.config import Settings
from prefect_dr.errors import (
    FAILURE,
    KEY_ERROR,
    SETUP,
    USAGE,
    VERIFICATION_FAILED,
    ConfigError,
    DRError,
)
from prefect_dr.kinds import BACKFILL_UNFINISHED, LABEL_BACKFILL, Standing, standing
from prefect_dr.manifest import ARTIFACT_DUMP, Manifest
from prefect_dr.pg import swap as pgswap
from prefect_dr.pg import tools
from prefect_dr.storage.base import Storage
from prefect_dr.trust import Trust

if TYPE_CHECKING:
    from prefect_dr.restore_plan import Plan


@dataclass
class Finding:
    """One precondition. Not ok with an exit code: the restore is refused with that code; not
    ok without one: a warning the plan shows and the run logs."""

    name: str
    ok: bool
    detail: str
    exit_code: int | None = None

    @property
    def blocking(self) -> bool:
        """Whether this finding refuses the restore."""
        return not self.ok and self.exit_code is not None



def contents_finding(settings: Settings, storage: Storage, manifest: Manifest, plan: Plan,
                      allowed: bool) -> Finding:
    dump = manifest.artifact(ARTIFACT_DUMP)
    if dump is None or plan.restore_client is None:
        return Finding("contents", False, "no dump to read the contents of")
    try:
        identities = crypto.load_identities(Path(settings.age_identity_file))
        verdict = archive_toc.judge(archive_toc.read(
            storage, dump, identities, plan.restore_client.pg_restore.path))
    except DRError as exc:
        interrupt.raise_if_noted()
        return Finding("contents", False, exc.message, VERIFICATION_FAILED)
    plan.foreign_objects = [str(e) for e in verdict.foreign]
    if not verdict.foreign:
        return Finding("contents", True, f"{verdict.entries} entries, all of a Prefect "
                                         "database's kinds")
    shown = ", ".join(str(e) for e in (verdict.executable or verdict.foreign)[:5])
    more = len(verdict.executable or verdict.foreign) - 5
    listed = shown + (f" and {more} more" if more > 0 else "")
    if verdict.executable and not allowed:
        return Finding("contents", False, f"the dump holds {len(verdict.executable)} "
                       f"executable object(s) a Prefect database does not: {listed}; "
                       "refusing (inspect it; --allow-foreign-objects restores it anyway)",
                       VERIFICATION_FAILED)
    return Finding("contents", False, f"the dump holds {len(verdict.foreign)} object(s) a "
                   f"Prefect database does not: {listed}"
                   + (" (allowed by --allow-foreign-objects)" if verdict.executable else ""))


def role_finding(admin: psycopg.Connection, db: str | None, owner: str | None
                  ) -> tuple[Finding, str]:
    """Who runs the archive's SQL: ``owner``, else the live database's owner, else the
    connecting role; refused (exit 2) when that is a superuser or does not exist."""
    me = str(admin.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    run_as = owner or (pgswap.owner(admin, db) if db else me)
    row = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                        (run_as,)).fetchone()
    if row is None:
        return Finding("role", False, f"--owner {run_as}: no such role", USAGE), run_as
    if row[0]:
        where = f"{db} is owned by superuser {run_as}" if db and not owner else \
            f"the archive would run as superuser {run_as}"
        return Finding("role", False, f"{where}: refusing to run a backup's SQL as a "
                       "superuser; pass --owner ROLE (a role without superuser, e.g. the one "
                       "Prefect connects as)" + (f" or ALTER DATABASE {db} OWNER TO it"
                                                 if db else ""), USAGE), run_as
    how = "as the connecting role" if run_as == me else "through pg_restore --role"
    return Finding("role", True, f"the archive runs as {run_as} (no superuser), {how}; "
                   "it owns the restored database"), run_as


def history_finding(plan: Plan, allowed: bool) -> Finding:
    if not plan.history_loss:
        return Finding("history", True, "no run history would be lost")
    lost = ", ".join(f"{t} {n} rows" for t, n in plan.history_loss.items())
    if allowed:
        return Finding("history", False,
                       f"restoring config-only backup {plan.backup_id} deletes the run history "
                       f"of {plan.target_db} ({lost}); allowed by --allow-history-loss")
    return Finding("history", False,
                   f"refusing to restore config-only backup {plan.backup_id} over "
                   f"{plan.target_db}: its run history would be lost ({lost}); restore a full "
                   "backup (--kind full) or pass --allow-history-loss", USAGE)


def standing_finding(manifest: Manifest) -> Finding:
    """What the backup stands for (I2): a partial or a safety backup is said, never hidden."""
    role = standing(manifest.labels)
    if role == Standing.PARTIAL:
        return Finding("standing", False,
                       f"backup {manifest.backup_id} was taken during an unfinished history "
                       f"backfill ({LABEL_BACKFILL}={BACKFILL_UNFINISHED}): it lacks part of "
                       "the run history; --latest names the newest whole backup")
    if role == Standing.SAFETY:
        return Finding("standing", True,
                       f"backup {manifest.backup_id} is the safety backup of "
                       f"{manifest.labels.get('database', 'a database')} taken when backup "
                       f"{manifest.labels.get('restore-of', '?')} was restored over it")
    return Finding("standing", True, f"backup {manifest.backup_id} is a whole backup")


def signature_finding(trusted_by: Trust | None, manifest: Manifest) -> Finding:
    if trusted_by is None:
        return Finding("signature", False, "no verify keys given to the plan: refusing",
                       VERIFICATION_FAILED)
    try:
        detail = trusted_by.check_manifest(manifest)
    except DRError as exc:
        interrupt.raise_if_noted()
        return Finding("signature", False, exc.message, VERIFICATION_FAILED)
    return Finding("signature", "accepted by --allow-unsigned" not in detail, detail)


def identity_finding(settings: Settings, manifest: Manifest) -> Finding:
    try:
        settings.require("age_identity_file")
        identities = crypto.load_identities(Path(settings.age_identity_file))
    except ConfigError as exc:
        interrupt.raise_if_noted()
        return Finding("identity", False, exc.message, USAGE)
    except DRError as exc:
        interrupt.raise_if_noted()
        return Finding("identity", False, exc.message, KEY_ERROR)
    mine = {crypto.fingerprint(crypto.recipient_of(i)) for i in identities}
    wanted = {r for a in manifest.artifacts for r in a.recipients}
    if wanted and not mine & wanted:
        return Finding("identity", False,
                       f"the identity {settings.age_identity_file} matches none of backup "
                       f"{manifest.backup_id}'s recipients ({', '.join(sorted(wanted))}); "
                       "use the identity of one of them", KEY_ERROR)
    return Finding("identity", True, f"{settings.age_identity_file} decrypts this backup")


def clients_finding(db: str, clients: list[pgswap.Session], force: bool,
                     dry_run: bool) -> Finding:
    """Connected clients refuse a restore; a dry run, made while Prefect still runs (the
    runbook stops it after looking at the plan), says so as a warning."""
    if not clients:
        return Finding("clients", True, f"no client is connected to {db}")
    if dry_run and not force:
        return Finding("clients", False, pgswap.describe_clients(db, clients).replace(
            "; stop Prefect", "; a restore now would be refused: stop Prefect"))
    if force:
        return Finding("clients", False, "--force-disconnect: " + pgswap.describe_clients(
            db, clients).split("; stop Prefect")[0] + " (they are disconnected at the swap)")
    return Finding("clients", False, pgswap.describe_clients(db, clients), FAILURE)


def restore_client_finding(settings: Settings, manifest: Manifest, plan: Plan,
                            server_major: int, server_version: str) -> Finding:
    try:
        plan.restore_client = restore_stream.choose(settings, manifest, server_major,
                                                    server_version)
    except DRError as exc:
        interrupt.raise_if_noted()
        return Finding("pg_restore", False, exc.message, SETUP)
    return Finding("pg_restore", True, f"{plan.restore_client.describe()} into PostgreSQL "
                                       f"{server_version}")


def dump_client_finding(settings: Settings, plan: Plan, server_major: int,
                         server_version: str) -> Finding:
    try:
        plan.dump_client = tools.pick_dump(settings.pg_bin_dir, server_major, server_version)
    except DRError as exc:
        interrupt.raise_if_noted()
        return Finding("pg_dump", False, f"safety backup impossible: {exc.message}; or pass "
                                         "--no-safety-backup", SETUP)
    return Finding("pg_dump", True, f"{plan.dump_client.describe()} can take the safety backup")
