"""Commands that change a live Prefect: restore, restore-config, rollback."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from prefect_dr import console, crypto, errors
from prefect_dr.cli import render
from prefect_dr.cli.application import command, state
from prefect_dr.cli.common import (
    AllowUnsignedFlag,
    AnyKindFlag,
    BackupArg,
    KindFlag,
    LatestFlag,
    YesFlag,
    confirm,
    json_mode,
    layout,
    select,
    settings,
    storage,
    trust,
    url_flag,
)
from prefect_dr.config import Settings
from prefect_dr.manifest import DONE, Manifest
from prefect_dr.storage.base import Storage

if TYPE_CHECKING:  # the CLI imports its use cases lazily, inside the commands
    from prefect_dr.backfill import TableState
    from prefect_dr.trust import Trust

logger = logging.getLogger("prefect_dr")


@command()
def restore(
    backup_id: BackupArg = None,
    latest: LatestFlag = False,
    kind: KindFlag = None,
    target_url: Annotated[str | None, typer.Option(
        "--target-url", help="Database to restore into (default: PREFECT_DR_DATABASE_URL); "
        "created when it does not exist.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    yes: YesFlag = False,
    force_disconnect: Annotated[bool, typer.Option(
        "--force-disconnect", help="Terminate clients connected to the live database at the "
        "swap (without it, connected clients refuse the restore before any work).")] = False,
    target_prefect_version: Annotated[str | None, typer.Option(
        "--target-prefect-version", help="The Prefect version that will serve the target "
        "(default: what PREFECT_API_URL reports for the configured database, else the target "
        "database's alembic revision); the schema gate decides with it.")] = None,
    allow_newer_schema: Annotated[bool, typer.Option(
        "--allow-newer-schema", help="Override the schema gate: restore a revision the "
        "target's Prefect is not known to run.")] = False,
    allow_history_loss: Annotated[bool, typer.Option(
        "--allow-history-loss", help="Restore a config-only backup over a database that holds "
        "run history (the history is deleted).")] = False,
    no_safety_backup: Annotated[bool, typer.Option(
        "--no-safety-backup", help="Skip the backup of the live database before the swap.")
    ] = False,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", help="pg_restore jobs, and history tables loaded at once; above 1 the "
        "decrypted dump is staged on local disk (PREFECT_DR_STAGING_DIR) first. 0: one per "
        "available CPU.")] = 0,
    tiered: Annotated[bool, typer.Option(
        "--tiered", help="Swap in everything but the bulk history (events, event_resources, "
        "log) first, so Prefect can serve at once; then load the history into the live "
        "database while it serves.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Finish the unfinished history backfill of an interrupted tiered "
        "restore (rerunning the same restore --tiered does the same).")] = False,
    allow_unsigned: AllowUnsignedFlag = False,
    owner: Annotated[str | None, typer.Option(
        "--owner", metavar="ROLE", help="The role that owns the restored database and runs "
        "the backup's SQL (pg_restore --role); default: the live database's owner, else the "
        "connecting role. Never a superuser.")] = None,
    allow_foreign_objects: Annotated[bool, typer.Option(
        "--allow-foreign-objects", help="Restore a dump whose table of contents holds "
        "executable objects a Prefect database does not (functions, triggers, rules, ...).")
    ] = False,
    keep_concurrency_slots: Annotated[bool, typer.Option(
        "--keep-concurrency-slots", help="Do not reset the concurrency slots the backup held "
        "(by default they are released before the swap: their leases did not survive the "
        "restart, so nothing else ever would).")] = False,
    in_flight: Annotated[str, typer.Option(
        "--in-flight", help="Runs RUNNING, PENDING or CANCELLING at the backup instant: "
        "'crash' (default) sets them to CRASHED before the swap, 'keep' leaves them.",
        metavar="crash|keep")] = "crash",
    flush_redis: Annotated[str | None, typer.Option(
        "--flush-redis", help="After the swap, delete Prefect's stale keys (leases, messaging, "
        "causal ordering, docket) in this Redis (redis://host:6379/0; the password in "
        "PREFECT_DR_REDIS_PASSWORD).", metavar="URL")] = None,
) -> None:
    """Restore a backup beside the live database, check it, swap it in, keep the old one.

    Every precondition (schema, history loss, signature, identity, connected clients, client
    programs, staging space) is checked first; --dry-run prints the same plan and exits with
    the code the restore would be refused with."""
    from prefect_dr import catalog, chain, pipeline, restore_plan
    from prefect_dr import restore as restore_mod

    url_flag(target_url, "--target-url")
    from prefect_dr import reconcile

    if in_flight not in reconcile.IN_FLIGHT_CHOICES:
        choices = ", ".join(reconcile.IN_FLIGHT_CHOICES)
        raise errors.UsageError(f"--in-flight must be one of {choices} (got {in_flight!r})")
    if jobs < 0:
        raise errors.UsageError("--jobs must be 0 (one per CPU) or more")
    if flush_redis:
        from prefect_dr import prefect_runtime

        prefect_runtime.check_url(flush_redis)
    if resume and (backup_id or latest or dry_run):
        raise errors.UsageError("--resume takes no backup id, --latest or --dry-run: it "
                                "finishes the backfill the target database records")
    current = settings()
    current.require("repository", "age_identity_file",
                    *(() if target_url else ("database_url",)))
    repo = storage()
    trusted_by = trust(repo, allow_unsigned)
    if resume:
        _resume(current, repo, target_url, None, trusted_by)
        return
    manifest = catalog.require_complete(select(backup_id, latest, kind, trusted_by=trusted_by),
                                        trust=trusted_by)
    state.notes.update(backup=manifest.backup_id, kind=manifest.kind)
    manifest = chain.resolve(repo, layout(), manifest, trusted_by)  # an increment: exit 13
    pending = restore_mod.unfinished(current, target_url)
    if restore_mod.resumes(pending, manifest.backup_id, dry_run=dry_run):
        logger.info("the history backfill of backup %s is unfinished: resuming it",
                    manifest.backup_id)
        _resume(current, repo, target_url, manifest, trusted_by, pending)
        return
    jobs = jobs or pipeline.available_cpus()
    plan = restore_plan.make_plan(current, manifest, restore_plan.Options(
        target_url=target_url, target_prefect_version=target_prefect_version,
        allow_newer_schema=allow_newer_schema,
        allow_history_loss=allow_history_loss, safety_backup=not no_safety_backup,
        force_disconnect=force_disconnect, jobs=jobs, staging_dir=current.staging_dir,
        dry_run=dry_run, tiered=tiered, trust=trusted_by, owner=owner,
        allow_foreign_objects=allow_foreign_objects, reconcile_policy=reconcile.Policy(
            concurrency=not keep_concurrency_slots, in_flight=in_flight),
        flush_redis=flush_redis), storage=repo, env=os.environ)
    refusal = plan.refusal
    if json_mode() and dry_run:  # one JSON document: the plan, and the refusal if any
        console.print_json({"ok": refusal is None, "dry_run": True, "plan": plan.to_dict(),
                            **({"error": refusal.detail, "exit_code": refusal.exit_code}
                               if refusal else {})})
    elif not json_mode():
        render.plan(plan)
    for warning in plan.warnings:
        logger.warning(warning)
    if refusal is not None and json_mode() and dry_run:
        console.error(refusal.detail)
        raise typer.Exit(refusal.exit_code)
    if refusal is not None:
        raise restore_plan.RestoreRefusedError(refusal)
    if dry_run:
        return
    if not json_mode() and not yes and sys.stdin.isatty():  # a person is about to be asked
        for text in render.before_restore(plan, manifest):
            console.paragraph(text)
    confirm(plan.target_db, yes, f"restore backup {plan.backup_id} over {plan.target}")
    started = time.monotonic()  # serving_after_s counts from the confirmation
    with console.transfer_progress(enabled=not json_mode(), primary="downloaded",
                                   total=manifest.payload_size or None) as listener:
        result = restore_mod.execute(current, repo, manifest, plan, target_url=target_url,
                                     force_disconnect=force_disconnect, env=os.environ,
                                     progress=pipeline.Progress(listener,
                                                                on_phase=listener.phase),
                                     on_step=lambda s: logger.info(s),
                                     jobs=jobs, staging_dir=current.staging_dir,
                                     started=started, on_serving=console.highlight)
    next_steps = restore_mod.next_steps(manifest, result)
    if json_mode():
        console.print_json({"ok": result.safety_error is None and result.flush_error is None,
                            "plan": plan.to_dict(),
                            "safety_backup_id": result.safety_backup_id,
                            "safety_backup_error": result.safety_error,
                            "kept_database": result.kept_db,
                            "serving_after_s": result.serving_after,
                            "reconciled": (result.reconciled.to_dict()
                                           if result.reconciled else None),
                            "missing_roles": result.missing_roles,
                            "redis_flushed": result.flushed,
                            "redis_flush_error": result.flush_error,
                            "backfilled": [dataclasses.asdict(b) for b in result.backfilled],
                            "next_steps": next_steps})
    else:
        console.line(f"restored backup {plan.backup_id} into {plan.target}"
                     + (f" (serving after {result.serving_after:.1f} s, history backfilled "
                        "after)" if plan.tiered and result.serving_after is not None else ""))
        if result.safety_backup_id:
            console.line(f"safety backup of the previous database: {result.safety_backup_id}")
        console.line("Next steps:")
        for i, step in enumerate(next_steps, 1):
            console.line(f"  {i}. {step}")
    if result.flush_error:
        raise errors.DRError(f"the restore is done, but {result.flush_error}; delete Prefect's "
                             "stale keys before starting it (see the next steps)",
                             exit_code=errors.PARTIAL)
    if result.safety_error:
        raise errors.DRError(f"the restore is done, but the safety backup of {result.kept_db} "
                             f"failed: {result.safety_error}; the database is kept (take a "
                             f"backup of it, or 'prefect-dr rollback')", exit_code=errors.PARTIAL)


def _resume(current: Settings, repo: Storage, target_url: str | None,
            manifest: Manifest | None, trusted_by: Trust,
            pending: list[TableState] | None = None) -> None:
    """Finish the target's unfinished history backfill (of ``manifest``'s backup, else of the
    one its state names) and report it."""
    from prefect_dr import catalog, chain, pipeline
    from prefect_dr import restore as restore_mod

    if pending is None:  # --resume; a rerun of the restore passes what it has read
        pending = restore_mod.unfinished(current, target_url)
    if not pending:
        if json_mode():
            console.print_json({"ok": True, "resumed": None, "backfilled": []})
        else:
            console.line("nothing to resume: the target holds no unfinished history backfill")
        return
    if manifest is None:
        manifest = catalog.require_complete(select(pending[0].backup_id, False, None),
                                            trust=trusted_by)
        manifest = chain.resolve(repo, layout(), manifest, trusted_by)
    state.notes.update(backup=manifest.backup_id, kind=manifest.kind)
    later = (*manifest.history, *manifest.runs(DONE))
    with console.transfer_progress(enabled=not json_mode(), primary="downloaded",
                                   total=sum(a.size for a in later) or None) as listener:
        loaded, checks = restore_mod.resume(current, repo, manifest, target_url=target_url,
                                            progress=pipeline.Progress(listener),
                                            on_step=lambda s: logger.info(s))
    if json_mode():
        console.print_json({"ok": True, "resumed": manifest.backup_id,
                            "backfilled": [dataclasses.asdict(b) for b in loaded],
                            "checks": [dataclasses.asdict(c) for c in checks]})
        return
    for check in checks:
        console.line(f"{check.artifact}: {check.detail}")
    console.line(f"history backfill of backup {manifest.backup_id} finished")


@command(name="restore-config")
def restore_config(
    backup_id: BackupArg = None,
    latest: Annotated[bool, typer.Option(
        "--latest", help="The newest complete backup of --kind (default: either kind; both "
        "carry the configuration export).")] = False,
    kind: AnyKindFlag = None,
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated: blocks,variables,work-pools,deployments,automations,"
        "concurrency-limits (default: all).")] = None,
    on_conflict: Annotated[str, typer.Option(
        "--on-conflict", help="skip (keep existing objects) or overwrite.")] = "skip",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff only.")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", help="Do not ask for confirmation (needed with --on-conflict overwrite "
        "when there is no terminal).")] = False,
    allow_unsigned: AllowUnsignedFlag = False,
    no_safety_backup: Annotated[bool, typer.Option(
        "--no-safety-backup", help="Skip the config-only backup of the target server's "
        "database (PREFECT_DR_DATABASE_URL) taken before anything changes: the way back.")
    ] = False,
) -> None:
    """Import a backup's configuration export into a live Prefect server through its API.

    Before changing anything it takes a config-only backup of the target server's database
    (labelled safety=pre-restore-config) and prints how to go back."""
    from prefect_dr import catalog
    from prefect_dr import config_import as ci
    from prefect_dr.config_import import undo

    if on_conflict not in ci.ON_CONFLICT:
        raise errors.UsageError(f"--on-conflict must be one of {', '.join(ci.ON_CONFLICT)}, "
                                f"not {on_conflict!r}")
    sections = ci.parse_only(only)
    current = settings()
    current.require("repository", "prefect_api_url", "age_identity_file")
    repo = storage()
    trusted_by = trust(repo, allow_unsigned)
    manifest = catalog.require_complete(select(backup_id, latest, kind, default_kind=None,
                                               trusted_by=trusted_by), trust=trusted_by)
    identities = crypto.load_identities(Path(current.age_identity_file))
    export_doc = ci.read_export(repo, manifest, identities)
    the_plan = ci.plan(current.prefect_api_url, export_doc, only=sections,
                       on_conflict=on_conflict)
    if not json_mode():
        console.table(f"restore-config of {manifest.backup_id} into Prefect "
                      f"{the_plan.target_version or ''} ({'dry run' if dry_run else on_conflict})",
                      [console.Column("section"), console.Column("kind", priority=3),
                       console.Column("name"), console.Column("action"),
                       console.Column("differences", 1, truncate=True),
                       console.Column("note", 2, truncate=True)],
                      [(i.section, i.kind, i.name, i.action, ", ".join(i.diff), i.note or "")
                       for i in the_plan.items])
        for warning in the_plan.warnings:
            logger.warning(warning)
    if dry_run:
        if json_mode():
            console.print_json({"ok": True, "dry_run": True, "plan": the_plan.to_dict()})
        else:
            console.info(", ".join(f"{k}: {v}" for k, v in the_plan.counts.items()))
        return
    safety = not no_safety_backup and undo.changes(the_plan)
    if safety:
        undo.check_target(current)  # refused before the confirmation, not after
    overwrites = sum(1 for i in the_plan.items if i.action == ci.OVERWRITE)
    if overwrites:
        confirm("overwrite", yes,
                f"overwrite {overwrites} existing objects of the Prefect server at "
                f"{current.prefect_api_url} with backup {manifest.backup_id}'s",
                noun="the word")
    safety_id = None
    if safety:
        logger.info("safety backup of the target's configuration before the import")
        safety_id = undo.safety_backup(current, repo, manifest, os.environ)
    result = ci.apply(current.prefect_api_url, export_doc, the_plan)
    way_back = undo.how_to_undo(safety_id, [i.name for i in the_plan.items
                                            if i.action == ci.CREATE]) if safety_id else None
    if json_mode():
        console.print_json({"ok": result.ok, "plan": the_plan.to_dict(),
                            "result": result.to_dict(), "safety_backup_id": safety_id,
                            "undo": way_back})
    else:
        console.info(", ".join(f"{k}: {v}" for k, v in result.counts.items()))
        if safety_id:
            console.line(f"safety backup of the target's configuration: {safety_id}")
            console.line(str(way_back))
    for failure in result.failures:
        console.error(f"{failure.section} {failure.name}: {failure.error}")
    if not result.ok:
        raise typer.Exit(errors.PARTIAL)


@command()
def rollback(
    yes: YesFlag = False,
    list_: Annotated[bool, typer.Option("--list", help="Show kept databases.")] = False,
    drop: Annotated[str | None, typer.Option("--drop", help="Drop one kept database.")] = None,
    target_url: Annotated[str | None, typer.Option(
        "--target-url", help="The restored database (default: PREFECT_DR_DATABASE_URL).")
    ] = None,
    force_disconnect: Annotated[bool, typer.Option(
        "--force-disconnect", help="Terminate clients still connected at the swap.")] = False,
) -> None:
    """Undo the last restore: swap the pre-restore database back (the restored one is kept)."""
    from prefect_dr import backfill_state
    from prefect_dr import restore as restore_mod

    url_flag(target_url, "--target-url")
    current = settings()
    states = [] if drop else restore_mod.unfinished(current, target_url)
    pending = backfill_state.describe(states) if states else ""
    if list_:
        rows = restore_mod.kept(current, target_url)
        if json_mode():
            console.print_json({"kept": [{"name": k.name, "kind": k.kind, "size": k.size,
                                          "age_s": int(k.age.total_seconds()),
                                          "comment": k.comment} for k in rows],
                                "unfinished_backfill": pending or None})
        else:
            render.kept(rows)
            if pending:
                console.line(f"the current database holds an {pending}: 'prefect-dr restore "
                             "--resume' finishes it")
        return
    if drop:
        confirm(drop, yes, f"drop kept database {drop}")
        restore_mod.drop_kept(current, drop, target_url=target_url)
        if json_mode():
            console.print_json({"ok": True, "dropped": drop})
        else:
            console.line(f"dropped {drop}")
        return
    chosen, aside = restore_mod.rollback_target(current, target_url)
    db = chosen.database
    if pending:
        logger.warning("%s holds an %s; rolling back sets it aside as it is", db, pending)
    confirm(db, yes, f"roll {db} back to {chosen.name} (the current one is kept as {aside})")
    brought, kept_as = restore_mod.rollback(current, target_url=target_url,
                                            force_disconnect=force_disconnect)
    if json_mode():
        console.print_json({"ok": True, "restored_from": brought, "kept_as": kept_as})
        return
    console.line(f"rolled back: {brought} is {db} again; the restored database is kept as "
                 f"{kept_as}")
    console.line("Next step: restart every Prefect server and worker.")
