"""What every command module shares: settings, the repository, selection, confirmation."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from prefect_dr import config, errors, interrupt
from prefect_dr.cli.application import state
from prefect_dr.kinds import DEFAULT_LATEST_KIND, KINDS_TEXT, Kind

BACKUP_HELP = ("A backup id, its first 8 or more characters (20261126T15) or its random "
               "suffix (a1b2c3)")
BackupArg = Annotated[str | None, typer.Argument(
    metavar="BACKUP", help=BACKUP_HELP + "; or 'latest' (--latest).")]
KindFlag = Annotated[Kind | None, typer.Option(
    "--kind", help=f"Only backups of this kind: {KINDS_TEXT} (with --latest, the "
    f"default is {DEFAULT_LATEST_KIND}).")]
AllowUnsignedFlag = Annotated[bool, typer.Option(
    "--allow-unsigned", help="Accept a manifest that is unsigned or signed by a key not in "
    "PREFECT_DR_VERIFY_KEY (unauthenticated: anyone who can write to the repository could "
    "have made it). A signature that does not match is refused even so.")]
LatestFlag = Annotated[bool, typer.Option(
    "--latest", help=f"The newest complete backup of --kind (default: {DEFAULT_LATEST_KIND}).")]
YesFlag = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]
ScratchURLFlag = Annotated[str | None, typer.Option(
    "--scratch-url", help="Create the scratch database on this server (libpq URL of a "
    "database to connect to, without password) instead of the Prefect database's.")]
AnyKindFlag = Annotated[Kind | None, typer.Option(
    "--kind", help=f"Only backups of this kind: {KINDS_TEXT} (with --latest, the "
    "default is either kind).")]
WideFlag = Annotated[bool, typer.Option("--wide", help="Show every column whole, even past "
                                                       "the terminal's width.")]
OutputFlag = Annotated[str | None, typer.Option(
    "-o", "--output", metavar="wide", help="-o wide is --wide (as kubectl's).")]


def wide_wanted(wide: bool, output: str | None) -> bool:
    """Whether the table is wanted whole: ``--wide`` or ``-o wide``. Raises UsageError for
    another ``-o`` value."""
    if output is not None and output != "wide":
        raise errors.UsageError(f"-o {output}: the only output format is 'wide' (use --json "
                                "for JSON)")
    return wide or output == "wide"


def json_mode() -> bool:
    """Whether --json was given (before or after the command)."""
    return state.json


def settings() -> config.Settings:
    """The effective settings (loaded once). Raises ConfigError."""
    return state.settings()


def storage(*, read_only: bool = False) -> Any:
    """The repository's storage backend for the current settings; ``read_only`` commands
    (list, show, status) get the short read deadline (PREFECT_DR_S3_READ_DEADLINE). Made once
    per run (a client costs a tenth of a second, before a restore serves). The run's metrics
    carry its URL as the ``repository`` label."""
    from prefect_dr.storage import factory

    store = state.storages.get(read_only)
    if store is None:
        store = state.storages[read_only] = factory.from_settings(settings(),
                                                                  read_only=read_only)
    if state.run is not None:
        state.run.labels["repository"] = store.url
    return store


def repository(url: str | None = None) -> Any:
    """A ``copy.Repository``: the configured one, or the one at ``url`` (a copy target)."""
    from prefect_dr import copy
    from prefect_dr.layout import Layout
    from prefect_dr.storage import factory

    if url is None:
        return copy.Repository(storage(), layout())
    parsed = factory.parse(url)
    return copy.Repository(factory.open_url(parsed, settings()), Layout(parsed.prefix))


def layout() -> Any:
    """The repository layout for the current settings."""
    from prefect_dr.layout import Layout

    return Layout(settings().layout_prefix)


def verify_key() -> Any:
    """The configured verify keys (a possibly empty ``signing.Keyring``): records not signed
    by one of them count as unsigned. Raises CryptoKeyError for a malformed key."""
    from prefect_dr import signing

    return signing.Keyring.parse(settings().verify_key)


def trust(repo: Any, allow_unsigned: bool) -> Any:
    """What a reader of ``repo`` (a Storage) accepts: ``trust.Trust``."""
    from prefect_dr import trust as trust_mod

    return trust_mod.for_settings(settings(), repo, allow_unsigned=allow_unsigned)


def notified_verification(repo: Any, kind: str | None) -> dict[str, Any] | None:
    """The newest verification record before this run, when the run may notify (so that a
    verify passing after a failure can say so); None otherwise or when it cannot be read."""
    from prefect_dr import catalog

    if state.notify is False or not settings().notify_urls:
        return None
    try:
        return catalog.last_verification(repo, layout(), kind=kind, verify_key=verify_key())
    except errors.DRError:
        interrupt.raise_if_noted()
        return None


def select(backup_id: str | None, latest: bool, kind: Kind | None,
           default_kind: Kind | None = DEFAULT_LATEST_KIND, *, read_only: bool = False,
           trusted_by: Any = None) -> Any:
    """The one backup a command acts on (catalog.select_one with this run's repository);
    with a reader's ``trusted_by`` (trust.Trust), ``--latest`` means the newest trusted one."""
    from prefect_dr import catalog

    return catalog.select_one(storage(read_only=read_only), layout(), backup_id, latest=latest,
                              kind=kind, default_kind=default_kind,
                              verify_key=trusted_by or verify_key())


def confirm(name: str, yes: bool, what: str, noun: str = "the database name") -> None:
    """Ask the operator to type ``name``; without a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise errors.DRError(f"{what}: no terminal to confirm on; pass --yes",
                             exit_code=errors.USAGE)
    typed = typer.prompt(f"{what}. Type {noun} ({name}) to go on")
    if typed.strip() != name:
        raise errors.DRError("not confirmed; nothing changed", exit_code=errors.USAGE)


def url_flag(value: str | None, flag: str) -> None:
    """Refuse (exit 2) a database URL flag that is malformed or carries a password."""
    if not value:
        return
    parts = config.split_url(value)
    if parts is None:
        raise errors.UsageError(f"{flag} is not a valid URL (check brackets and the port)")
    if parts.password or config.query_secret(parts):
        raise errors.UsageError(f"{flag} must not carry a password (use PGPASSWORD or .pgpass)")


def parse_labels(labels: list[str], flag: str = "--label") -> dict[str, str]:
    """KEY=VALUE options as a dict. Raises UsageError for one without '='."""
    out: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise errors.UsageError(f"{flag} {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out
