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

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect_dr import (
    __version__,
    backfill,
    chain,
    crypto,
    errors,
    pipeline,
    reconcile,
    restore_stream,
    semantic,
    signing,
    smoke,
)
from prefect_dr import prefect_schema as ps
from prefect_dr.catalog import (
    COMPLETE,
    BackupEntry,
    list_backups,
    require_complete,
    select_one,
)
from prefect_dr.checks import Checks, Report
from prefect_dr.config import Settings
from prefect_dr.errors import (
    DatabaseError,
    DRError,
    Interrupted,
    NotFoundError,
    SetupError,
    StorageError,
)
from prefect_dr.kinds import Result, Standing, standing
from prefect_dr.layout import Layout, new_id
from prefect_dr.manifest import ARTIFACT_DUMP, Manifest
from prefect_dr.pg.scratch import ScratchDatabase
from prefect_dr.pg.tools import RestoreChoice
from prefect_dr.storage.base import Storage
from prefect_dr.trust import Trust, for_settings

RECORD_FORMAT = "prefect-dr-verification"
log = logging.getLogger(__name__)
#: The settings verify cannot start without, all reported at once when missing (a database
#: for the scratch restore too, unless --scratch-url names one).
NEEDS = ("repository", "age_identity_file")


@dataclass
class VerificationReport(Report):
    """Everything one verification of one backup found: its checks, and the scratch database
    the dump was restored into."""

    scratch_database: str | None = None
    #: whole, partial or safety (kinds.Standing): a verified partial backup is still partial
    standing: str = Standing.WHOLE

    @property
    def result(self) -> Result:
        """``passed`` when every check passed, else ``failed``."""
        return Result.PASSED if self.ok else Result.FAILED

    def to_record(self) -> dict[str, Any]:
        """The verification record stored in the bucket (and printed by --json)."""
        failed = self.failed_check
        return {
            "format": RECORD_FORMAT, "format_version": 1, "backup_id": self.backup_id,
            "tool_version": __version__, "started_at": self.started_at,
            "finished_at": self.finished_at, "result": self.result.value,
            "failed_check": (f"{failed.name}" + (f" ({failed.artifact})" if failed.artifact
                                                 else "")) if failed else None,
            "scratch_database": self.scratch_database, "standing": self.standing,
            "checks": [asdict(c) for c in self.checks],
        }


def exit_code(reports: list[VerificationReport]) -> int:
    """The exit code of a verify run that produced ``reports`` (docs/exit-codes.md): 0 when
    every backup passed; 12 when a key could not decrypt one (the key is at fault, not the
    backup); else 13."""
    if all(r.ok for r in reports):
        return errors.OK
    if any(r.key_error for r in reports):
        return errors.KEY_ERROR
    return errors.VERIFICATION_FAILED


def recovered(previous: Mapping[str, Any] | None, reports: list[VerificationReport]) -> bool:
    """Whether this run passed where the ``previous`` verification record (of the same kind)
    had failed: what a notification announces as a recovery."""
    return (all(r.ok for r in reports) and previous is not None
            and previous.get("result") == Result.FAILED)


@dataclass(frozen=True)
class Options:
    """How to verify."""

    scratch_url: str | None = None
    keep_scratch: bool = False
    prefect_smoke: bool = False
    write_record: bool = True
    #: the Python whose Prefect serves the smoke test (default: the one beside prefect-dr)
    prefect_python: str | None = None


def select(storage: Storage, layout: Layout, *, backup_id: str | None = None,
           latest: bool = False, all_: bool = False, since: dt.timedelta | None = None,
           kind: str | None = None, now: dt.datetime | None = None,
           trust: Trust | None = None) -> list[BackupEntry]:
    """The complete backups a verify run covers: ``backup_id``; the newest complete backup of
    ``kind`` (full by default) with ``latest`` or no selector; every complete one (of ``kind``
    when given) with ``all_`` or ``since``. Raises NotFoundError when there are none,
    UsageError for a backup id of another kind. ``trust`` judges verification records; the
    manifests' signatures are each verification's first check (``verify_one``)."""
    if backup_id or latest or not (all_ or since):
        entry = select_one(storage, layout, backup_id, latest=latest or not backup_id,
                           kind=kind, verify_key=trust)
        require_complete(entry, trust=None)  # the signature is verify's first check
        return [entry]
    entries = [e for e in list_backups(storage, layout, verify_key=trust)
               if e.status == COMPLETE and (kind is None or e.kind == kind)]
    if since is not None:
        cutoff = (now or dt.datetime.now(dt.UTC)) - since
        entries = [e for e in entries
                   if e.started_at and dt.datetime.fromisoformat(e.started_at) >= cutoff]
    if not entries:
        raise NotFoundError("no complete backup matches (see 'prefect-dr list')")
    return entries


def verify_one(settings: Settings, storage: Storage, manifest: Manifest, options: Options, *,
               env: Mapping[str, str], trust: Trust | None = None,
               progress: pipeline.Progress | None = None,
               clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
               ) -> VerificationReport:
    """Verify one backup; returns the report (never raises for a failed check). The first
    check is the manifest's signature and binding by ``trust`` (None: the settings' verify
    keys and repository, unsigned refused), before anything is downloaded.

    Writes the verification record unless ``options.write_record`` is off or the run failed on
    a key error. Raises ConfigError when settings are missing, StorageError when the store is
    unreachable or the record cannot be written, SetupError (before any work, or when a client
    turns out unable) when this machine's PostgreSQL clients or Prefect cannot do the job: a
    fault of the set-up writes no record.
    """
    settings.require("age_identity_file")
    if not (options.scratch_url or settings.database_url):
        settings.require("database_url")
    # Versions first: server, clients and archive (and Prefect for the smoke test).
    choice = restore_stream.choose_for(settings, manifest,
                                       options.scratch_url or settings.database_url)
    if options.prefect_smoke:
        smoke.require_runs(manifest, options.prefect_python)
    report = VerificationReport(manifest.backup_id, clock().isoformat(),
                                standing=standing(manifest.labels))
    checks = Checks(report)
    try:
        _verify(settings, storage, manifest, options, env, progress, report, checks, choice,
                trust or for_settings(settings, storage))
    except (Interrupted, StorageError, SetupError):
        raise  # an interrupted run, an unreachable store or a set-up fault proves nothing
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
            env: Mapping[str, str], progress: pipeline.Progress | None,
            report: VerificationReport, checks: Checks, choice: RestoreChoice,
            trusted_by: Trust) -> None:
    with checks.run("manifest signature") as out:
        out["detail"] = trusted_by.check_manifest(manifest)
    if manifest.increment:  # every link complete and trusted, before anything is loaded
        with checks.run("chain") as out:
            manifest = chain.resolve(storage, Layout(settings.layout_prefix), manifest,
                                     trusted_by)
            out["detail"] = " <- ".join(chain.chain_ids(manifest))
    with checks.run("identity"):
        identities = crypto.load_identities(Path(settings.age_identity_file))

    export_doc, escrowed = restore_stream.read_small_artifacts(storage, manifest, identities,
                                                               checks)
    dump_artifact = manifest.artifact(ARTIFACT_DUMP)
    if dump_artifact is None:
        checks.fail("integrity", "the manifest lists no dump artifact", ARTIFACT_DUMP)
        return
    admin_url = options.scratch_url or settings.database_url
    with ScratchDatabase(admin_url, keep=options.keep_scratch) as scratch:
        report.scratch_database = scratch.name
        restore_stream.restore_dump(storage, dump_artifact, identities, scratch.url, choice,
                                    progress, checks)
        if manifest.needs_backfill:  # format 2: the history tables' rows, by a restore's own code
            with checks.run("restore", "history") as out:
                with scratch.connect() as conn:
                    backfill.prepare(conn, manifest, None, storage=storage,
                                     identities=identities, progress=progress)
                loaded = backfill.run(scratch.url, storage, manifest, identities,
                                      progress=progress, jobs=pipeline.available_cpus())
                out["detail"] = ", ".join(f"{item.table} {item.rows} rows" for item in loaded)
        with scratch.connect() as conn:
            semantic.semantic_checks(conn, manifest, export_doc, escrowed, env, checks)
            # what a restore does before its swap, proven on every verified backup
            reconcile.checked(conn, manifest, reconcile.Policy(), checks)
            semantic.restore_privileges(conn, manifest, checks)
        if options.prefect_smoke:
            given = ps.configured_key(env)
            with checks.run("prefect smoke") as out:
                out["detail"] = smoke.check(scratch.url, manifest, export_doc,
                                            block_key=escrowed or (given.key if given else None),
                                            python=options.prefect_python)


def _write_record(settings: Settings, storage: Storage, report: VerificationReport,
                  clock: Callable[[], dt.datetime]) -> None:
    record = {**report.to_record(), "repository": str(settings.repository_url)}  # where (I6)
    if settings.signing_key_file:
        record = signing.sign_record(record, signing.load_private(
            Path(settings.signing_key_file)))
    else:
        log.warning("verification record of %s written unsigned (no PREFECT_DR_SIGNING_KEY_"
                    "FILE): readers count it as unsigned", report.backup_id)
    stamp = new_id(clock())
    key = Layout(settings.layout_prefix).verification(report.backup_id, stamp)
    storage.put_bytes(key, (json.dumps(record, indent=2) + "\n").encode(), "application/json")
