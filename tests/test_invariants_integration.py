"""Regression tests of issue 20: combinations of documented commands that lost data, hung or
leaked (docs/reliability.md, "Invariants across commands"). Each runs the real CLI against the
real stack (PostgreSQL, SeaweedFS S3)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

FAILPOINT = Path(__file__).resolve().parent / "chaos" / "failpoint.py"


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout)


def _backup(env: dict[str, str], *args: str) -> dict:
    proc = run_cli(["--json", "backup", *args], env)
    assert proc.returncode == 0, proc.stderr
    return _json(proc)


def _list(env: dict[str, str]) -> dict[str, dict]:
    proc = run_cli(["--json", "list"], env)
    assert proc.returncode == 0, proc.stderr
    return {b["id"]: b for b in _json(proc)["backups"]}


def _with_failpoint(args: list[str], env: dict[str, str], spec: str, sig: str = "KILL",
                    timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(env, PREFECT_DR_CHAOS_FAILPOINT=spec, PREFECT_DR_CHAOS_FAILPOINT_SIGNAL=sig)
    return subprocess.run([sys.executable, str(FAILPOINT), *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_stop_during_history_copy_ends_the_backup_and_frees_the_lock(
        clone: dict[str, str], sig: str) -> None:
    """Finding 1: a stop signal while the history COPY streams out of the snapshot hung the
    backup in the lock release (the connection was still busy in COPY), and every later
    backup exited 11. ``timeout`` fails the test if the run hangs."""
    proc = _with_failpoint(["backup"], clone,
                           "prefect_dr.table_copy:CopyOutReader._fill:before:1", sig)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "did not finish within" not in proc.stderr  # ended by itself, not by the deadline
    (entry,) = _list(clone).values()
    assert entry["status"] == "failed"
    assert "signal" in (entry["error"] or "")
    assert _backup(clone)["ok"]  # not locked out
