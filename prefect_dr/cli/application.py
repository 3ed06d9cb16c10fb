"""The typer application, its global options, and the turning of every outcome into an exit code.

Global options work before or after the subcommand (as restic, kubectl and the AWS CLI accept
them): :func:`hoist_globals` moves them in front of the subcommand before parsing, and every
subcommand's help lists them (:data:`GLOBALS_EPILOG`). Command modules register themselves on
:data:`app` (and :data:`config_app`, :data:`k8s_app`); ``prefect_dr.cli`` imports them all.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import logging
import os
import signal
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from prefect_dr import __version__, config, console, errors, interrupt, log, redact
from prefect_dr.cli import helptext

logger = logging.getLogger("prefect_dr")


@dataclass(frozen=True)
class GlobalOption:
    """One global option: its flags, whether it takes a value, and its help."""

    flags: tuple[str, ...]
    metavar: str | None  # None: a flag without value
    help: str


GLOBAL_OPTIONS: tuple[GlobalOption, ...] = (
    GlobalOption(("--config",), "PATH", "TOML settings file (also PREFECT_DR_CONFIG)."),
    GlobalOption(("--json",), None, "Machine-readable JSON on stdout."),
    GlobalOption(("--no-headers",), None,
                 "Tables without their title and header line (for scripts)."),
    GlobalOption(("--log-format",), "auto|text|json",
                 "auto (text on a terminal, JSON lines otherwise), text or json."),
    GlobalOption(("-v", "--verbose"), None, "Debug logs and tracebacks."),
    GlobalOption(("--metrics-file",), "PATH",
                 "Write Prometheus metrics to this file (node_exporter textfile collector; "
                 "also PREFECT_DR_METRICS_FILE)."),
    GlobalOption(("--pushgateway",), "URL",
                 "Push Prometheus metrics to this Pushgateway (also PREFECT_DR_PUSHGATEWAY_URL)."),
    GlobalOption(("--metrics-instance",), "NAME",
                 "instance label for pushed metrics (default: host name)."),
    GlobalOption(("--notify", "--no-notify"), None,
                 "Notify the PREFECT_DR_NOTIFY targets of this run's outcome, or not: backup, "
                 "verify, restore and prune notify by default, status only with --notify."),
    GlobalOption(("--repository",), "URL", "Repository: s3://BUCKET/PREFIX, file:///PATH, "
                 "azure://CONTAINER/PREFIX or gs://BUCKET/PREFIX."),
    GlobalOption(("--bucket",), "NAME", "S3 bucket."),
    GlobalOption(("--prefix",), "PREFIX", "Key prefix."),
    GlobalOption(("--endpoint-url",), "URL", "S3-compatible endpoint."),
    GlobalOption(("--region",), "REGION", "S3 region."),
    GlobalOption(("--database-url",), "URL", "Prefect database URL, without password."),
)
_ARITY = {flag: opt.metavar is not None for opt in GLOBAL_OPTIONS for flag in opt.flags}
_HELP = {opt.flags[-1]: opt.help for opt in GLOBAL_OPTIONS}
GLOBALS_EPILOG = "\b\nGlobal options, here or before the command ('prefect-dr --help'):\n" + \
    "\n".join(textwrap.wrap(", ".join(
        "/".join(o.flags) + (f" {o.metavar}" if o.metavar else "") for o in GLOBAL_OPTIONS),
        width=74, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False))


def hoist_globals(argv: list[str]) -> list[str]:
    """Move every global option (with its value) in front of the subcommand, keeping order;
    nothing after a ``--`` moves."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name in _ARITY:
            if _ARITY[name] and "=" not in arg and i + 1 < len(argv):
                front += argv[i:i + 2]
                i += 2
                continue
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="prefect-dr",
    help="Disaster recovery for self-hosted Prefect servers: encrypted, verified backups to S3, "
         "restores you can undo. New here? 'prefect-dr keygen', then 'prefect-dr doctor' "
         "(README: quick start).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=helptext.TaskGroup,
    context_settings=HELP_OPTIONS,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True,
                         context_settings=HELP_OPTIONS)
app.add_typer(config_app, name="config")
k8s_app = typer.Typer(help="Kubernetes objects for running prefect-dr.", no_args_is_help=True,
                      context_settings=HELP_OPTIONS)
app.add_typer(k8s_app, name="k8s")
_GROUPS = {id(config_app): "config ", id(k8s_app): "k8s "}


class PipeClosed(Exception):
    """stdout's reader went away (``prefect-dr list | head -2``). Not an OSError, so that
    click does not turn it into exit 1 before the CLI sees it."""


def command(typer_app: typer.Typer = app, name: str | None = None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@typer_app.command(name)`` with the global options listed in its help, and a closed
    stdout pipe reported as :class:`PipeClosed`."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BrokenPipeError:
                raise PipeClosed() from None

        path = _GROUPS.get(id(typer_app), "") + (name or fn.__name__.replace("_", "-"))
        return typer_app.command(name, cls=helptext.WordsCommand,
                                 epilog=helptext.examples_epilog(path) + GLOBALS_EPILOG)(run)

    return register


class LogFormat(enum.StrEnum):
    """Values of --log-format."""

    auto = "auto"
    text = "text"
    json = "json"


@dataclass
class State:
    """Global options, shared by every command."""

    config_file: Path | None = None
    json: bool = False
    verbose: bool = False
    metrics_file: Path | None = None
    pushgateway: str | None = None
    metrics_instance: str | None = None
    run: Any = None  # metrics.RunMetrics of this invocation
    notify: bool | None = None  # --notify / --no-notify
    error: str | None = None  # the reported error line
    notes: dict[str, str] = field(default_factory=dict)  # backup, kind, detail, recovered
    flags: dict[str, tuple[Any, str]] | None = None
    _settings: config.Settings | None = None
    storages: dict[bool, Any] = field(default_factory=dict)  # read_only -> this run's storage

    def settings(self) -> config.Settings:
        """Load (once) and return the effective settings. Raises ConfigError."""
        if self._settings is None:
            self._settings = config.load(config_file=self.config_file, flags=self.flags)
            for warning in self._settings.warnings:
                logger.warning(warning)
        return self._settings


state = State()


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
        "--config", envvar=config.CONFIG_ENV, help=_HELP["--config"])] = None,
    json_output: Annotated[bool, typer.Option("--json", help=_HELP["--json"])] = False,
    no_headers: Annotated[bool, typer.Option("--no-headers", help=_HELP["--no-headers"])
                          ] = False,
    log_format: Annotated[LogFormat, typer.Option(
        "--log-format", help=_HELP["--log-format"], case_sensitive=False)] = LogFormat.auto,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help=_HELP["--verbose"])] = False,
    repository: Annotated[str | None, typer.Option(
        "--repository", help=_HELP["--repository"])] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help=_HELP["--bucket"])] = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help=_HELP["--prefix"])] = None,
    endpoint_url: Annotated[str | None, typer.Option(
        "--endpoint-url", help=_HELP["--endpoint-url"])] = None,
    region: Annotated[str | None, typer.Option("--region", help=_HELP["--region"])] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help=_HELP["--database-url"])] = None,
    metrics_file: Annotated[Path | None, typer.Option(
        "--metrics-file", envvar="PREFECT_DR_METRICS_FILE", help=_HELP["--metrics-file"])
    ] = None,
    pushgateway: Annotated[str | None, typer.Option(
        "--pushgateway", envvar="PREFECT_DR_PUSHGATEWAY_URL", help=_HELP["--pushgateway"])
    ] = None,
    metrics_instance: Annotated[str | None, typer.Option(
        "--metrics-instance", envvar="PREFECT_DR_METRICS_INSTANCE",
        help=_HELP["--metrics-instance"])] = None,
    notify: Annotated[bool | None, typer.Option(
        "--notify/--no-notify", help=_HELP["--no-notify"], show_default=False)] = None,
) -> None:
    """Global options (before or after the command); settings also come from the config file
    and PREFECT_DR_* variables."""
    from prefect_dr import metrics

    state.metrics_file, state.pushgateway = metrics_file, pushgateway
    state.metrics_instance = metrics_instance
    state.notify, state.error, state.notes = notify, None, {}
    state.run = metrics.RunMetrics(ctx.invoked_subcommand or "none", time.time())
    state.config_file = config_file
    state.json = json_output
    console.show_headers(not no_headers)
    state.verbose = verbose
    state.flags = {
        "repository": (repository, "--repository"),
        "s3_bucket": (bucket, "--bucket"),
        "s3_prefix": (prefix, "--prefix"),
        "s3_endpoint_url": (endpoint_url, "--endpoint-url"),
        "s3_region": (region, "--region"),
        "database_url": (database_url, "--database-url"),
    }
    state._settings = None
    state.storages = {}
    log.setup(log_format.value, verbose,
              text_handler=console.log_handler() if log_format != LogFormat.json else None)


#: Seconds a stopped run may take to clean up (abort uploads, write its failed record, release
#: its locks) before it exits anyway: whatever the database or the store is doing, a stop
#: ends the run well within Kubernetes' default 30 s grace (docs/reliability.md, I3).
STOP_DEADLINE_S = 15.0


def _on_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if interrupt.pending() is not None:  # a second stop: no more clean-up
        _exit_now(f"{name} again: exiting without further clean-up")
    timer = threading.Timer(STOP_DEADLINE_S, _exit_now,
                            (f"clean-up did not finish within {STOP_DEADLINE_S:.0f}s of "
                             f"{name}: exiting; the next run cleans up what is left",))
    timer.daemon = True
    timer.start()
    raise interrupt.note(name)


def _exit_now(why: str) -> None:
    """End the process at once with exit 130 (from the stop deadline's timer thread, or a
    second signal): locks die with the process and its database sessions."""
    with contextlib.suppress(Exception):
        logger.error("stopped: %s", why)
        sys.stderr.flush()
    os._exit(errors.INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every outcome into an exit code; then write metrics."""
    code = _main(argv)
    _finish_metrics(code)
    _notify(code)
    return code


def _notify(code: int) -> None:
    """Tell the notification targets how the run ended (notify.wanted says when); a
    notification that cannot be delivered is a warning, and the exit code stays ``code``."""
    import os
    import socket

    from prefect_dr import notify

    run = state.run
    if run is None or not notify.may_notify(run.command, state.notify):
        return
    try:
        try:
            current: config.Settings | None = state.settings()
        except errors.DRError:
            current = None  # a configuration error is worth a notification too
        urls, on = notify.targets(current, os.environ)
        notes = state.notes
        notify.deliver(notify.Outcome(
            command=run.command, exit_code=code, run_id=log.RUN_ID, host=socket.gethostname(),
            error=notes.get("error", state.error), backup_id=notes.get("backup"),
            kind=notes.get("kind", run.labels.get("kind")), detail=notes.get("detail"),
            recovered=notes.get("recovered") == "yes", instance=state.metrics_instance,
        ), urls, on=on, asked=state.notify)
    except Exception as exc:  # never change the exit code for a notification
        logger.warning("notification not sent: %s", redact.redact(str(exc)).splitlines()[0]
                       if str(exc) else type(exc).__name__)


def _finish_metrics(code: int) -> None:
    from prefect_dr import metrics

    run = state.run
    # watch runs until stopped: its metrics are served live (--metrics-port), not per run
    if run is None or run.command in ("none", "keygen", "config", "k8s", "watch") or not (
            state.metrics_file or state.pushgateway):
        return
    run.finished, run.success = time.time(), code == 0
    try:
        if state.metrics_file:
            metrics.write_textfile(state.metrics_file, run)
        if state.pushgateway:
            metrics.push(state.pushgateway, run, instance=state.metrics_instance)
    except errors.DRError as exc:
        logger.error("metrics not recorded: %s", exc.message)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Usage-error classes: typer's own (typer 0.20+), click's (the older typer Prefect 3.1-3.5
    pin, which raises click's exceptions)."""
    found: list[type[Exception]] = []
    own = getattr(typer, "TyperException", None)
    if isinstance(own, type):
        found.append(own)
    try:
        import click
    except ImportError:  # typer 0.20+ may come without click
        pass
    else:
        found.append(click.ClickException)
    return tuple(found)


def _help_text() -> str:
    command = typer.main.get_command(app)
    ctx = command.make_context("prefect-dr", [], resilient_parsing=True)
    return command.get_help(ctx)


def _main(argv: list[str] | None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    args = hoist_globals(list(sys.argv[1:] if argv is None else argv))
    if not args:  # no command at all: the help, exit 2 (older click would exit 0)
        sys.stderr.write(_help_text() + "\n")
        return errors.USAGE
    try:
        result = app(args=args, prog_name="prefect-dr", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except typer.Exit as exc:
        return int(exc.exit_code)
    except _usage_errors() as exc:  # usage errors: unknown flag, bad value
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            sys.stderr.write(ctx.get_help() + "\n")  # no command at all: the help, exit 2
            return errors.USAGE
        if "--json" in args:
            state.json = True  # the error may precede the parsing of --json itself
        _report(errors.UsageError(_usage_message(exc)))
        return errors.USAGE
    except (KeyboardInterrupt, typer.Abort):
        _report(errors.Interrupted("interrupted"))
        return errors.INTERRUPTED
    except (PipeClosed, BrokenPipeError):
        return _broken_pipe()
    except errors.DRError as exc:
        exc = _after_signal(exc)
        _report(exc)
        return exc.exit_code
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return _broken_pipe()
        failure = _after_signal(_os_error(exc))
        _report(failure)
        return failure.exit_code
    except Exception as exc:  # a bug: still one line unless --verbose
        failure = _after_signal(errors.DRError(f"unexpected {type(exc).__name__}: {exc} "
                                               "(run with -v for the traceback)"))
        _report(failure)
        return failure.exit_code


def _broken_pipe() -> int:
    """The reader of stdout went away (``| head``): that is how pipes end, not a failure.
    stdout is pointed at /dev/null so that the interpreter's final flush stays silent."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return errors.OK


def _after_signal(exc: errors.DRError) -> errors.DRError:
    """A run stopped by SIGINT/SIGTERM exits 130 whatever error the stop surfaced as (a
    library may have wrapped the signal's exception); the error's own text is kept."""
    stop = interrupt.pending()
    if stop is None or isinstance(exc, errors.Interrupted):
        return exc
    return errors.Interrupted(f"{stop.message}: {exc.message}")


def _os_error(exc: OSError) -> errors.DRError:
    """One actionable line for an operating-system error no core module expected."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return errors.DRError(
            f"no space left on the device{where}: free space there; a restore stages its "
            "dump in PREFECT_DR_STAGING_DIR (--jobs 1 stages nothing)")
    return errors.DRError(f"unexpected {type(exc).__name__}{where}: {exc.strerror or exc} "
                          "(run with -v for the traceback)")


def _usage_message(exc: Exception) -> str:
    """One line for a usage error: click's message and where to read the usage."""
    fmt = getattr(exc, "format_message", None)
    text = fmt() if callable(fmt) else str(exc)
    text = " ".join(str(text).split())
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "prefect-dr"
    return f"{text} (see '{path} --help')"


def _report(exc: errors.DRError) -> None:
    state.error = exc.message
    if state.verbose:
        sys.stderr.write(redact.redact(traceback.format_exc()))
    if state.json:
        console.print_json({"ok": False, "error": exc.message, "exit_code": exc.exit_code})
    problems = getattr(exc, "problems", None)
    if problems and len(problems) > 1 and sys.stderr.isatty():  # a person: as a list
        console.error(exc.message.split(": ", 1)[0] + ":")
        for problem in problems:
            console.info(f"  - {problem}")
        return
    console.error(exc.message)  # a script or a log: one line
