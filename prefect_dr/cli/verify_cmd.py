"""The verify command: prove backups restorable."""

from __future__ import annotations

import os
import time
from typing import Annotated

import typer

from prefect_dr import console, errors
from prefect_dr.cli import render
from prefect_dr.cli.application import command, state
from prefect_dr.cli.common import (
    BACKUP_HELP,
    AllowUnsignedFlag,
    KindFlag,
    LatestFlag,
    ScratchURLFlag,
    json_mode,
    layout,
    notified_verification,
    settings,
    storage,
    trust,
    url_flag,
)


@command()
def verify(
    backup_id: Annotated[str | None, typer.Argument(
        metavar="BACKUP", help=BACKUP_HELP + " (default: --latest).")] = None,
    latest: LatestFlag = False,
    all_: Annotated[bool, typer.Option("--all", help="Every complete backup (of --kind).")
                    ] = False,
    since: Annotated[str | None, typer.Option(
        "--since", help="Complete backups started within DURATION (e.g. 7d).")] = None,
    scratch_url: ScratchURLFlag = None,
    keep_scratch: Annotated[bool, typer.Option(
        "--keep-scratch", help="Keep the scratch database for inspection.")] = False,
    prefect_smoke: Annotated[bool, typer.Option(
        "--prefect-smoke", help="Also start Prefect on the restored database and read its API "
        "(the line says which Prefect served and whether it migrated the database).")
    ] = False,
    prefect_python: Annotated[str | None, typer.Option(
        "--prefect-python", help="With --prefect-smoke: the Python whose Prefect serves "
        "(default: the Prefect beside prefect-dr, or on PATH).")] = None,
    kind: KindFlag = None,
    allow_unsigned: AllowUnsignedFlag = False,
) -> None:
    """Prove backups restorable: checksums, decryption, a test restore and semantic checks.

    Without a selector, or with --latest, the newest complete *full* backup (--kind
    config-only for the newest config-only one)."""
    from prefect_dr import durations, pipeline
    from prefect_dr import verify as verify_mod

    if sum(bool(x) for x in (backup_id, latest, all_, since)) > 1:
        raise errors.UsageError("give one of ID, --latest, --all, --since")
    url_flag(scratch_url, "--scratch-url")
    try:
        window = durations.parse(since) if since else None
    except ValueError as exc:
        raise errors.UsageError(f"--since: {exc}") from None
    current = settings()
    current.require(*verify_mod.NEEDS, *(() if scratch_url else ("database_url",)))
    repo = storage()
    trusted_by = trust(repo, allow_unsigned)
    trusted_by.require_keys()
    entries = verify_mod.select(repo, layout(), backup_id=backup_id, latest=latest,
                                all_=all_, since=window, kind=kind, trust=trusted_by)
    state.notes["backup"] = ", ".join(e.backup_id for e in entries[:3]) + (
        f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    kinds = {e.kind for e in entries if e.kind}
    if len(kinds) == 1:
        state.notes["kind"] = kinds.pop()
    previous = notified_verification(repo, kind or (entries[0].kind if entries else None))
    options = verify_mod.Options(scratch_url=scratch_url, keep_scratch=keep_scratch,
                                 prefect_smoke=prefect_smoke, prefect_python=prefect_python)
    reports = []
    for entry in entries:
        with console.transfer_progress(enabled=not json_mode(), primary="downloaded",
                                       total=entry.manifest.payload_size or None) as listener:
            reports.append(verify_mod.verify_one(current, repo, entry.manifest, options,
                                                 env=os.environ, trust=trusted_by,
                                                 progress=pipeline.Progress(listener)))
        if not json_mode():
            render.verification(reports[-1])
    code = verify_mod.exit_code(reports)
    ok = code == errors.OK
    if verify_mod.recovered(previous, reports):
        state.notes["recovered"] = "yes"
    state.run.set("verification_success", 1 if ok else 0)
    state.run.set("verification_timestamp_seconds", time.time())
    if json_mode():
        console.print_json({"ok": ok, "reports": [r.to_record() for r in reports]})
    for report in reports:
        failed = report.failed_check
        if failed is not None:
            where = f" ({failed.artifact})" if failed.artifact else ""
            console.error(f"backup {report.backup_id}: {failed.name}{where}: {failed.detail}")
            state.notes.setdefault("error", f"backup {report.backup_id}: {failed.name}{where}: "
                                            f"{failed.detail}")
    if not ok:
        raise typer.Exit(code)
