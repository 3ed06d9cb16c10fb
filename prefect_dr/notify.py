"""Notifications of a run's outcome, sent with apprise (Slack, Teams, e-mail, webhooks, ...).

Targets are apprise URLs in ``PREFECT_DR_NOTIFY`` (one or more, separated by spaces or
commas). They hold tokens, so they are a secret setting: read from the environment or the
config file, never from argv, redacted everywhere, and never part of a message.

What is sent (:func:`wanted`): a failed ``backup``, ``verify``, ``restore`` or ``prune`` (any
non-zero exit); a ``verify`` that passed after the previous verification failed; ``status``
only when asked (``status --notify``) and stale; with ``PREFECT_DR_NOTIFY_ON=always`` also
every success of those commands. ``--no-notify`` silences a run.

The message is short — what happened, which backup and kind, the error line, the run id and
the host — and passes through ``redact``. A notification that cannot be delivered is logged as
a warning; it never raises, so it never changes the command's exit code.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect_dr import errors, interrupt, redact

log = logging.getLogger(__name__)

NOTIFY_ENV = "PREFECT_DR_NOTIFY"
NOTIFY_ON_ENV = "PREFECT_DR_NOTIFY_ON"
ON_FAILURE = "failure"
ON_ALWAYS = "always"
ON_CHOICES = (ON_FAILURE, ON_ALWAYS)
#: Commands that notify by themselves when targets are configured; ``status`` only when asked.
COMMANDS = frozenset({"backup", "verify", "restore", "prune"})
_SPLIT = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.\-]*://)|^\s+|\s+$")


def split_urls(text: str | None) -> list[str]:
    """The apprise URLs in ``text``: separated by whitespace or commas (a comma inside a URL,
    e.g. in ``mailto://...?to=a@x,b@x``, stays in it)."""
    if not text:
        return []
    return [part.strip(" ,") for part in _SPLIT.split(text) if part and part.strip(" ,")]


def register_secrets(text: str | None) -> None:
    """Register the URLs of ``text`` with ``redact``, each one and all of them together."""
    redact.register(text)
    for url in split_urls(text):
        redact.register(url)


@dataclass(frozen=True)
class Outcome:
    """How one run ended, as a notification tells it."""

    command: str
    exit_code: int
    run_id: str
    host: str
    error: str | None = None  # the error line
    backup_id: str | None = None  # which backup(s), when known
    kind: str | None = None
    detail: str | None = None  # more of what happened (status: what is stale)
    recovered: bool = False  # verify passed after the previous verification had failed
    instance: str | None = None  # the metrics instance (a stable name on Kubernetes)

    @property
    def ok(self) -> bool:
        """The run succeeded (exit 0)."""
        return self.exit_code == errors.OK


def may_notify(command: str, asked: bool | None = None) -> bool:
    """Whether a run of ``command`` may notify at all. ``asked``: ``--notify`` (True),
    ``--no-notify`` (False) or neither (None)."""
    if asked is False:
        return False
    return bool(asked) if command == "status" else command in COMMANDS


def wanted(outcome: Outcome, *, on: str = ON_FAILURE, asked: bool | None = None) -> bool:
    """Whether ``outcome`` is worth a notification (``asked`` as in :func:`may_notify`)."""
    if not may_notify(outcome.command, asked):
        return False
    return not outcome.ok or outcome.recovered or on == ON_ALWAYS


def _verb(outcome: Outcome) -> str:
    if outcome.command == "status":
        return "are fresh" if outcome.ok else "are stale"
    if outcome.recovered:
        return "passed after a failed verification"
    if outcome.ok:
        return "succeeded"
    if outcome.exit_code == errors.INTERRUPTED:
        return "was interrupted"
    return "failed"


def message(outcome: Outcome) -> tuple[str, str, str]:
    """Title, body and apprise type (``info``, ``success``, ``warning``, ``failure``) of the
    notification; every line redacted."""
    what = "backups" if outcome.command == "status" else outcome.command
    title = f"prefect-dr {what} {_verb(outcome)} on {outcome.instance or outcome.host}"
    code = outcome.exit_code
    lines = [f"{what} {_verb(outcome)}"
             + ("" if outcome.ok else f" (exit {code}: {errors.exit_name(code)})")]
    if outcome.backup_id:
        lines.append(f"backup: {outcome.backup_id}"
                     + (f" ({outcome.kind})" if outcome.kind else ""))
    elif outcome.kind:
        lines.append(f"kind: {outcome.kind}")
    if outcome.error:
        lines.append(f"error: {outcome.error}")
    if outcome.detail:
        lines.append(outcome.detail)
    lines.append(f"run: {outcome.run_id}")
    lines.append(f"host: {outcome.host}")
    if outcome.instance and outcome.instance != outcome.host:
        lines.append(f"instance: {outcome.instance}")
    body = "\n".join(redact.redact(" ".join(line.split())) for line in lines)
    if outcome.ok:
        kind = "success"
    elif outcome.command == "status":
        kind = "warning"
    else:
        kind = "failure"
    return redact.redact(title), body, kind


def targets(settings: Any | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The notification URLs and NOTIFY_ON from the settings, or, when the settings could not
    be loaded (a configuration error is worth a notification too), from ``env``."""
    if settings is not None:
        return settings.notify_urls, settings.notify_on or ON_FAILURE
    urls = env.get(NOTIFY_ENV) or None
    register_secrets(urls)
    on = (env.get(NOTIFY_ON_ENV) or ON_FAILURE).strip().lower()
    return urls, on if on in ON_CHOICES else ON_FAILURE


def deliver(outcome: Outcome, urls: str | None, *, on: str = ON_FAILURE,
            asked: bool | None = None) -> bool | None:
    """Send the notification ``outcome`` is worth to ``urls``. Returns None when nothing was
    due (or no target is set), True when every target took it, False otherwise (logged as a
    WARNING). Raises nothing but Interrupted, when a stop signal came while sending."""
    if not urls or not wanted(outcome, on=on, asked=asked):
        return None
    try:
        return _send(split_urls(urls), *message(outcome))
    except Exception as exc:  # a notification never changes the outcome of the run
        interrupt.raise_if_noted()  # a stop signal while sending: the caller decides
        log.warning("notification not sent: %s",
                    redact.redact(f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return False


def _send(urls: list[str], title: str, body: str, kind: str) -> bool:
    """Send through apprise; apprise's own log lines (which may show URL parts) are captured,
    not propagated, and only their redacted last line is reported."""
    import apprise

    apprise_log = logging.getLogger("apprise")
    propagate = apprise_log.propagate
    apprise_log.propagate = False
    try:
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            sender = apprise.Apprise()
            bad = [i for i, url in enumerate(urls, 1) if not sender.add(url)]
            sent = bool(len(sender)) and bool(sender.notify(
                title=title, body=body, notify_type=apprise.NotifyType(kind),
                body_format=apprise.NotifyFormat.TEXT))
            lines = [line for line in captured.getvalue().splitlines() if line.strip()]
    finally:
        apprise_log.propagate = propagate
    for index in bad:
        log.warning("notification target %d of %d in %s is not a URL apprise can use", index,
                    len(urls), NOTIFY_ENV)
    if sent and not bad:
        log.info("notification sent to %d target(s)", len(urls) - len(bad))
        return True
    if not sent and len(sender):
        reason = redact.redact(" ".join(lines[-1].split())) if lines else "no reason given"
        log.warning("notification not delivered (%s): %s", NOTIFY_ENV, reason)
    return False
