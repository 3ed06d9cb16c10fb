"""Rendering for the CLI: rich tables on a terminal, JSON on request. Only cli.py imports this."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from prefect_dr import redact

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim",
                "complete": "green", "failed": "bold red", "incomplete": "yellow",
                "passed": "green"}


def out() -> Console:
    """Console for results on stdout."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def err_console(stream: TextIO | None = None) -> Console:
    """Console for messages on stderr."""
    return Console(file=stream or sys.stderr, highlight=False, stderr=stream is None)


def log_handler(stream: TextIO | None = None) -> RichHandler:
    """The rich logging handler used on a terminal."""
    return RichHandler(console=err_console(stream), show_path=False, markup=False,
                       show_level=True, rich_tracebacks=False)


def print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout (redacted)."""
    sys.stdout.write(redact.redact(json.dumps(obj, indent=2, default=str, sort_keys=False)))
    sys.stdout.write("\n")
    sys.stdout.flush()


def styled(value: str) -> str:
    """Wrap a status word in its colour markup."""
    style = STATUS_STYLE.get(value.lower())
    return f"[{style}]{value}[/]" if style else value


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          status_column: int | None = None) -> None:
    """Print a table on stdout; cells are redacted; ``status_column`` gets status colours."""
    t = Table(title=title, title_justify="left", show_lines=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        cells = [redact.redact("" if c is None else str(c)).replace("[", r"\[") for c in row]
        if status_column is not None:
            cells[status_column] = styled(cells[status_column])
        t.add_row(*cells)
    out().print(t)


def error(message: str) -> None:
    """Print a one-line error on stderr."""
    err_console().print(f"[bold red]error:[/] {escape(redact.redact(message))}", markup=True,
                        highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """Print a one-line note on stderr."""
    err_console().print(redact.redact(message), markup=False, highlight=False, soft_wrap=True)


def line(message: str) -> None:
    """Print a plain line on stdout."""
    sys.stdout.write(redact.redact(message) + "\n")
