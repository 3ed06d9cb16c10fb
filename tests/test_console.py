"""Rendering helpers: fitting tables, short times, progress figures, ISO log times, and moving
global options in front of the command."""

from __future__ import annotations

import datetime as dt
import io
import logging

import pytest

from prefect_dr import console
from prefect_dr.cli.application import hoist_globals
from prefect_dr.console import Column


def test_fit_shortens_free_text_then_drops_by_priority_never_the_essentials() -> None:
    cols = [Column("id"), Column("kind"), Column("size", priority=2),
            Column("note", priority=1, truncate=True)]
    rows = [["20261201T142205Z-a1b2c3", "config-only", "12.3 MiB", "x" * 60]]
    keep, widths = console.fit(cols, rows, 200)
    assert keep == [0, 1, 2, 3] and widths[3] == 60
    keep, widths = console.fit(cols, rows, 64)
    assert keep == [0, 1, 2, 3] and widths[3] == 64 - (23 + 11 + 8 + 3 * 3)  # shortened
    keep, widths = console.fit(cols, rows, 60)  # the note at its minimum is still too wide:
    assert keep == [0, 1, 3] and widths == [23, 11, 60 - 23 - 11 - 6]  # size goes, note grows
    keep, widths = console.fit(cols, rows, 40)
    assert keep == [0, 1] and widths == [23, 11]  # both go; the essentials stay whole
    assert console.fit(cols, rows, 40, wide=True)[0] == [0, 1, 2, 3]


def test_short_time_and_age() -> None:
    now = dt.datetime(2026, 12, 1, 15, 0, tzinfo=dt.UTC)
    assert console.short_time("2026-12-01T14:22:05.123456+00:00") == "2026-12-01 14:22"
    assert console.short_time("2026-12-01T15:22:05+01:00") == "2026-12-01 14:22"
    assert console.ago("2026-12-01T12:00:00+00:00", now) == "3h ago"
    assert console.ago("2026-11-21T15:00:00+00:00", now) == "10d ago"
    assert console.ago("2026-12-01T14:59:15+00:00", now) == "45s ago"


def test_progress_figures_have_rate_percent_and_eta() -> None:
    text = console.describe_progress({"downloaded": 50 * 2**20, "restored": 120 * 2**20},
                                     10.0, "downloaded", 100 * 2**20)
    assert "downloaded 50.0 MiB of 100.0 MiB" in text and "5.0 MiB/s" in text
    assert "50%" in text and "ETA 0:10" in text and "restored 120.0 MiB" in text
    assert "elapsed 0:10" in text
    assert "0 B/s" not in console.describe_progress({"dumped": 1 << 20}, 1.0, "dumped", None)


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_progress_line_fits_and_labels_its_timers(width: int) -> None:
    """Issue 23: the bar wrapped past 80 columns, its timers were unlabelled, MB and MiB were
    mixed, and a retry looked like a hang."""
    counters = {"downloaded": 21 * 2**20, "restored": 160 * 2**20}
    line = console.progress_line(counters, 75.0, "downloaded", 42 * 2**20, width - 1)
    assert len(line) <= width - 1 and "━" in line
    assert line.startswith("downloaded 21.0 MiB of 42.0 MiB") and "50%" in line
    assert "elapsed 1:15" in line and "ETA 1:15" in line and " MB" not in line
    retrying = console.progress_line({"dumped": 0}, 130.0, "dumped", None, width - 1,
                                     "retrying S3 upload (attempt 3, up to 120 s)")
    assert retrying == ("dumped 0 B  retrying S3 upload (attempt 3, up to 120 s)  elapsed "
                        "2:10")
    assert len(console.progress_line(counters, 5.0, "downloaded", 2**40, 40)) <= 40


def test_log_lines_on_a_terminal_carry_iso_dates() -> None:
    stream = io.StringIO()
    handler = console.log_handler(stream)
    record = logging.LogRecord("prefect_dr", logging.INFO, __file__, 1, "hello", None, None)
    handler.emit(record)
    assert dt.datetime.now().strftime("%Y-%m-%d") in stream.getvalue()


@pytest.mark.parametrize(("argv", "expected"), [
    (["backup", "--metrics-file", "m.prom", "--kind", "full"],
     ["--metrics-file", "m.prom", "backup", "--kind", "full"]),
    (["list", "--json", "-v", "--bucket=b"], ["--json", "-v", "--bucket=b", "list"]),
    (["--json", "show", "ID", "--prefix", "p"], ["--json", "--prefix", "p", "show", "ID"]),
    (["restore", "ID", "--", "--json"], ["restore", "ID", "--", "--json"]),
])
def test_global_options_move_in_front_of_the_command(argv: list[str],
                                                     expected: list[str]) -> None:
    assert hoist_globals(argv) == expected


def test_explanations_wrap_at_spaces_and_nothing_else_does(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setattr(console, "stdout_is_terminal", lambda: True)
    reason = "refusing to restore config-only backup 20261201T142205Z-a1b2c3 over prefect: " \
             "its run history would be lost (flow_run 12 rows)"
    console.table("Preflight", [Column("check"), Column("status"), Column("detail", wrap=True)],
                  [("history", "REFUSED", reason)], status_column=1)
    out = capsys.readouterr().out
    assert all(len(line) <= 60 for line in out.splitlines())
    assert "20261201T142205Z-a1b2c3" in out and "rows)" in out  # whole words, all of them
    assert "…" not in out


def test_off_a_terminal_tables_are_whole_rows_one_per_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe, a file, cron: nothing cut, nothing padded, every column, an empty cell as '-'
    (issue 23: `prefect-dr list | grep pre-upgrade` found nothing)."""
    monkeypatch.setenv("COLUMNS", "40")
    long_label = "trigger=pre-upgrade,team=data-platform,ticket=OPS-12345"
    console.table("Backups (times UTC)", [Column("id"), Column("size", 3, justify="right"),
                                          Column("labels", 6, truncate=True)],
                  [("20261201T142205Z-a1b2c3", "1.5 KiB", long_label),
                   ("20261202T142205Z-d4e5f6", "12.0 MiB", "")])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Backups (times UTC)",
                     "id                            size   labels",
                     f"20261201T142205Z-a1b2c3    1.5 KiB   {long_label}",
                     "20261202T142205Z-d4e5f6   12.0 MiB   -"]
    console.show_headers(False)
    try:
        console.table("T", [Column("a"), Column("b")], [("x", "y z")])
    finally:
        console.show_headers(True)
    assert capsys.readouterr().out == "x   y z\n"


def test_a_new_phase_names_itself_and_counts_from_zero() -> None:
    """Issue 23: a restore's safety backup ran under the download's frozen 100%."""
    from prefect_dr import pipeline

    with console.transfer_progress(enabled=False, primary="downloaded", total=100) as display:
        progress = pipeline.Progress(display, on_phase=display.phase)
        progress.add("downloaded", 100)
        assert display.describe().startswith("downloaded 100 B of 100 B")
        progress.begin("safety backup of db_pre_restore_1", "dumped")
        assert progress.counters == {} and display.latest == {}
        progress.add("dumped", 2048)
        text = display.describe()
    assert text.startswith("safety backup of db_pre_restore_1: dumped 2.0 KiB, ")
    assert "%" not in text and "of 100 B" not in text
    line = console.progress_line({"dumped": 2048}, 3.0, "dumped", None, 79,
                                 label="safety backup of db_pre_restore_1")
    assert line.startswith("safety backup of db_pre_restore_1: dumped 2.0 KiB  ")
    assert "elapsed 0:03" in line and len(line) <= 79
