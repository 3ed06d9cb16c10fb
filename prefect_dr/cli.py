"""The prefect-dr command line: parse, confirm, call the core, map errors to exit codes, render.

No logic lives here beyond that; every command calls one core function.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from prefect_dr import (
    __version__,
    config,
    console,
    crypto,
    errors,
    interrupt,
    log,
    redact,
)

app = typer.Typer(
    name="prefect-dr",
    help="Disaster recovery for self-hosted Prefect servers: encrypted, verified backups to S3, "
         "restores you can undo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

logger = logging.getLogger("prefect_dr")


@dataclass
class State:
    """Global options, shared by every command through the click context."""

    config_file: Path | None = None
    json: bool = False
    verbose: bool = False
    metrics_file: Path | None = None
    pushgateway: str | None = None
    metrics_instance: str | None = None
    run: Any = None  # metrics.RunMetrics of this invocation
    flags: dict[str, tuple[Any, str]] = field(default_factory=dict)
    _settings: config.Settings | None = None

    def settings(self) -> config.Settings:
        """Load (once) and return the effective settings. Raises ConfigError."""
        if self._settings is None:
            self._settings = config.load(config_file=self.config_file, flags=self.flags)
            for warning in self._settings.warnings:
                logger.warning(warning)
        return self._settings


_state = State()


class LogFormat(enum.StrEnum):
    """Values of --log-format."""

    auto = "auto"
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        console.line(f"prefect-dr {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    config_file: Annotated[Path | None, typer.Option(
        "--config", envvar=config.CONFIG_ENV, help="TOML settings file.")] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Machine-readable JSON on stdout.")] = False,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", help="auto (text on a terminal, JSON lines otherwise), text or json.",
        case_sensitive=False)] = LogFormat.auto,
    verbose: Annotated[bool, typer.Option("-v", "--verbose",
                                          help="Debug logs and tracebacks.")] = False,
    bucket: Annotated[str | None, typer.Option("--bucket", help="S3 bucket.")] = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="Key prefix.")] = None,
    endpoint_url: Annotated[str | None, typer.Option(
        "--endpoint-url", help="S3-compatible endpoint.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="S3 region.")] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="Prefect database URL, without password.")] = None,
    metrics_file: Annotated[Path | None, typer.Option(
        "--metrics-file", envvar="PREFECT_DR_METRICS_FILE",
        help="Write Prometheus metrics to this file (node_exporter textfile collector).")
    ] = None,
    pushgateway: Annotated[str | None, typer.Option(
        "--pushgateway", envvar="PREFECT_DR_PUSHGATEWAY_URL",
        help="Push Prometheus metrics to this Pushgateway.")] = None,
    metrics_instance: Annotated[str | None, typer.Option(
        "--metrics-instance", envvar="PREFECT_DR_METRICS_INSTANCE",
        help="instance label for pushed metrics (default: host name).")] = None,
) -> None:
    """Global options; settings also come from the config file and PREFECT_DR_* variables."""
    import time

    from prefect_dr import metrics

    _state.metrics_file, _state.pushgateway = metrics_file, pushgateway
    _state.metrics_instance = metrics_instance
    command = ctx.invoked_subcommand
    _state.run = metrics.RunMetrics(command or "none", time.time())
    _state.config_file = config_file
    _state.json = json_output
    _state.verbose = verbose
    _state.flags = {
        "s3_bucket": (bucket, "--bucket"),
        "s3_prefix": (prefix, "--prefix"),
        "s3_endpoint_url": (endpoint_url, "--endpoint-url"),
        "s3_region": (region, "--region"),
        "database_url": (database_url, "--database-url"),
    }
    _state._settings = None
    log.setup(log_format.value, verbose,
              text_handler=console.log_handler() if log_format != LogFormat.json else None)


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _json(flag: bool) -> bool:
    return flag or _state.json


@config_app.command("show")
def config_show(json_flag: JsonFlag = False) -> None:
    """Print the effective settings, where each came from, with secrets redacted."""
    settings = _state.settings()
    rows = settings.display()
    aws = _aws_credentials_source()
    if _json(json_flag):
        console.print_json({"settings": rows, "aws_credentials": aws,
                            "config_file": str(settings.config_file or ""),
                            "warnings": list(settings.warnings)})
        return
    console.table("Settings", ["setting", "environment variable", "value", "source"],
                  [(r["name"], r["env"], r["value"], r["source"]) for r in rows])
    console.line(f"AWS credentials: {aws}")


def _aws_credentials_source() -> str:
    """Where boto3 finds credentials (method only, never the secret)."""
    import boto3

    creds = boto3.session.Session().get_credentials()
    if creds is None:
        return "none found"
    key = creds.access_key or ""
    shown = f"{key[:4]}...{key[-2:]}" if len(key) > 8 else "***"
    return f"{creds.method} (access key {shown})"


@app.command()
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Key file to create.")],
    signing_key: Annotated[bool, typer.Option(
        "--signing", help="Make an Ed25519 manifest-signing key instead of an age identity.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Create a key file (mode 0600) and print its public half.

    By default an age identity (print: the recipient for PREFECT_DR_AGE_RECIPIENTS); with
    --signing an Ed25519 key (print: the public key for PREFECT_DR_VERIFY_KEY).
    """
    if signing_key:
        from prefect_dr import signing

        text, public = signing.generate()
        hint = "PREFECT_DR_VERIFY_KEY; point PREFECT_DR_SIGNING_KEY_FILE at the file"
    else:
        text, public = crypto.generate_identity()
        hint = "PREFECT_DR_AGE_RECIPIENTS"
    crypto.write_secret_file(output, text)
    if _json(json_flag):
        console.print_json({"key_file": str(output), "public_key": public,
                            "kind": "ed25519-signing" if signing_key else "age-identity"})
        return
    console.line(public)
    console.info(f"wrote {output} (keep it secret; put the line above in {hint})")


@app.command("doctor")
def doctor_cmd(json_flag: JsonFlag = False) -> None:
    """Check the database, client tools, S3 bucket and keys; exit 0 only if all required pass."""
    from prefect_dr import doctor

    settings = _state.settings()
    report = doctor.run(settings)
    if _json(json_flag):
        console.print_json(report.to_dict())
    else:
        console.table("prefect-dr doctor", ["check", "status", "detail"],
                      [(c.name, c.status, c.detail) for c in report.checks], status_column=1)
    for check in report.failed:
        console.error(f"{check.name}: {check.detail}")
    if not report.ok:
        raise typer.Exit(errors.FAILURE)


def _storage(*, read_only: bool = False) -> Any:
    """The configured storage; ``read_only`` commands get the short read deadline."""
    from prefect_dr.storage import factory

    return factory.from_settings(_state.settings(), read_only=read_only)


def _layout() -> Any:
    from prefect_dr.layout import Layout

    return Layout(_state.settings().s3_prefix or "")


def _verify_key() -> Any:
    """The configured manifest/record verify key, or None."""
    settings = _state.settings()
    if not settings.verify_key:
        return None
    from prefect_dr import signing

    return signing.load_public(settings.verify_key)


def _parse_labels(labels: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise errors.DRError(f"--label {item!r} is not KEY=VALUE", exit_code=errors.USAGE)
        out[key.strip()] = value.strip()
    return out


class Kind(enum.StrEnum):
    """Values of --kind."""

    full = "full"
    config_only = "config-only"


@app.command()
def backup(
    kind: Annotated[Kind, typer.Option("--kind", help="full or config-only.")] = Kind.full,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="KEY=VALUE label (repeatable).")] = None,
    allow_undecryptable_blocks: Annotated[bool, typer.Option(
        "--allow-undecryptable-blocks",
        help="Back up even when block documents cannot be decrypted with any known key.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Back up the Prefect database and configuration, encrypted, to S3."""
    from prefect_dr import backup as backup_mod
    from prefect_dr import pipeline

    _state.run.labels["kind"] = kind.value
    settings = _state.settings()
    request = backup_mod.Request(kind=kind.value, labels=_parse_labels(label or []),
                                 allow_undecryptable_blocks=allow_undecryptable_blocks)
    storage = _storage()
    with console.transfer_progress(enabled=not _json(json_flag)) as listener:
        progress = pipeline.Progress(listener)
        manifest = backup_mod.run(settings, storage, request, progress=progress)
    for stage in ("dumped", "compressed", "uploaded"):
        _state.run.set("backup_bytes", progress.counters.get(stage, 0), stage=stage)
    _state.run.set("backup_rows", sum(int(c["rows"]) for c in manifest.row_counts.values()))
    size = sum(a.size for a in manifest.artifacts)
    if _json(json_flag):
        console.print_json({"ok": True, "backup_id": manifest.backup_id, "kind": manifest.kind,
                            "size": size, "started_at": manifest.started_at,
                            "finished_at": manifest.finished_at,
                            "artifacts": [a.name for a in manifest.artifacts]})
        return
    console.line(manifest.backup_id)
    console.info(f"backup {manifest.backup_id} complete: {console.human_bytes(size)} "
                 f"in {len(manifest.artifacts)} artifacts")


@app.command("list")
def list_cmd(json_flag: JsonFlag = False) -> None:
    """List backups with their status, size, labels and newest verification."""
    from prefect_dr import catalog

    entries = catalog.list_backups(_storage(read_only=True), _layout(),
                                 verify_key=_verify_key())
    if _json(json_flag):
        console.print_json({"backups": [e.to_dict() for e in entries]})
        return
    rows = []
    for e in entries:
        verified = e.verification.get("result", "") if e.verification else ""
        duration = f"{e.duration_s:.0f}s" if e.duration_s is not None else ""
        rows.append((e.backup_id, e.kind or "", e.status, e.started_at or "", duration,
                     console.human_bytes(e.size),
                     ",".join(f"{k}={v}" for k, v in sorted(e.labels.items())),
                     verified or (e.error or "")))
    console.table("Backups", ["id", "kind", "status", "started", "duration", "size", "labels",
                              "verified / error"], rows, status_column=2)


@app.command()
def show(
    backup_id: Annotated[str | None, typer.Argument(help="Backup id.")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest complete backup.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Print a backup's manifest."""
    from prefect_dr import catalog

    if not backup_id and not latest:
        raise errors.DRError("give a backup id or --latest", exit_code=errors.USAGE)
    entry = catalog.resolve(_storage(read_only=True), _layout(), backup_id, latest=latest)
    if entry.manifest is None:
        detail = {"id": entry.backup_id, "status": entry.status, "error": entry.error}
        if _json(json_flag):
            console.print_json(detail)
        else:
            console.line(f"{entry.backup_id}: {entry.status}" +
                         (f" ({entry.error})" if entry.error else ""))
        raise typer.Exit(errors.NOT_FOUND if entry.status != "complete" else 0)
    if _json(json_flag):
        console.print_json(entry.manifest.to_dict())
        return
    m = entry.manifest
    console.table(f"Backup {m.backup_id}", ["field", "value"], [
        ("kind", m.kind), ("started", m.started_at), ("finished", m.finished_at),
        ("prefect", m.prefect_version or "unknown"), ("alembic revision", m.alembic_revision),
        ("postgres", m.postgres_version), ("pg_dump", m.pg_dump_version),
        ("database", m.database), ("labels", ",".join(f"{k}={v}" for k, v in m.labels.items())),
        ("block key", ", ".join(f"{k}={v}" for k, v in m.block_key.items())),
        ("signed", "yes" if m.signature else "no"),
    ])
    console.table("Artifacts", ["name", "size", "plaintext", "sha256", "key"], [
        (a.name, console.human_bytes(a.size), console.human_bytes(a.plaintext_size),
         a.sha256[:16], a.key) for a in m.artifacts])
    console.table("Row counts", ["table", "rows", "exact"], [
        (t, c["rows"], "yes" if c.get("exact") else "estimate")
        for t, c in sorted(m.row_counts.items()) if c.get("rows")])


@app.command()
def verify(
    backup_id: Annotated[str | None, typer.Argument(help="Backup id (default: --latest).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest complete backup.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every complete backup.")] = False,
    since: Annotated[str | None, typer.Option(
        "--since", help="Complete backups started within DURATION (e.g. 7d).")] = None,
    scratch_url: Annotated[str | None, typer.Option(
        "--scratch-url", help="Create the scratch database on this server (libpq URL of a "
        "database to connect to, without password) instead of the Prefect database's.")] = None,
    keep_scratch: Annotated[bool, typer.Option(
        "--keep-scratch", help="Keep the scratch database for inspection.")] = False,
    prefect_smoke: Annotated[bool, typer.Option(
        "--prefect-smoke", help="Also start Prefect on the restored database and read its API.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Prove backups restorable: checksums, decryption, a test restore and semantic checks."""
    from prefect_dr import durations, pipeline
    from prefect_dr import verify as verify_mod

    if sum(bool(x) for x in (backup_id, latest, all_, since)) > 1:
        raise errors.DRError("give one of ID, --latest, --all, --since", exit_code=errors.USAGE)
    _url_flag(scratch_url, "--scratch-url")
    try:
        window = durations.parse(since) if since else None
    except ValueError as exc:
        raise errors.DRError(f"--since: {exc}", exit_code=errors.USAGE) from None
    settings = _state.settings()
    settings.require("age_identity_file")
    storage = _storage()
    entries = verify_mod.select(storage, _layout(), backup_id=backup_id, latest=latest,
                                all_=all_, since=window)
    options = verify_mod.Options(scratch_url=scratch_url, keep_scratch=keep_scratch,
                                 prefect_smoke=prefect_smoke)
    reports = []
    for entry in entries:
        with console.transfer_progress(enabled=not _json(json_flag)) as listener:
            reports.append(verify_mod.verify_one(settings, storage, entry.manifest, options,
                                                 env=os.environ,
                                                 progress=pipeline.Progress(listener)))
        if not _json(json_flag):
            _render_verification(reports[-1])
    ok = all(r.ok for r in reports)
    import time

    _state.run.set("verification_success", 1 if ok else 0)
    _state.run.set("verification_timestamp_seconds", time.time())
    if _json(json_flag):
        console.print_json({"ok": ok, "reports": [r.to_record() for r in reports]})
    for report in reports:
        failed = report.failed_check
        if failed is not None:
            where = f" ({failed.artifact})" if failed.artifact else ""
            console.error(f"backup {report.backup_id}: {failed.name}{where}: {failed.detail}")
    if not ok:
        code = errors.KEY_ERROR if any(r.key_error for r in reports) else \
            errors.VERIFICATION_FAILED
        raise typer.Exit(code)


def _render_verification(report: Any) -> None:
    rows = [(c.name, c.artifact or "", "ok" if c.ok else "fail", f"{c.duration_s:.2f}s",
             c.detail) for c in report.checks]
    result = "passed" if report.ok else "FAILED"
    console.table(f"Verification of {report.backup_id}: {result}",
                  ["check", "artifact", "result", "time", "detail"], rows, status_column=2)


def _confirm(name: str, yes: bool, what: str) -> None:
    """Ask the operator to type ``name``; without a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise errors.DRError(f"{what}: no terminal to confirm on; pass --yes",
                             exit_code=errors.USAGE)
    typed = typer.prompt(f"{what}. Type the database name ({name}) to go on")
    if typed.strip() != name:
        raise errors.DRError("not confirmed; nothing changed", exit_code=errors.USAGE)


def _url_flag(value: str | None, flag: str) -> None:
    """Refuse (exit 2) a database URL flag that is malformed or carries a password."""
    if not value:
        return
    parts = config.split_url(value)
    if parts is None:
        raise errors.UsageError(f"{flag} is not a valid URL (check brackets and the port)")
    if parts.password:
        raise errors.UsageError(f"{flag} must not carry a password (use PGPASSWORD or .pgpass)")


@app.command()
def restore(
    backup_id: Annotated[str | None, typer.Argument(help="Backup id (or --latest).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest complete backup.")] = False,
    target_url: Annotated[str | None, typer.Option(
        "--target-url", help="Database to restore into (default: PREFECT_DR_DATABASE_URL); "
        "created when it does not exist.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    force_disconnect: Annotated[bool, typer.Option(
        "--force-disconnect", help="Terminate clients still connected at the swap.")] = False,
    allow_newer_schema: Annotated[bool, typer.Option(
        "--allow-newer-schema", help="Restore a schema revision newer than the target's "
        "Prefect is known to run.")] = False,
    no_safety_backup: Annotated[bool, typer.Option(
        "--no-safety-backup", help="Skip the backup of the live database before the swap.")
    ] = False,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", help="pg_restore jobs; above 1 the decrypted dump is staged on local "
        "disk (PREFECT_DR_STAGING_DIR) first. 0: one per available CPU.")] = 0,
    json_flag: JsonFlag = False,
) -> None:
    """Restore a backup beside the live database, check it, swap it in, keep the old one."""
    from prefect_dr import catalog, pipeline
    from prefect_dr import restore as restore_mod

    _url_flag(target_url, "--target-url")
    if not backup_id and not latest:
        raise errors.DRError("give a backup id or --latest", exit_code=errors.USAGE)
    settings = _state.settings()
    storage = _storage()
    entry = catalog.resolve(storage, _layout(), backup_id, latest=latest)
    manifest = catalog.require_complete(entry)
    plan = restore_mod.make_plan(settings, manifest, target_url=target_url,
                                 allow_newer_schema=allow_newer_schema,
                                 safety_backup=not no_safety_backup)
    if _json(json_flag) and dry_run:
        console.print_json({"ok": plan.schema_ok, "dry_run": True, "plan": plan.to_dict()})
    elif not _json(json_flag):
        _render_plan(plan)
    if not plan.schema_ok:
        raise restore_mod.SchemaRefusedError(
            f"refusing to restore backup {plan.backup_id}: {plan.schema_reason}")
    if dry_run:
        return
    _confirm(plan.target_db, yes, f"restore backup {plan.backup_id} over {plan.target}")
    with console.transfer_progress(enabled=not _json(json_flag)) as listener:
        result = restore_mod.execute(settings, storage, manifest, plan, target_url=target_url,
                                     force_disconnect=force_disconnect, env=os.environ,
                                     progress=pipeline.Progress(listener),
                                     on_step=lambda s: logger.info(s),
                                     jobs=jobs or pipeline.available_cpus(),
                                     staging_dir=settings.staging_dir)
    next_steps = [
        "Restart every Prefect server and worker: the server caches the block encryption "
        "key, automations and concurrency leases for up to an hour.",
        "Set PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION=false (or delete "
        "~/.prefect/memo_store.toml) so block types are registered against the restored "
        "database.",
    ]
    if result.kept_db:
        next_steps.append(f"The previous database is kept as {result.kept_db}: "
                          "'prefect-dr rollback' brings it back; "
                          f"'prefect-dr rollback --drop {result.kept_db}' frees its space.")
    if manifest.block_key.get("escrowed"):
        next_steps.append("This backup's block key was escrowed: start Prefect with the same "
                          "PREFECT_SERVER_ENCRYPTION_KEY (see docs/break-glass.md).")
    if _json(json_flag):
        console.print_json({"ok": True, "plan": plan.to_dict(),
                            "safety_backup_id": result.safety_backup_id,
                            "kept_database": result.kept_db, "next_steps": next_steps})
        return
    console.line(f"restored backup {plan.backup_id} into {plan.target}")
    if result.safety_backup_id:
        console.line(f"safety backup of the previous database: {result.safety_backup_id}")
    console.line("Next steps:")
    for i, step in enumerate(next_steps, 1):
        console.line(f"  {i}. {step}")


def _render_plan(plan: Any) -> None:
    console.table(f"Restore plan for backup {plan.backup_id}", ["", ""], [
        ("backup", f"{plan.backup_id} ({plan.kind}), Prefect {plan.prefect_version or '?'}, "
                   f"revision {plan.backup_revision}"),
        ("target", f"{plan.target} ({'exists' if plan.target_exists else 'will be created'}"
                   + (f", revision {plan.target_revision}" if plan.target_exists else "") + ")"),
        ("schema", ("ok: " if plan.schema_ok else "REFUSED: ") + plan.schema_reason),
        ("creates", ", ".join(plan.creates)),
        ("renames", "; ".join(f"{a} -> {b}" for a, b in plan.renames)),
        ("safety backup", "yes" if plan.safety_backup else "no"),
        ("disk needed", console.human_bytes(plan.disk_needed) + " (the backed-up database's "
                        "size; the old database is kept too)" if plan.disk_needed else "unknown"),
    ])
    changed = [r for r in plan.config_diff if r["change"]] or plan.config_diff[:0]
    console.table("Configuration tables (backup vs current)",
                  ["table", "backup", "current", "change"],
                  [(r["table"], r["backup"], r["current"], f"{r['change']:+d}")
                   for r in (changed or plan.config_diff)])
    console.table("Run history (backup vs current)", ["table", "backup", "current", "change"],
                  [(r["table"], r["backup"], r["current"] if r["exact"] else f"~{r['current']}",
                    f"{r['change']:+d}") for r in plan.history_diff if r["backup"] or r["current"]])


@app.command("restore-config")
def restore_config(
    backup_id: Annotated[str | None, typer.Argument(help="Backup id (or --latest).")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The newest complete backup.")] = False,
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated: blocks,variables,work-pools,deployments,automations,"
        "concurrency-limits (default: all).")] = None,
    on_conflict: Annotated[str, typer.Option(
        "--on-conflict", help="skip (keep existing objects) or overwrite.")] = "skip",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the diff only.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Import a backup's configuration export into a live Prefect server through its API."""
    from prefect_dr import catalog
    from prefect_dr import config_import as ci

    if not backup_id and not latest:
        raise errors.DRError("give a backup id or --latest", exit_code=errors.USAGE)
    sections = ci.parse_only(only)
    settings = _state.settings()
    settings.require("prefect_api_url", "age_identity_file")
    storage = _storage()
    manifest = catalog.require_complete(catalog.resolve(storage, _layout(), backup_id,
                                                        latest=latest))
    identities = crypto.load_identities(Path(settings.age_identity_file).expanduser())
    export_doc = ci.read_export(storage, manifest, identities)
    the_plan = ci.plan(settings.prefect_api_url, export_doc, only=sections,
                       on_conflict=on_conflict)
    if not _json(json_flag):
        console.table(f"restore-config of {manifest.backup_id} into Prefect "
                      f"{the_plan.target_version or ''} ({'dry run' if dry_run else on_conflict})",
                      ["section", "kind", "name", "action", "differences", "note"],
                      [(i.section, i.kind, i.name, i.action, ", ".join(i.diff), i.note or "")
                       for i in the_plan.items])
        for warning in the_plan.warnings:
            logger.warning(warning)
    if dry_run:
        if _json(json_flag):
            console.print_json({"ok": True, "dry_run": True, "plan": the_plan.to_dict()})
        else:
            console.info(", ".join(f"{k}: {v}" for k, v in the_plan.counts.items()))
        return
    result = ci.apply(settings.prefect_api_url, export_doc, the_plan)
    if _json(json_flag):
        console.print_json({"ok": result.ok, "plan": the_plan.to_dict(),
                            "result": result.to_dict()})
    else:
        console.info(", ".join(f"{k}: {v}" for k, v in result.counts.items()))
    for failure in result.failures:
        console.error(f"{failure.section} {failure.name}: {failure.error}")
    if not result.ok:
        raise typer.Exit(errors.PARTIAL)


@app.command()
def rollback(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="Show kept databases.")] = False,
    drop: Annotated[str | None, typer.Option("--drop", help="Drop one kept database.")] = None,
    target_url: Annotated[str | None, typer.Option(
        "--target-url", help="The restored database (default: PREFECT_DR_DATABASE_URL).")
    ] = None,
    force_disconnect: Annotated[bool, typer.Option(
        "--force-disconnect", help="Terminate clients still connected at the swap.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Undo the last restore: swap the pre-restore database back (the restored one is kept)."""
    from prefect_dr import restore as restore_mod

    _url_flag(target_url, "--target-url")
    settings = _state.settings()
    if list_:
        rows = restore_mod.kept(settings, target_url)
        if _json(json_flag):
            console.print_json({"kept": [{"name": k.name, "kind": k.kind, "size": k.size,
                                          "age_s": int(k.age.total_seconds()),
                                          "comment": k.comment} for k in rows]})
        else:
            console.table("Kept databases", ["name", "kind", "size", "age", "note"],
                          [(k.name, k.kind, console.human_bytes(k.size),
                            str(k.age).split(".")[0], k.comment) for k in rows])
        return
    if drop:
        _confirm(drop, yes, f"drop kept database {drop}")
        restore_mod.drop_kept(settings, drop, target_url=target_url)
        if _json(json_flag):
            console.print_json({"ok": True, "dropped": drop})
        else:
            console.line(f"dropped {drop}")
        return
    chosen, aside = restore_mod.rollback_target(settings, target_url)
    db = chosen.name.split("_pre_restore_")[0]
    _confirm(db, yes, f"roll {db} back to {chosen.name} (the current one is kept as {aside})")
    brought, kept_as = restore_mod.rollback(settings, target_url=target_url,
                                            force_disconnect=force_disconnect)
    if _json(json_flag):
        console.print_json({"ok": True, "restored_from": brought, "kept_as": kept_as})
        return
    console.line(f"rolled back: {brought} is {db} again; the restored database is kept as "
                 f"{kept_as}")
    console.line("Next step: restart every Prefect server and worker.")


@app.command()
def prune(
    keep_last: Annotated[int | None, typer.Option("--keep-last", help="Keep the N newest.")
                         ] = None,
    keep_hourly: Annotated[int | None, typer.Option("--keep-hourly")] = None,
    keep_daily: Annotated[int | None, typer.Option("--keep-daily")] = None,
    keep_weekly: Annotated[int | None, typer.Option("--keep-weekly")] = None,
    keep_monthly: Annotated[int | None, typer.Option("--keep-monthly")] = None,
    keep_yearly: Annotated[int | None, typer.Option("--keep-yearly")] = None,
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
    kind: Annotated[Kind | None, typer.Option("--kind", help="Prune only this kind.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; delete nothing.")
                       ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Remove backups a retention policy no longer keeps (GFS, restic semantics), safely."""
    from prefect_dr import durations, retention
    from prefect_dr import prune as prune_mod

    try:
        within = durations.parse(keep_within) if keep_within else None
        grace_d = durations.parse(grace) if grace else None
    except ValueError as exc:
        raise errors.DRError(str(exc), exit_code=errors.USAGE) from None
    settings = _state.settings()
    policies = retention.policies_for(
        settings, kind.value if kind else None, keep_last=keep_last, keep_hourly=keep_hourly,
        keep_daily=keep_daily, keep_weekly=keep_weekly, keep_monthly=keep_monthly,
        keep_yearly=keep_yearly, keep_within=within,
        keep_labels=tuple(keep_label) if keep_label else None, min_verified=min_verified,
        grace=grace_d)
    try:
        result = prune_mod.run(_storage(), _layout(), policies, dry_run=dry_run,
                               verify_key=_verify_key())
    except prune_mod.PruneError as exc:
        _record_prune(exc.result)
        raise
    _record_prune(result)
    if _json(json_flag):
        console.print_json({"ok": True, **result.to_dict()})
    else:
        title = "Prune plan (dry run: nothing deleted)" if dry_run else "Prune"
        console.table(title, ["kind", "id", "status", "started", "verified", "size", "action",
                              "reasons"],
                      [(r["kind"], r["id"], r["status"], r["started_at"],
                        {True: "yes", False: "no"}.get(r["verified"], ""),
                        console.human_bytes(r.get("size")), r["action"], "; ".join(r["reasons"]))
                       for r in result.rows()], status_column=6)
        c = result.counts
        verb = "would remove" if dry_run else "removed"
        console.info(f"kept {c['kept']}, {verb} {c['removed']} backups "
                     f"({console.human_bytes(c['bytes_freed'])}), skipped {c['skipped_locked']} "
                     f"under Object Lock, {c['uploads_aborted']} stale uploads")
    if result.locked:
        logger.warning("%d backups are under Object Lock retention and were kept",
                       len(result.locked))


def _record_prune(result: Any) -> None:
    if result is not None and _state.run is not None:
        _state.run.set("prune_removed_backups", result.counts["removed"])
        _state.run.set("prune_kept_backups", result.counts["kept"])


@app.command()
def status(
    cron: Annotated[str | None, typer.Option(
        "--cron", help="Backup schedule, e.g. '0 */6 * * *' (default: schedule.backup_cron).")
    ] = None,
    verify_cron: Annotated[str | None, typer.Option(
        "--verify-cron", help="Verify schedule (default: schedule.verify_cron).")] = None,
    grace: Annotated[str | None, typer.Option(
        "--grace", help="How long a scheduled run may take before it counts as missing "
        "(default: schedule.grace, 1h).")] = None,
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only backups of this kind.")
                    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Exit 15 when the newest backup or verification is older than its schedule allows."""
    import datetime as dt

    from prefect_dr import catalog, durations
    from prefect_dr import status as status_mod

    settings = _state.settings()
    cron = cron or settings.backup_cron
    verify_cron = verify_cron or settings.verify_cron
    grace = grace or settings.status_grace or "1h"
    try:
        window = durations.parse(grace)
        for expr in (cron, verify_cron):
            if expr:
                status_mod.validate_cron(expr)
    except ValueError as exc:
        raise errors.DRError(str(exc), exit_code=errors.USAGE) from None
    entries = catalog.list_backups(_storage(read_only=True), _layout(),
                                 verify_key=_verify_key())
    report = status_mod.evaluate(entries, backup_cron=cron, verify_cron=verify_cron,
                                 grace=window, now=dt.datetime.now(dt.UTC),
                                 kind=kind.value if kind else None)
    if _json(json_flag):
        console.print_json(report.to_dict())
    else:
        console.table("prefect-dr status", ["what", "status", "detail"],
                      [(i.what, "ok" if i.ok else "fail", i.detail) for i in report.items],
                      status_column=1)
    for item in report.items:
        if not item.ok:
            console.error(f"{item.what}: {item.detail}")
    if not report.ok:
        raise typer.Exit(errors.STALE)


k8s_app = typer.Typer(help="Kubernetes objects for running prefect-dr.", no_args_is_help=True)
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
def k8s_render(
    schedule: Annotated[str, typer.Option("--schedule", help="Backup CronJob schedule.")
                        ] = "0 2 * * *",
    verify_schedule: Annotated[str, typer.Option("--verify-schedule")] = "0 4 * * *",
    prune_schedule: Annotated[str, typer.Option("--prune-schedule")] = "0 6 * * *",
    namespace: Annotated[str, typer.Option("--namespace")] = "prefect-dr",
    image: Annotated[str | None, typer.Option("--image", help="Container image.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default stdout).")
                      ] = None,
    database_secret: Annotated[str, typer.Option(
        "--database-secret", metavar="NAME[:KEY]",
        help="Secret the jobs read the database URL from (as PREFECT_API_DATABASE_CONNECTION_URL;"
             " default: prefect-helm's). With KEY PGPASSWORD it holds only the password and "
             "the database URL setting goes into the ConfigMap.")
    ] = "prefect-server-postgresql-connection:connection-string",  # noqa: S107 - a name
) -> None:
    """Print CronJobs (backup, prune, verify), a restore Job template, ConfigMap and example
    Secrets for the current settings (multi-document YAML; schedules validated)."""
    from prefect_dr import k8s

    settings = _state.settings()
    secret_name, _, secret_key = database_secret.partition(":")
    overrides: dict[str, Any] = {
        "namespace": namespace, "backup_schedule": schedule,
        "verify_schedule": verify_schedule, "prune_schedule": prune_schedule,
        "age_recipients": tuple(settings.recipients), "database_secret": secret_name,
        "database_secret_key": secret_key or "connection-string",
    }
    if overrides["database_secret_key"] == k8s.PASSWORD_KEY and settings.database_url:
        overrides["database_url"] = settings.database_url
    for field_name, setting in (("bucket", "s3_bucket"), ("prefix", "s3_prefix"),
                                ("endpoint_url", "s3_endpoint_url"), ("region", "s3_region"),
                                ("prefect_api_url", "prefect_api_url"),
                                ("retention_full", "retention_full"),
                                ("retention_config_only", "retention_config_only"),
                                ("verify_key", "verify_key")):
        value = getattr(settings, setting)
        if value:
            overrides[field_name] = value
    if image:
        overrides["image"] = image
    try:
        text = k8s.to_yaml(k8s.render(k8s.RenderOptions(**overrides)))
    except ValueError as exc:
        raise errors.DRError(str(exc), exit_code=errors.USAGE) from None
    if output:
        output.write_text(text, encoding="utf-8")
        console.info(f"wrote {output}")
    else:
        sys.stdout.write(text)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise interrupt.note(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every outcome into an exit code; then write metrics."""
    code = _main(argv)
    _finish_metrics(code)
    return code


def _finish_metrics(code: int) -> None:
    import time

    from prefect_dr import metrics

    run = _state.run
    if run is None or run.command in ("none", "keygen", "config", "k8s") or not (
            _state.metrics_file or _state.pushgateway):
        return
    run.finished, run.success = time.time(), code == 0
    try:
        if _state.metrics_file:
            metrics.write_textfile(_state.metrics_file, run)
        if _state.pushgateway:
            metrics.push(_state.pushgateway, run, instance=_state.metrics_instance)
    except errors.DRError as exc:
        logger.error("metrics not recorded: %s", exc.message)


def _main(argv: list[str] | None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        result = app(args=argv, prog_name="prefect-dr", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: unknown flag, bad value
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            sys.stderr.write(ctx.get_help() + "\n")  # no command at all: the help, exit 2
            return errors.USAGE
        if "--json" in (sys.argv[1:] if argv is None else argv):
            _state.json = True  # the error may precede the parsing of --json itself
        _report(errors.UsageError(_usage_message(exc)))
        return errors.USAGE
    except (KeyboardInterrupt, typer.Abort):
        _report(errors.Interrupted("interrupted"))
        return errors.INTERRUPTED
    except errors.DRError as exc:
        exc = _after_signal(exc)
        _report(exc)
        return exc.exit_code
    except Exception as exc:  # a bug: still one line unless --verbose
        failure = _after_signal(errors.DRError(f"unexpected {type(exc).__name__}: {exc} "
                                               "(run with -v for the traceback)"))
        _report(failure)
        return failure.exit_code


def _after_signal(exc: errors.DRError) -> errors.DRError:
    """A run stopped by SIGINT/SIGTERM exits 130 whatever error the stop surfaced as (a
    library may have wrapped the signal's exception); the error's own text is kept."""
    stop = interrupt.pending()
    if stop is None or isinstance(exc, errors.Interrupted):
        return exc
    return errors.Interrupted(f"{stop.message}: {exc.message}")


def _usage_message(exc: Exception) -> str:
    """One line for a usage error: click's message and where to read the usage."""
    fmt = getattr(exc, "format_message", None)
    text = fmt() if callable(fmt) else str(exc)
    text = " ".join(str(text).split())
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "prefect-dr"
    return f"{text} (see '{path} --help')"


def _report(exc: errors.DRError) -> None:
    if _state.verbose:
        sys.stderr.write(redact.redact(traceback.format_exc()))
    if _state.json:
        console.print_json({"ok": False, "error": exc.message, "exit_code": exc.exit_code})
    console.error(exc.message)
