"""Rendering for the CLI: rich tables on a terminal, JSON on request. Only cli.py imports this."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from prefect_dr import redact

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim",
                "complete": "green", "failed": "bold red", "incomplete": "yellow",
                "passed": "green", "keep": "green", "remove": "yellow", "locked": "cyan",
                "REFUSED": "bold red", "corrupt": "bold red"}


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


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@contextlib.contextmanager
def transfer_progress(enabled: bool = True, interval_s: float = 5.0
                      ) -> Iterator[Callable[[dict[str, int]], None]]:
    """Yield a progress listener: a rich live line on a terminal, else a JSON log line every
    ``interval_s`` seconds."""
    logger = logging.getLogger("prefect_dr.progress")
    start = time.monotonic()
    last = [0.0]
    if enabled and sys.stderr.isatty():
        progress = Progress(TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=err_console(), transient=True)
        with progress:
            task = progress.add_task("starting")

            def show(counters: dict[str, int]) -> None:
                now = time.monotonic()
                if now - last[0] < 0.2:
                    return
                last[0] = now
                rate = counters.get("uploaded", 0) / max(now - start, 1e-6)
                progress.update(task, description="  ".join(
                    f"{k} {human_bytes(v)}" for k, v in counters.items())
                    + f"  ({human_bytes(int(rate))}/s)")

            yield show
        return

    def log_line(counters: dict[str, int]) -> None:
        now = time.monotonic()
        if now - last[0] < interval_s:
            return
        last[0] = now
        logger.info("progress", extra={"bytes": dict(counters),
                                       "elapsed_s": round(now - start, 1)})

    yield log_line
