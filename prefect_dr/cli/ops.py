"""Commands that keep the repository healthy: prune, status."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

import typer

from prefect_dr import console, errors
from prefect_dr.cli import render
from prefect_dr.cli.application import command, state
from prefect_dr.cli.common import (
    OutputFlag,
    WideFlag,
    json_mode,
    layout,
    settings,
    storage,
    verify_key,
    wide_wanted,
)
from prefect_dr.kinds import DEFAULT_LATEST_KIND, Kind

logger = logging.getLogger("prefect_dr")


@command()
def prune(
    keep_last: Annotated[int | None, typer.Option("--keep-last", help="Keep the N newest.")
                         ] = None,
    keep_hourly: Annotated[int | None, typer.Option(
        "--keep-hourly", help="Keep the newest backup of each of the last N hours.")] = None,
    keep_daily: Annotated[int | None, typer.Option(
        "--keep-daily", help="Keep the newest backup of each of the last N days.")] = None,
    keep_weekly: Annotated[int | None, typer.Option(
        "--keep-weekly", help="Keep the newest backup of each of the last N weeks.")] = None,
    keep_monthly: Annotated[int | None, typer.Option(
        "--keep-monthly", help="Keep the newest backup of each of the last N months.")] = None,
    keep_yearly: Annotated[int | None, typer.Option(
        "--keep-yearly", help="Keep the newest backup of each of the last N years.")] = None,
    keep_within: Annotated[str | None, typer.Option(
        "--keep-within", help="Keep all within DURATION of the newest backup.")] = None,
    keep_label: Annotated[list[str] | None, typer.Option(
        "--keep-label", help="Keep backups with this label (KEY or KEY=VALUE).")] = None,
    min_verified: Annotated[int | None, typer.Option(
        "--min-verified", help="Never remove the N newest verified backups (default 1).")
    ] = None,
    grace: Annotated[str | None, typer.Option(
        "--grace", help="Failed/incomplete backups and uploads younger than this are kept "
        "(default 24h).")] = None,
    keep_safety_within: Annotated[str | None, typer.Option(
        "--keep-safety-within", help="Keep a restore's safety backups for DURATION (default "
        "7d); they never count toward the other rules.")] = None,
    kind: Annotated[Kind | None, typer.Option("--kind", help="Prune only this kind.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; delete nothing.")
                       ] = False,
    wide: WideFlag = False,
    output: OutputFlag = None,
) -> None:
    """Remove backups a retention policy no longer keeps (GFS, restic semantics), safely."""
    from prefect_dr import durations, retention
    from prefect_dr import prune as prune_mod

    try:
        within = durations.parse(keep_within) if keep_within else None
        grace_d = durations.parse(grace) if grace else None
        safety_d = durations.parse(keep_safety_within) if keep_safety_within else None
    except ValueError as exc:
        raise errors.UsageError(str(exc)) from None
    policies = retention.policies_for(
        settings().values, kind.value if kind else None, keep_last=keep_last,
        keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=within,
        keep_labels=tuple(keep_label) if keep_label else None, min_verified=min_verified,
        grace=grace_d, keep_safety_within=safety_d)
    try:
        result = prune_mod.run(storage(), layout(), policies, dry_run=dry_run,
                               verify_key=verify_key())
    except prune_mod.PruneError as exc:
        _record_prune(exc.result)
        raise
    _record_prune(result)
    if json_mode():
        console.print_json({"ok": True, **result.to_dict()})
    else:
        render.prune(result, dry_run=dry_run, wide=wide_wanted(wide, output))
        c = result.counts
        verb = "would remove" if dry_run else "removed"
        console.info(f"kept {c['kept']}, {verb} {c['removed']} backups "
                     f"({console.human_bytes(c['bytes_freed'])}), skipped {c['skipped_locked']} "
                     f"under Object Lock, {c['uploads_aborted']} stale uploads")
    if result.locked:
        logger.warning("%d backups are under Object Lock retention and were kept",
                       len(result.locked))


def _record_prune(result: Any) -> None:
    if result is not None and state.run is not None:
        state.run.set("prune_removed_backups", result.counts["removed"])
        state.run.set("prune_kept_backups", result.counts["kept"])


@command()
def status(
    cron: Annotated[str | None, typer.Option(
        "--cron", help="Backup schedule, e.g. '0 */6 * * *' (default: schedule.backup_cron).")
    ] = None,
    verify_cron: Annotated[str | None, typer.Option(
        "--verify-cron", help="Verify schedule (default: schedule.verify_cron).")] = None,
    grace: Annotated[str | None, typer.Option(
        "--grace", help="How long a scheduled run may take before it counts as missing "
        "(default: schedule.grace, 1h).")] = None,
    kind: Annotated[Kind, typer.Option(
        "--kind", help="Judge backups (and verifications of backups) of this kind only.")
    ] = DEFAULT_LATEST_KIND,
    max_age: Annotated[str | None, typer.Option(
        "--max-age", metavar="DURATION", help="Without a backup schedule, how old the newest "
        "backup may be (default 26h); given, it is the rule even when a schedule is "
        "configured.")] = None,
) -> None:
    """Exit 15 when the newest backup or verification of --kind (default full) is older than
    its schedule allows (without a schedule: older than --max-age, 26h by default). Each row
    names the rule it applied."""
    from prefect_dr import catalog, durations
    from prefect_dr import status as status_mod

    current = settings()
    cron = cron or current.backup_cron
    verify_cron = verify_cron or current.verify_cron
    grace = grace or current.status_grace or "1h"
    if max_age and cron and cron != current.backup_cron:
        raise errors.UsageError("give --cron or --max-age, not both")
    try:
        window = durations.parse(grace)
        age_limit = durations.parse(max_age) if max_age else None
        for expr in (cron, verify_cron):
            if expr:
                status_mod.validate_cron(expr)
    except ValueError as exc:
        raise errors.UsageError(str(exc)) from None
    entries = catalog.list_backups(storage(read_only=True), layout(), verify_key=verify_key())
    report = status_mod.evaluate(entries, backup_cron=cron, verify_cron=verify_cron,
                                 grace=window, now=dt.datetime.now(dt.UTC), kind=kind,
                                 max_age=age_limit)
    if json_mode():
        console.print_json(report.to_dict())
    else:
        render.freshness(report)
    state.notes["kind"] = kind.value
    stale = [f"{item.what}: {item.detail}" for item in report.items if not item.ok]
    if stale:
        state.notes["detail"] = "; ".join(stale)
    for line in stale:
        console.error(line)
    if not report.ok:
        raise typer.Exit(errors.STALE)
