"""The rehearse-upgrade command: run a Prefect upgrade's migrations on a copy of a backup."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_dr import console
from prefect_dr.cli import render
from prefect_dr.cli.application import command
from prefect_dr.cli.common import (
    AllowUnsignedFlag,
    BackupArg,
    KindFlag,
    LatestFlag,
    ScratchURLFlag,
    json_mode,
    select,
    settings,
    storage,
    trust,
    url_flag,
)


@command(name="rehearse-upgrade")
def rehearse_upgrade(
    backup_id: BackupArg = None,
    latest: LatestFlag = False,
    kind: KindFlag = None,
    prefect_python: Annotated[str, typer.Option(
        "--prefect-python", help="Python interpreter of the Prefect to upgrade to (its "
        "'prefect server database upgrade -y' runs the migrations).")] = "",
    scratch_url: ScratchURLFlag = None,
    database_timeout: Annotated[int, typer.Option(
        "--database-timeout", help="PREFECT_API_DATABASE_TIMEOUT for the upgrade, seconds "
        "(Prefect advises 600 for large databases).")] = 600,
    allow_unsigned: AllowUnsignedFlag = False,
) -> None:
    """Restore a backup into a scratch database and run a newer Prefect's migrations on it:
    each migration's time, the total, the database size before and after, success. The
    scratch database is always dropped. Exit 0 when the upgrade succeeded, 1 when it failed,
    16 when --prefect-python has no Prefect or no PostgreSQL client suits."""
    from prefect_dr import catalog, chain, errors, pipeline, rehearse
    from prefect_dr.cli.common import layout

    if not prefect_python:
        raise errors.UsageError("--prefect-python PATH is required (the Python of the Prefect "
                                "to upgrade to)")
    url_flag(scratch_url, "--scratch-url")
    current = settings()
    repo = storage()
    trusted_by = trust(repo, allow_unsigned)
    manifest = catalog.require_complete(select(backup_id, latest, kind, trusted_by=trusted_by),
                                        trust=trusted_by)
    manifest = chain.resolve(repo, layout(), manifest, trusted_by)  # an increment: its links
    with console.transfer_progress(enabled=not json_mode(), primary="downloaded",
                                   total=manifest.payload_size or None) as listener:
        result = rehearse.rehearse(current, repo, manifest, prefect_python=prefect_python,
                                   scratch_url=scratch_url, timeout_s=database_timeout,
                                   progress=pipeline.Progress(listener))
    if json_mode():
        console.print_json({"ok": result.ok, "rehearsal": result.to_dict()})
    else:
        render.rehearsal(result)
    if not result.ok:
        raise errors.DRError(result.error or "the upgrade failed")

