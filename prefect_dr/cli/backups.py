"""Commands that make and read backups: backup, list, show, block-key."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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
    OutputFlag,
    WideFlag,
    json_mode,
    layout,
    parse_labels,
    repository,
    select,
    settings,
    storage,
    trust,
    verify_key,
    wide_wanted,
)
from prefect_dr.kinds import KIND_TABLE, Kind
from prefect_dr.storage import registry

#: backup --kind: each kind and what it holds (kinds.KIND_TABLE)
KIND_HELP = "; ".join(f"{kind}: {row.help}" for kind, row in KIND_TABLE.items()) + "."


@command()
def backup(
    kind: Annotated[Kind, typer.Option("--kind", help=KIND_HELP)] = Kind.FULL,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="KEY=VALUE label (repeatable).")] = None,
    allow_undecryptable_blocks: Annotated[bool, typer.Option(
        "--allow-undecryptable-blocks",
        help="Back up even when block documents cannot be decrypted with any known key "
             "(also PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS).")
    ] = False,
    copy_to: Annotated[list[str] | None, typer.Option(
        "--copy-to", metavar="URL", help="After a successful backup, copy it to this "
        "repository too (repeatable; also PREFECT_DR_COPY_TO).")] = None,
    lock_wait: Annotated[str, typer.Option(
        "--lock-wait", metavar="DURATION",
        help="While another backup of this database holds the lock, try again for up to this "
             "long (e.g. 10m) before exit 11 (default 0s: at once).")] = "0s",
) -> None:
    """Back up the Prefect database and configuration, encrypted, to the repository (and
    copy it to --copy-to repositories)."""
    from prefect_dr import backup as backup_mod
    from prefect_dr import durations, pipeline

    state.run.labels["kind"] = kind.value
    try:
        wait = durations.parse(lock_wait).total_seconds()
    except ValueError as exc:
        raise errors.UsageError(f"--lock-wait: {exc}") from None
    current = settings()
    current.require(*backup_mod.NEEDS)  # every missing setting at once, the repository too
    request = backup_mod.Request(kind=kind.value, labels=parse_labels(label or []),
                                 allow_undecryptable_blocks=allow_undecryptable_blocks,
                                 lock_wait=wait)
    repo = storage()
    with console.transfer_progress(enabled=not json_mode(), primary="dumped") as listener:
        progress = pipeline.Progress(listener)
        manifest = backup_mod.run(current, repo, request, progress=progress,
                                  on_start=lambda backup_id: state.notes.update(backup=backup_id))
    for stage in ("dumped", "compressed", "uploaded"):
        state.run.set("backup_bytes", progress.counters.get(stage, 0), stage=stage)
    state.run.set("backup_rows", sum(int(c["rows"]) for c in manifest.row_counts.values()))
    size = sum(a.size for a in manifest.artifacts)
    targets = list(copy_to or current.copy_to or ())
    if not json_mode():
        console.line(manifest.backup_id)
        console.info(f"backup {manifest.backup_id} complete: {console.human_bytes(size)} "
                     f"in {len(manifest.artifacts)} artifacts")
    results = [_copy(repository(), repository(url), manifest.backup_id) for url in targets]
    if json_mode():
        console.print_json({"ok": True, "backup_id": manifest.backup_id, "kind": manifest.kind,
                            "size": size, "started_at": manifest.started_at,
                            "finished_at": manifest.finished_at,
                            "artifacts": [a.name for a in manifest.artifacts],
                            "copies": [r.to_dict() for r in results]})
    from prefect_dr import copy as copy_mod

    failure = copy_mod.after_backup_failed(manifest.backup_id, results)
    if failure is not None:
        raise failure


def _copy(source: Any, target: Any, backup_id: str) -> Any:
    """The copy of a backup just taken (copy.after_backup), reported in a log line."""
    from prefect_dr import copy as copy_mod
    from prefect_dr import trust as trust_mod

    current = settings()
    signer = trust_mod.signer(current.signing_key_file, current.signing_required is not False)
    result = copy_mod.after_backup(source, target, backup_id, signer=signer,
                                   trust=trust_mod.own_writes(current, source.storage, signer))
    for done in result.backups:
        console.info(f"copy of {done.backup_id} to {result.target}: {done.result}"
                     + (f" ({done.detail})" if done.detail else ""))
    return result


@command(name="copy")
def copy_cmd(
    backup_id: BackupArg = None,
    to: Annotated[str | None, typer.Option(
        "--to", metavar="URL", help="Target repository: "
        + registry.either([f"{s}://" for s in registry.schemes()]) + ".")
    ] = None,
    latest: LatestFlag = False,
    all_backups: Annotated[bool, typer.Option(
        "--all", help="Every complete backup (of --kind); already copied ones are skipped.")
    ] = False,
    kind: KindFlag = None,
    wide: WideFlag = False,
    allow_unsigned: AllowUnsignedFlag = False,
    output: OutputFlag = None,
) -> None:
    """Copy complete backups to another repository (checksums verified while copying, the
    manifest written last, already copied backups skipped; safe to rerun after a kill)."""
    from prefect_dr import catalog, pipeline
    from prefect_dr import copy as copy_mod
    from prefect_dr import trust as trust_mod

    if not to:
        raise errors.UsageError("give --to URL (the repository to copy to)")
    if not (backup_id or latest or all_backups):
        raise errors.UsageError("give a backup id, --latest or --all")
    source, target = repository(), repository(to)
    if source.name == target.name:
        raise errors.UsageError(f"--to {to} is the repository the backups are in")
    current = settings()
    signer = trust_mod.signer(current.signing_key_file, current.signing_required is not False)
    trusted_by = trust(source.storage, allow_unsigned)
    entries = copy_mod.select(source, backup_id, latest=latest, all_backups=all_backups,
                              kind=kind.value if kind else None, verify_key=trusted_by)
    if not all_backups:
        catalog.require_complete(entries[-1], trust=trusted_by)  # a chain: the one named last
    state.run.labels["target"] = target.name  # copies to two targets are two series
    with console.transfer_progress(enabled=not json_mode(), primary="copied") as listener:
        result = copy_mod.run(source, target, entries, trust=trusted_by, signer=signer,
                              progress=pipeline.Progress(listener))
    state.run.set("copy_backups", sum(b.result == copy_mod.COPIED for b in result.backups))
    state.run.set("copy_bytes", sum(b.bytes_copied for b in result.backups))
    if json_mode():
        console.print_json(result.to_dict())
    else:
        render.copies(result, wide=wide_wanted(wide, output))
    problem = copy_mod.failed(result)
    if problem is not None:
        raise problem


@command(name="list")
def list_cmd(
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only backups of this kind.")
                    ] = None,
    wide: WideFlag = False,
    output: OutputFlag = None,
) -> None:
    """List backups with their status, size, labels and newest verification."""
    from prefect_dr import catalog

    entries = [e for e in catalog.list_backups(storage(read_only=True), layout(),
                                               verify_key=verify_key())
               if kind is None or e.kind == kind]
    if json_mode():
        console.print_json({"backups": [e.to_dict() for e in entries]})
        return
    render.backups(entries, wide=wide_wanted(wide, output))


@command()
def show(
    backup_id: BackupArg = None,
    latest: LatestFlag = False,
    kind: KindFlag = None,
    wide: WideFlag = False,
    output: OutputFlag = None,
) -> None:
    """Print a backup's manifest."""
    entry = select(backup_id, latest, kind, read_only=True)
    if entry.manifest is None:  # the error contract, --json included (I7)
        raise errors.NotFoundError(f"backup {entry.backup_id} is {entry.status}" +
                                   (f": {entry.error}" if entry.error else "") +
                                   "; it has no manifest to show")
    if json_mode():
        console.print_json(entry.manifest.to_dict())
        return
    render.manifest(entry.manifest, wide=wide_wanted(wide, output))


@command(name="block-key")
def block_key_cmd(
    backup_id: BackupArg = None,
    latest: Annotated[bool, typer.Option(
        "--latest", help="The newest complete backup of --kind (default: either kind).")
    ] = False,
    kind: AnyKindFlag = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="New file (mode 0600, never overwritten) for the key; '-' "
        "writes it to stdout.")] = None,
    allow_unsigned: AllowUnsignedFlag = False,
) -> None:
    """Recover Prefect's block encryption key from a backup (escrowed, or the configuration
    row in its dump) into a new 0600 file: break-glass for PREFECT_SERVER_ENCRYPTION_KEY."""
    from prefect_dr import block_key, catalog

    if not output:
        raise errors.UsageError("give -o FILE for the key (or -o - to write it to stdout)")
    if output == "-" and json_mode():
        raise errors.UsageError("-o - writes the key itself to stdout; it cannot go with --json")
    current = settings()
    current.require("repository", "age_identity_file")
    identities = crypto.load_identities(Path(current.age_identity_file))
    repo = storage()
    trusted_by = trust(repo, allow_unsigned)
    manifest = catalog.require_complete(select(backup_id, latest, kind, default_kind=None,
                                               trusted_by=trusted_by), trust=trusted_by)
    found = block_key.recover(repo, manifest, identities, pg_bin_dir=current.pg_bin_dir)
    if output == "-":
        sys.stdout.write(found.key + "\n")
        return
    crypto.write_secret_file(Path(output).expanduser(), found.key + "\n")
    if json_mode():
        console.print_json({"ok": True, "backup_id": manifest.backup_id, "source": found.source,
                            "file": output})
        return
    console.info(f"wrote the block encryption key of backup {manifest.backup_id} "
                 f"({found.source}) to {output}: start Prefect with "
                 f"PREFECT_SERVER_ENCRYPTION_KEY=\"$(cat {output})\" (see docs/break-glass.md)")
