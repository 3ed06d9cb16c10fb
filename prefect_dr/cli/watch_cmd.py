"""``watch``: config-only backups within a minute of a configuration change (long-running)."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_dr import errors
from prefect_dr.cli.application import command, state
from prefect_dr.cli.common import settings, storage


def _seconds(text: str, flag: str) -> float:
    from prefect_dr import durations

    try:
        return durations.parse(text).total_seconds()
    except ValueError as exc:
        raise errors.UsageError(f"{flag}: {exc}") from None


@command()
def watch(
    debounce: Annotated[str, typer.Option(
        "--debounce", metavar="DURATION",
        help="Back up once no change has been seen for this long (one backup per burst).")
    ] = "5s",
    max_delay: Annotated[str, typer.Option(
        "--max-delay", metavar="DURATION",
        help="Back up at the latest this long after the first change of a burst.")] = "20s",
    poll_interval: Annotated[str, typer.Option(
        "--poll-interval", metavar="DURATION",
        help="Poll the configuration tables this often while the event stream is down.")
    ] = "10s",
    safety_poll_interval: Annotated[str, typer.Option(
        "--safety-poll-interval", metavar="DURATION",
        help="Poll them this often while the stream is up too (Prefect before 3.7 does not "
             "announce every change; 0s: never).")] = "20s",
    retry: Annotated[str, typer.Option(
        "--retry", metavar="DURATION",
        help="After a failed backup (or a held lock), try again after this long.")] = "30s",
    initial_backup: Annotated[bool, typer.Option(
        "--initial-backup/--no-initial-backup",
        help="Take one backup at start (changes made while watch was not running).")
    ] = True,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", metavar="PORT",
        help="Serve Prometheus metrics on this port (also PREFECT_DR_WATCH_METRICS_PORT).",
        envvar="PREFECT_DR_WATCH_METRICS_PORT", min=1, max=65535)] = None,
    metrics_address: Annotated[str, typer.Option(
        "--metrics-address", metavar="ADDRESS",
        help="Address the metrics port listens on (0.0.0.0 in a pod).")] = "127.0.0.1",
) -> None:
    """Follow Prefect's event stream and take a config-only backup within a minute of every
    configuration change (debounced); poll the tables while the stream is down. Runs until
    SIGTERM/SIGINT (exit 130)."""
    import logging

    from prefect_dr import backup as backup_mod
    from prefect_dr.kinds import Kind
    from prefect_dr.watch import loop, poll, stream
    from prefect_dr.watch import metrics as watch_metrics
    from prefect_dr.watch.state import Status

    log = logging.getLogger("prefect_dr.watch")
    try:
        options = loop.Options(
            debounce_s=_seconds(debounce, "--debounce"),
            max_delay_s=_seconds(max_delay, "--max-delay"),
            poll_s=max(_seconds(poll_interval, "--poll-interval"), 1.0),
            safety_poll_s=_seconds(safety_poll_interval, "--safety-poll-interval"),
            retry_s=max(_seconds(retry, "--retry"), 1.0), initial_backup=initial_backup)
    except ValueError as exc:
        raise errors.UsageError(str(exc)) from None
    current = settings()
    current.require(*backup_mod.NEEDS)
    state.run.labels["kind"] = Kind.CONFIG_ONLY.value
    repo = storage()
    request = backup_mod.Request(kind=Kind.CONFIG_ONLY.value, labels={"trigger": "watch"})

    def take() -> str:
        return backup_mod.run(current, repo, request).backup_id

    status = Status()
    if metrics_port is not None:
        watch_metrics.serve(status, metrics_port, metrics_address)
        log.info("metrics on http://%s:%d/metrics", metrics_address, metrics_port)
    events = stream.EventStream(current.prefect_api_url) if current.prefect_api_url else None
    if events is None:
        log.warning("no Prefect API URL (PREFECT_API_URL): watching by polling the "
                    "configuration tables only")
    loop.run(options, backup=take, poller=poll.ConfigPoller(str(current.database_url)),
             stream=events, status=status)
