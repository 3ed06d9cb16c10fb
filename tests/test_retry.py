"""retry.call: the deadline bounds the whole operation; one WARNING per operation."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from conftest import run_cli
from test_cli import _env

from prefect_dr import retry


class FakeClock:
    """A monotonic clock that advances only when told (by sleeps and by slow attempts)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def failing(clock: FakeClock, attempt_s: float, calls: list[float]):
    def fn() -> None:
        calls.append(clock.now)
        clock.now += attempt_s
        raise ConnectionError("down")
    return fn


def test_one_warning_per_operation_later_attempts_at_debug(caplog):
    clock, calls = FakeClock(), []
    caplog.set_level(logging.DEBUG, logger="prefect_dr.retry")
    with pytest.raises(ConnectionError):
        retry.call(failing(clock, 0.0, calls), transient=lambda e: True, what="list",
                   deadline_s=15, sleep=clock.sleep, clock=clock)
    assert len(calls) >= 4  # it did retry several times
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert [r.getMessage() for r in warnings] == [
        "list failed, retrying for up to 15s: ConnectionError"]
    assert len(debug) == len(calls) - 2  # every retry after the first; the last attempt gives up


@pytest.mark.parametrize("attempt_s", [0.0, 1.0, 5.0, 7.0])
def test_the_deadline_bounds_the_whole_operation(attempt_s):
    """An attempt that would end after the deadline is not started (a stalled store costs
    one timeout per attempt)."""
    for _ in range(20):  # the jitter is random
        clock, calls = FakeClock(), []
        with pytest.raises(ConnectionError):
            retry.call(failing(clock, attempt_s, calls), transient=lambda e: True, what="x",
                       deadline_s=15, sleep=clock.sleep, clock=clock)
        assert clock.now <= 15 or len(calls) == 1
        if attempt_s <= 5.0:
            assert len(calls) >= 2  # short attempts are retried


def test_non_transient_errors_are_not_retried(caplog):
    clock, calls = FakeClock(), []
    with pytest.raises(ConnectionError):
        retry.call(failing(clock, 0.0, calls), transient=lambda e: False, what="x",
                   sleep=clock.sleep, clock=clock)
    assert len(calls) == 1 and not caplog.records


def test_success_after_retries_returns_the_value():
    clock = FakeClock()
    answers = iter([ConnectionError("a"), ConnectionError("b"), "ok"])

    def fn() -> str:
        item = next(answers)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry.call(fn, transient=lambda e: True, what="x", sleep=clock.sleep,
                      clock=clock) == "ok"


def test_attempts_bound_the_calls_with_the_waits_asked_for(caplog):
    """``attempts`` (no deadline): the last error after that many calls, with ``wait_s(n)``
    after the n-th failure; ``on_retry`` is told of each retry instead of the log."""
    clock, calls, told = FakeClock(), [], []
    caplog.set_level(logging.DEBUG, logger="prefect_dr.retry")
    with pytest.raises(ConnectionError):
        retry.call(failing(clock, 0.0, calls), transient=lambda e: True, what="swap",
                   deadline_s=None, attempts=4, wait_s=lambda n: 0.2 * n,
                   on_retry=lambda n, exc: told.append((n, str(exc))),
                   sleep=clock.sleep, clock=clock)
    assert calls == pytest.approx([0.0, 0.2, 0.6, 1.2])
    assert told == [(1, "down"), (2, "down"), (3, "down")] and not caplog.records


def test_attempts_and_the_log_without_on_retry(caplog):
    clock, calls, seen = FakeClock(), [], []
    with retry.observed(seen.append), pytest.raises(ConnectionError):
        retry.call(failing(clock, 0.0, calls), transient=lambda e: True, what="swap",
                   deadline_s=None, attempts=2, sleep=clock.sleep, clock=clock)
    assert len(calls) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "swap failed, retrying (2 attempts in all): ConnectionError"]
    assert seen == ["retrying swap (attempt 2, of 2)"]


def test_a_stop_signal_ends_attempt_bound_retries(monkeypatch):
    from prefect_dr import interrupt
    from prefect_dr.errors import Interrupted

    monkeypatch.setattr(interrupt, "_noted", "SIGTERM")
    clock, calls = FakeClock(), []
    with pytest.raises(Interrupted):
        retry.call(failing(clock, 0.0, calls), transient=lambda e: True, what="x",
                   deadline_s=None, attempts=5, sleep=clock.sleep, clock=clock)
    assert len(calls) == 1


def test_a_clean_up_retries_on_after_a_stop_signal(monkeypatch):
    from prefect_dr import interrupt

    monkeypatch.setattr(interrupt, "_noted", "SIGTERM")
    clock, calls = FakeClock(), []
    with pytest.raises(ConnectionError):
        retry.call(failing(clock, 0.0, calls), transient=lambda e: True, what="x",
                   deadline_s=None, attempts=3, interruptible=False, sleep=clock.sleep,
                   clock=clock)
    assert len(calls) == 3


# ---- the read-only commands against an S3 endpoint that is down --------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("args", "deadline"), [(["list"], None), (["show", "--latest"], 4),
                                              (["status"], 4)])
def test_read_only_commands_fail_fast_when_s3_is_down(args, deadline):
    """The default read deadline (15 s) once; the other commands with a shorter one (the same
    code path, a quarter of the wait)."""
    env = _env(PREFECT_DR_S3_BUCKET="prefect-dr-test",
               PREFECT_DR_S3_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}",
               PREFECT_DR_S3_REGION="us-east-1", AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE",
               AWS_SECRET_ACCESS_KEY="example-secret-key", AWS_EC2_METADATA_DISABLED="true")
    if deadline is not None:
        env["PREFECT_DR_S3_READ_DEADLINE"] = str(deadline)
    bound = deadline if deadline is not None else 15
    start = time.monotonic()
    proc = run_cli(["--log-format", "json", *args], env, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert elapsed < bound + 5, f"{args[0]} took {elapsed:.1f}s"  # the deadline + start-up
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the S3 endpoint" in errors[0], proc.stderr
    records = [ln for ln in lines if not ln.startswith("error:")]
    warnings = [ln for ln in records if '"level": "warning"' in ln]
    assert len(warnings) == 1, proc.stderr  # one operation failed: one WARNING, not one per try
    assert f"retrying for up to {bound}s" in warnings[0]
    assert len(records) == 1, proc.stderr


def test_the_read_deadline_is_a_setting():
    env = _env(PREFECT_DR_S3_BUCKET="prefect-dr-test",
               PREFECT_DR_S3_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}",
               AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE", AWS_SECRET_ACCESS_KEY="example-secret",
               AWS_EC2_METADATA_DISABLED="true", PREFECT_DR_S3_READ_DEADLINE="0")
    start = time.monotonic()
    proc = run_cli(["list"], env, timeout=60)
    assert proc.returncode == 1
    assert time.monotonic() - start < 8  # no retry at all: one refused connection
    assert "WARNING" not in proc.stderr and "cannot reach the S3 endpoint" in proc.stderr


def test_observers_see_each_retry_and_the_recovery() -> None:
    """The live progress line shows 'retrying WHAT (attempt N, up to S s)' (issue 23: a store
    being retried looked like a hang), and clears it once the operation succeeds."""
    clock, seen = FakeClock(), []
    attempts = iter([ConnectionError("down"), ConnectionError("down"), None])

    def flaky() -> str:
        error = next(attempts)
        if error:
            raise error
        return "done"

    with retry.observed(seen.append):
        assert retry.call(flaky, transient=lambda e: True, what="S3 upload part 1",
                          deadline_s=15, sleep=clock.sleep, clock=clock) == "done"
    assert seen == ["retrying S3 upload part 1 (attempt 2, up to 15 s)",
                    "retrying S3 upload part 1 (attempt 3, up to 15 s)", None]
    retry.call(lambda: 1, transient=lambda e: True, what="x", sleep=clock.sleep, clock=clock)
    assert len(seen) == 3  # no longer observed
