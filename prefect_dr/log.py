"""Logging setup: human lines on a TTY, JSON lines otherwise; redaction on every line, and a run
id on every line but a terminal's (a person there needs none; JSON and plain text lines keep it).

Core modules log with ``logging.getLogger(__name__)``; only the CLI calls ``setup``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import sys
from typing import TextIO

from prefect_dr import redact

RUN_ID = secrets.token_hex(6)


class _RunIdFilter(logging.Filter):
    """Adds ``run_id`` to every record and redacts secrets from its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = RUN_ID
        record.msg = redact.redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, run_id, msg, and any ``extra`` fields."""

    _STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"run_id", "message"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", RUN_ID),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = redact.redact(self.formatException(record.exc_info))
        return redact.redact(json.dumps(out, default=str))


def setup(
    fmt: str = "auto",
    verbose: bool = False,
    stream: TextIO | None = None,
    text_handler: logging.Handler | None = None,
) -> None:
    """Configure the root logger for ``fmt`` (auto|text|json) at INFO, or DEBUG if ``verbose``.

    ``text_handler`` is the handler for human output (the CLI passes a rich one); without it,
    text lines go to ``stream`` through a plain formatter.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if fmt == "text":
        if text_handler is not None:  # it shows time and level itself; a person at a
            handler = text_handler     # terminal needs no run id (JSON lines carry it)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.StreamHandler(stream)
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s [run %(run_id)s]"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    handler.addFilter(_RunIdFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore", "azure",
                  "google", "google_auth_httplib2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
