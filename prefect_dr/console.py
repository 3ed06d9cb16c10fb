"""Rendering for the CLI: rich tables on a terminal, JSON on request. Only cli.py imports this."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import Progress, ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from prefect_dr import redact
from prefect_dr.units import clock, human_bytes, utc_time

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim",
                "complete": "green", "failed": "bold red", "incomplete": "yellow",
                "passed": "green", "keep": "green", "remove": "yellow", "locked": "cyan",
                "refused": "bold red", "corrupt": "bold red"}


class _StdoutConsole(Console):
    """rich's Console exits 1 when stdout's reader is gone; ours raises BrokenPipeError, which
    the CLI turns into a quiet exit 0 (``prefect-dr list | head -2`` is no failure)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "stdout closed")


def out() -> Console:
    """Console for results on stdout."""
    return _StdoutConsole(file=sys.stdout, highlight=False, soft_wrap=False)


_ERR: Console | None = None


def err_console(stream: TextIO | None = None) -> Console:
    """Console for messages on stderr: one shared instance, so that log lines and the live
    progress line go through the same console and never collide."""
    global _ERR
    if stream is not None:
        return Console(file=stream, highlight=False)
    if _ERR is None or _ERR.file is not sys.stderr:
        _ERR = Console(file=sys.stderr, highlight=False, stderr=True)
    return _ERR


def log_handler(stream: TextIO | None = None) -> RichHandler:
    """The rich logging handler used on a terminal (ISO times)."""
    return RichHandler(console=err_console(stream), show_path=False, markup=False,
                       show_level=True, rich_tracebacks=False,
                       log_time_format="[%Y-%m-%d %H:%M:%S]")


#: The version of the ``--json`` documents (docs/json.md): raised when a key is removed or
#: changes meaning; new keys do not raise it.
JSON_SCHEMA_VERSION = 1


def document(obj: dict[str, Any]) -> dict[str, Any]:
    """A ``--json`` document: ``ok`` (true unless the command says otherwise) and
    ``schema_version`` first, then the command's own keys."""
    return {"ok": obj.get("ok", True), "schema_version": JSON_SCHEMA_VERSION,
            **{k: v for k, v in obj.items() if k != "ok"}}


def print_json(obj: dict[str, Any]) -> None:
    """Print ``obj`` as one JSON document on stdout (:func:`document`, redacted)."""
    sys.stdout.write(redact.redact(json.dumps(document(obj), indent=2, default=str,
                                              sort_keys=False)))
    sys.stdout.write("\n")
    sys.stdout.flush()


#: Whether tables print their title and column headers (``--no-headers`` turns them off).
HEADERS = {"on": True}


def show_headers(on: bool) -> None:
    """Print tables with (default) or without their title and header line (``--no-headers``)."""
    HEADERS["on"] = on


def stdout_is_terminal() -> bool:
    """Whether results go to a terminal (fitted tables) or to a pipe or file (plain rows)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def styled(value: str) -> str:
    """Wrap a status word in its colour markup."""
    style = STATUS_STYLE.get(value.lower())
    return f"[{style}]{value}[/]" if style else value


@dataclass(frozen=True)
class Column:
    """A table column. ``priority`` 0 is always shown; when the terminal is too narrow, columns
    with the highest priority number go first. ``truncate`` columns (free text) are shortened
    with an ellipsis before any column is dropped; ``wrap`` columns (explanations that must be
    read whole: a plan, a failed check's reason) are narrowed too, and wrap at spaces instead.
    No other column ever wraps."""

    header: str
    priority: int = 0
    truncate: bool = False
    justify: str = "left"
    wrap: bool = False

    @property
    def shrinks(self) -> bool:
        """Whether the column may be narrower than its content."""
        return self.truncate or self.wrap


_MIN_TRUNCATED = 12
_MAX_WORD = 30  # a wrapped column is kept as wide as its longest word, up to this
_PAD = 3  # between two columns: a space each side and the blank divider (box.SIMPLE_HEAD)


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
        wide: bool = False) -> tuple[list[int], list[int]]:
    """Which columns to show and how wide: (indexes kept, widths). Free text is shortened
    first, then columns are dropped by priority, never wrapped."""
    natural = [max([len(c.header)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    keep = list(range(len(columns)))
    widths = dict(enumerate(natural))
    if wide:
        return keep, [widths[i] for i in keep]

    def total() -> int:
        return sum(widths[i] + _PAD for i in keep) - _PAD

    for i in keep:
        if columns[i].shrinks and total() > width:
            least = max(_MIN_TRUNCATED, len(columns[i].header))
            if columns[i].wrap:  # wide enough for its longest word (up to a limit)
                least = max(least, min(_MAX_WORD, max(
                    (len(w) for r in rows for w in r[i].split()), default=0)))
            widths[i] = max(min(least, natural[i]), widths[i] - (total() - width))
    while total() > width:
        droppable = [i for i in keep if columns[i].priority > 0]
        if not droppable:
            break
        # an empty column goes first (it shows nothing), then the least important
        keep.remove(max(droppable, key=lambda i: (not any(r[i] for r in rows),
                                                  columns[i].priority, i)))
    for i in keep:  # still too wide: wrapped text may split a long word after all
        if columns[i].shrinks and total() > width:
            least = max(_MIN_TRUNCATED, len(columns[i].header))
            widths[i] = max(min(least, natural[i]), widths[i] - (total() - width))
    for i in keep:  # room freed by a dropped column goes back to shortened text
        if columns[i].shrinks and total() < width:
            widths[i] = min(natural[i], widths[i] + width - total())
    return keep, [widths[i] for i in keep]


def table(title: str, columns: Sequence[str | Column], rows: Iterable[Sequence[Any]],
          status_column: int | None = None, *, wide: bool = False,
          caption: str | None = None) -> None:
    """Print a table on stdout. On a terminal it is fitted to the width (no id or time ever
    wraps: free text is shortened, explanations wrap at spaces, low-priority columns dropped;
    ``wide`` keeps all) and ``status_column`` gets status colours. Off a terminal (a pipe, a
    file, cron) every column is printed whole, one row per line (:func:`plain_lines`). Cells
    are redacted."""
    cols = [c if isinstance(c, Column) else Column(c, truncate=True) for c in columns]
    cells = [[redact.redact("" if c is None else str(c)) for c in row] for row in rows]
    if not stdout_is_terminal():
        sys.stdout.write("".join(f"{text}\n" for text in plain_lines(
            title, [c.header for c in cols], cells, [c.justify for c in cols],
            headers=HEADERS["on"])))
        sys.stdout.flush()
        return
    console = out()
    keep, widths = fit(cols, cells, console.width, wide)
    t = Table(title=title if HEADERS["on"] else None, show_header=HEADERS["on"],
              title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False, caption=caption, caption_justify="left")
    for i, w in zip(keep, widths, strict=True):
        t.add_column(cols[i].header, no_wrap=not cols[i].wrap,
                     overflow="fold" if cols[i].wrap else "ellipsis", width=w,
                     justify=cols[i].justify)  # type: ignore[arg-type]
    for row in cells:
        shown = []
        for i in keep:
            text = escape(row[i])
            shown.append(styled(text) if i == status_column else text)
        t.add_row(*shown)
    if wide:
        console = _StdoutConsole(file=sys.stdout, highlight=False, soft_wrap=False,
                                 width=max(console.width, sum(widths) + _PAD * len(widths)))
    console.print(t)


EMPTY = "-"


def plain_lines(title: str, header: Sequence[str], rows: Sequence[Sequence[str]],
                justify: Sequence[str], *, headers: bool = True) -> list[str]:
    """A table for a script (the shape of ``kubectl get``): the title, the header line, then
    one line per row; every column whole, aligned with three spaces, an empty cell as ``-``
    (so that fields keep their place for ``awk``), no trailing spaces. ``headers`` False
    (``--no-headers``) leaves out the title and the header line."""
    body = [[" ".join(c.split()) or EMPTY for c in row] for row in rows]
    shown = ([list(header)] if headers and any(header) else []) + body
    if not shown:
        return [title] if headers and title else []
    widths = [max(len(r[i]) for r in shown) for i in range(len(header))]
    lines = [title] if headers and title else []
    for row in shown:
        cells = [c.rjust(w) if j == "right" else c.ljust(w)
                 for c, w, j in zip(row, widths, justify, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return lines


def short_time(iso: str | None) -> str:
    """'2026-12-01T14:22:05.123456+00:00' -> '2026-12-01 14:22' (UTC)."""
    if not iso:
        return ""
    when = utc_time(iso)
    return iso if when is None else when.strftime("%Y-%m-%d %H:%M")


def ago(iso: str | None, now: dt.datetime | None = None) -> str:
    """How long before ``now`` an ISO time was: '45s ago', '3h ago', '12d ago'."""
    if not iso:
        return ""
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    seconds = int(((now or dt.datetime.now(dt.UTC)) - when).total_seconds())
    if seconds < 0:
        return "in future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def error(message: str) -> None:
    """Print a one-line error on stderr."""
    err_console().print(f"[bold red]error:[/] {escape(redact.redact(message))}", markup=True,
                        highlight=False, soft_wrap=True)


def highlight(message: str) -> None:
    """On a terminal, print a line on stderr that must not be missed among the log lines
    (bold, framed by blank lines). Off a terminal nothing: stderr holds only JSON log lines
    there, and the log line of the same event says it."""
    if sys.stderr.isatty():
        err_console().print(f"\n[bold green]>>> {escape(redact.redact(message))}[/]\n",
                            markup=True, highlight=False, soft_wrap=True)


def paragraph(message: str) -> None:
    """Print text on stderr wrapped at spaces to the terminal's width (text a person must
    read whole, such as what a confirmation is about)."""
    err_console().print(redact.redact(message), markup=False, highlight=False)


def info(message: str) -> None:
    """Print a one-line note on stderr."""
    err_console().print(redact.redact(message), markup=False, highlight=False, soft_wrap=True)


def line(message: str) -> None:
    """Print a plain line on stdout."""
    sys.stdout.write(redact.redact(message) + "\n")


def _rate(n: float) -> str:
    return f"{human_bytes(int(n))}/s"


def describe_progress(counters: dict[str, int], elapsed_s: float, primary: str,
                      total: int | None, label: str | None = None) -> str:
    """One line of figures for a log: the phase's ``label`` (when the operation has phases),
    every stage's bytes, the primary stage's rate, percent and ETA (when its total is known),
    and the elapsed time, each labelled."""
    done = counters.get(primary, 0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    parts = [f"{k} {human_bytes(v)}" + (f" of {human_bytes(total)}" if k == primary and total
                                         else "") for k, v in counters.items()]
    parts.append(f"{_rate(rate)}")
    if total:
        parts.append(f"{min(100.0, 100.0 * done / total):.0f}%")
        if rate > 0 and done < total:
            parts.append(f"ETA {clock((total - done) / rate)}")
    parts.append(f"elapsed {clock(elapsed_s)}")
    return (f"{label}: " if label else "") + ", ".join(parts)


_BAR_MIN, _BAR_MAX = 10, 30


def progress_line(counters: dict[str, int], elapsed_s: float, primary: str,
                  total: int | None, width: int, retrying: str | None = None,
                  label: str | None = None) -> str:
    """The live progress line, never wider than ``width``: the phase's ``label`` (when the
    operation has phases), the primary stage's bytes (of the phase's total), a bar when the
    total is known and there is room, percent, rate, labelled elapsed time and ETA; a retry in
    progress replaces the rate and ETA; other stages' bytes when there is room. IEC units
    throughout."""
    done = counters.get(primary, 0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    head = ((f"{label}: " if label else "") + f"{primary} {human_bytes(done)}"
            + (f" of {human_bytes(total)}" if total else ""))
    figures = []
    if total:
        figures.append(f"{min(100.0, 100.0 * done / total):.0f}%")
    if retrying:
        figures.append(retrying)
    else:
        figures.append(_rate(rate))
    figures.append(f"elapsed {clock(elapsed_s)}")
    if total and rate > 0 and done < total and not retrying:
        figures.append(f"ETA {clock((total - done) / rate)}")
    tail = "  ".join(figures)
    others = ", ".join(f"{k} {human_bytes(v)}" for k, v in counters.items() if k != primary)
    line = f"{head}  {tail}"
    room = width - len(line) - 2
    if total and room < _BAR_MIN and not retrying:  # narrow: the bar says more than the rate
        figures.remove(_rate(rate))
        tail = "  ".join(figures)
        line = f"{head}  {tail}"
        room = width - len(line) - 2
    if total and room >= _BAR_MIN:
        size = min(_BAR_MAX, room)
        filled = min(size, int(size * done / total))
        line = f"{head} {'━' * filled}{'─' * (size - filled)} {tail}"
    if others and len(line) + len(others) + 4 <= width:
        line += f"  ({others})"
    return line[:width]


class ProgressDisplay:
    """What :func:`transfer_progress` yields: called with the counters of the running
    transfer; :meth:`phase` starts a new phase (its label, primary stage and total; the
    elapsed time starts again). Thread-safe enough for one writer thread and one drawer."""

    def __init__(self, primary: str, total: int | None, draw: Callable[[], None]) -> None:
        self.primary, self.total, self.label = primary, total, None
        self.start = time.monotonic()
        self.latest: dict[str, int] = {}
        self._draw = draw

    def __call__(self, counters: dict[str, int]) -> None:
        self.latest = dict(counters)
        self._draw()

    def phase(self, label: str, primary: str, total: int | None = None) -> None:
        """Count ``primary`` of ``total`` bytes from now on, under ``label``."""
        self.label, self.primary, self.total = label, primary, total
        self.start = time.monotonic()
        self.latest = {}
        self._draw()

    def describe(self) -> str:
        """The figures as one log line."""
        return describe_progress(self.latest, time.monotonic() - self.start, self.primary,
                                 self.total, self.label)


@contextlib.contextmanager
def transfer_progress(enabled: bool = True, *, primary: str = "dumped",
                      total: int | None = None, interval_s: float = 5.0
                      ) -> Iterator[ProgressDisplay]:
    """Yield a progress display (:class:`ProgressDisplay`). On a terminal: a live line
    (:func:`progress_line`, redrawn ten times a second so that elapsed time and a retry show
    even while no byte moves) on the console of the log lines, so the two never collide.
    Otherwise: a log line with the figures every ``interval_s`` seconds and one at the end.
    ``total`` is every byte of the ``primary`` stage the operation (its first phase)
    expects."""
    from prefect_dr import retry

    logger = logging.getLogger("prefect_dr.progress")
    last = [0.0]
    retrying: list[str | None] = [None]
    if enabled and sys.stderr.isatty():
        console = err_console()
        display = ProgressDisplay(primary, total, lambda: None)

        class _Line(ProgressColumn):
            def render(self, task: Task) -> Text:
                return Text(progress_line(display.latest, time.monotonic() - display.start,
                                          display.primary, display.total,
                                          max(20, console.width - 1), retrying[0],
                                          display.label),
                            no_wrap=True, overflow="crop")

        progress = Progress(_Line(), console=console, transient=True)

        def note(state: str | None) -> None:
            retrying[0] = state

        with progress, retry.observed(note):
            progress.add_task(primary, total=None)
            yield display
        return

    def log_line() -> None:
        now = time.monotonic()
        if now - last[0] < interval_s:
            return
        last[0] = now
        if display.latest:
            _log_progress(logger, display)

    display = ProgressDisplay(primary, total, log_line if enabled else (lambda: None))
    yield display
    if display.latest and enabled:
        _log_progress(logger, display)


def _log_progress(logger: logging.Logger, display: ProgressDisplay) -> None:
    logger.info("progress: %s", display.describe(),
                extra={"bytes": dict(display.latest),
                       "elapsed_s": round(time.monotonic() - display.start, 1),
                       "total_bytes": display.total, "phase": display.label})
