"""A stop signal (SIGINT/SIGTERM) ends the run as Interrupted (exit 130), even when a library
caught the signal's exception and reported it as an error of its own."""

from __future__ import annotations

import pytest

from prefect_dr import cli, errors, interrupt, retry


@pytest.fixture(autouse=True)
def _no_signal_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupt, "_noted", None)


class _Transient(Exception):
    pass


def test_retry_stops_at_once_after_a_signal() -> None:
    calls, sleeps = [], []

    def fn() -> None:
        calls.append(1)
        interrupt.note("SIGTERM")  # the handler ran; a library turned it into its own error
        raise _Transient("HTTPClientError: stopped by signal SIGTERM")

    with pytest.raises(errors.Interrupted, match="stopped by signal SIGTERM"):
        retry.call(fn, transient=lambda exc: True, what="upload", sleep=sleeps.append)
    assert len(calls) == 1 and sleeps == []


def test_retry_still_retries_without_a_signal() -> None:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _Transient("flaky")
        return "ok"

    assert retry.call(fn, transient=lambda exc: True, what="x", sleep=lambda s: None) == "ok"
    assert len(calls) == 3


def test_cli_reports_any_error_after_a_signal_as_interrupted() -> None:
    plain = errors.StorageError("start upload s3://b/k: HTTPClientError: boom")
    assert cli._after_signal(plain) is plain  # no signal: the error stands
    interrupt.note("SIGINT")
    stopped = cli._after_signal(plain)
    assert isinstance(stopped, errors.Interrupted) and stopped.exit_code == 130
    assert stopped.message == ("stopped by signal SIGINT: "
                               "start upload s3://b/k: HTTPClientError: boom")
