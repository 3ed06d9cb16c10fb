"""The CLI at a terminal and in a pipe (issues 13, 23): tables fit 80 and 120 columns without
splitting an id or a time, global options work after the command, progress lines carry their
figures without a terminal, and a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import clean_cli_env, clone_prefect_db, databases, drop_db, run_cli
from terminal import in_terminal

pytestmark = pytest.mark.integration
SHORT_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


@pytest.fixture(scope="module")
def repo(stack_env: dict[str, str], identity: tuple[Path, str]) -> Iterator[dict[str, str]]:
    """A repository of its own with a labelled full backup and a config-only backup."""
    env = clean_cli_env(stack_env, identity,
                        PREFECT_DR_S3_PREFIX=f"out-{uuid.uuid4().hex[:10]}")
    ids = []
    for args in (["--label", "trigger=nightly-schedule", "--label", "team=data-platform"],
                 ["--kind", "config-only"]):
        made = run_cli(["backup", "--json", *args], env)
        assert made.returncode == 0, made.stderr
        ids.append(json.loads(made.stdout)["backup_id"])
    env["_IDS"] = ",".join(ids)
    yield env


class _Screen:
    """The result of a command in a pseudo-terminal, shaped as run_cli's."""

    def __init__(self, code: int, text: str) -> None:
        self.returncode, self.stdout, self.stderr = code, text, text


def _at(width: int, args: list[str], env: dict[str, str]) -> _Screen:
    return _Screen(*in_terminal(args, env, width))


@pytest.mark.parametrize("width", [80, 120])
def test_tables_fit_the_terminal_and_never_split_an_id_or_a_time(repo: dict[str, str],
                                                                  width: int) -> None:
    env = repo
    ids = repo["_IDS"].split(",")
    listed = _at(width, ["list"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert all(len(line) <= width for line in lines), listed.stdout
    for backup_id, kind in zip(ids, ("full", "config-only"), strict=True):
        [row] = [line for line in lines if backup_id in line]  # the id on one line, once
        assert f" {kind} " in f" {row} " and SHORT_TIME.search(row), row
        assert "ago" in row or width < 90, row
    assert "UTC" in lines[0]  # the header says which time zone the times are in

    shown = _at(width, ["show", ids[0]], env)
    assert shown.returncode == 0, shown.stderr
    assert all(len(line) <= width for line in shown.stdout.splitlines()), shown.stdout
    assert any(ids[0] in line for line in shown.stdout.splitlines())
    started = [line for line in shown.stdout.splitlines() if line.strip().startswith("started")]
    assert started and SHORT_TIME.search(started[0]), shown.stdout

    status = _at(width, ["status", "--cron", "0 2 * * *"], env)
    assert status.returncode == 0, status.stdout + status.stderr
    status_lines = status.stdout.splitlines()
    assert all(len(line) <= width for line in status_lines), status.stdout
    [row] = [line for line in status_lines if line.startswith("full backup")]
    assert "ok" in row

    wide = _at(width, ["list", "--wide"], env)
    assert "trigger=nightly-schedule" in wide.stdout and "team=data-platform" in wide.stdout


def test_global_options_work_after_the_command(repo: dict[str, str], tmp_path: Path) -> None:
    metrics = tmp_path / "dr.prom"
    env = {k: v for k, v in repo.items() if k != "PREFECT_DR_S3_BUCKET"}
    made = run_cli(["backup", "--metrics-file", str(metrics), "--bucket",
                    repo["PREFECT_DR_S3_BUCKET"], "--kind", "config-only", "--json"], env)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["ok"] is True
    assert 'prefect_dr_last_run_success{command="backup",kind="config-only",repository="s3://' \
        f'{repo["PREFECT_DR_S3_BUCKET"]}/' in metrics.read_text()
    other = run_cli(["list", "--prefix", f"empty-{uuid.uuid4().hex[:8]}", "--json"], repo)
    assert other.returncode == 0 and json.loads(other.stdout)["backups"] == []
    helped = run_cli(["show", "--help"], repo)
    assert "--metrics-file" in helped.stdout and "--database-url" in helped.stdout


def test_progress_lines_carry_figures_without_a_terminal(repo: dict[str, str]) -> None:
    made = run_cli(["backup", "--kind", "config-only"], repo)  # stderr is a pipe: JSON logs
    assert made.returncode == 0, made.stderr
    records = [json.loads(line) for line in made.stderr.splitlines() if line.startswith("{")]
    progress = [r for r in records if r["logger"] == "prefect_dr.progress"]
    assert progress, made.stderr
    assert progress[-1]["bytes"]["dumped"] > 0 and "elapsed_s" in progress[-1]
    assert re.search(r"dumped \d.* /s|/s, ", progress[-1]["msg"]), progress[-1]["msg"]

    checked = run_cli(["verify", "--latest", "--kind", "config-only"], repo)
    assert checked.returncode == 0, checked.stderr
    records = [json.loads(line) for line in checked.stderr.splitlines() if line.startswith("{")]
    [last] = [r for r in records if r["logger"] == "prefect_dr.progress"][-1:]
    assert last["total_bytes"] > 0 and "downloaded" in last["bytes"]
    assert "100%" in last["msg"] and " of " in last["msg"], last["msg"]


def test_a_closed_pipe_ends_quietly(repo: dict[str, str]) -> None:
    """`prefect-dr show ID | head -2`: the reader is gone before we write; exit 0, no
    error, no traceback (was exit 1)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "prefect_dr", "show",
                               repo["_IDS"].split(",")[0]], env=repo, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr


@pytest.mark.parametrize("width", [80, 120])
def test_the_restore_prompt_stands_on_its_own(repo: dict[str, str], width: int) -> None:
    """Issue 23: the prompt came after 75 lines of plan, the line saying what is renamed had
    scrolled away, and nothing said the backup's age, that nothing had changed yet, that the
    live database is kept, or how to undo it. A wrong name: nothing changes, exit 2."""
    full = repo["_IDS"].split(",")[0]
    name = f"dr_prompt_{uuid.uuid4().hex[:8]}"
    target = clone_prefect_db(repo, name)
    try:
        code, screen = in_terminal(["restore", full[-6:], "--target-url", target], repo,
                                   width, answer=("to go on:", "not-the-name"))
    finally:
        drop_db(repo, name)
    assert code == 2, screen
    lines = [line for line in screen.splitlines() if line.strip()]
    prompt = next(i for i, line in enumerate(lines) if "to go on" in line)
    above = " ".join(lines[max(0, prompt - 8):prompt + 1])
    assert f"About to restore backup {full} (full, taken" in above and " ago)" in above
    assert f"renamed: {name} -> {name}_pre_restore_" in above
    assert "Nothing has changed yet." in above and "'prefect-dr rollback' undoes" in above
    assert f"The live database is kept as {name}_pre_restore_" in above
    assert "not confirmed; nothing changed" in screen
    assert all(len(line) <= width for line in lines[prompt - 6:prompt]), screen


def test_restore_progress_names_the_safety_backup(repo: dict[str, str]) -> None:
    """Issue 23: once the download was done the line froze near 100% while the safety backup
    of the kept database ran. That backup is now a phase of its own, with its bytes, at a
    terminal (within 80 columns) and in the log lines of a pipe."""
    full = repo["_IDS"].split(",")[0]
    name = f"dr_phase_{uuid.uuid4().hex[:8]}"
    try:
        target = clone_prefect_db(repo, name)
        code, screen = in_terminal(["restore", full, "--target-url", target, "--yes"], repo,
                                   80, timeout=300)
        assert code == 0, screen
        frames = [line for line in screen.splitlines() if "safety backup of " in line
                  and "dumped" in line]
        assert frames, screen
        assert all(len(line) <= 80 for line in frames), frames
        assert any(re.search(r"dumped [1-9][\d.]* [KM]iB", line) for line in frames), frames

        piped = run_cli(["restore", full, "--target-url", target, "--yes"], repo, timeout=300)
        assert piped.returncode == 0, piped.stderr
        records = [json.loads(line) for line in piped.stderr.splitlines()
                   if line.startswith("{")]
        last = [r for r in records if r["logger"] == "prefect_dr.progress"][-1]
        assert last["phase"].startswith(f"safety backup of {name}_pre_restore_"), last
        assert last["bytes"]["dumped"] > 0 and last["msg"].startswith("progress: safety backup of ")
    finally:
        for db in databases(repo, name):
            drop_db(repo, db)
