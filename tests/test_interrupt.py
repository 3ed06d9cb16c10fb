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


def test_a_handler_that_carries_on_checks_for_a_stop_signal_first() -> None:
    """Every ``except DRError/Exception/BaseException`` in prefect_dr that does not raise calls
    ``interrupt.raise_if_noted()``; otherwise SIGTERM inside it (or wrapped by a library and
    caught there) is swallowed and the run goes on. Clean-up on a failing path is exempt."""
    import ast
    from pathlib import Path

    import prefect_dr

    exempt = {("backup.py", "_run_locked"),  # writing the FAILED record of a failing run
              ("storage/s3.py", "_discard"),  # aborting the upload of a failing run
              ("storage/azure.py", "_discard"),  # discarding the staged blocks of one
              ("storage/gcs.py", "_discard"),  # cancelling the session of a failing write
              # the top level
              ("cli/application.py", "_finish_metrics"), ("cli/application.py", "_main"),
              ("cli/application.py", "_notify")}  # after the exit code is known
    root = Path(prefect_dr.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.ExceptHandler) or node.type is None:
                    continue
                types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                names = {ast.unparse(t).rsplit(".", 1)[-1] for t in types}
                if not names & {"DRError", "Exception", "BaseException"}:
                    continue
                body = ast.Module(body=node.body, type_ignores=[])
                if any(isinstance(n, ast.Raise) for n in ast.walk(body)):
                    continue
                where = (path.relative_to(root).as_posix(), func.name)
                if "raise_if_noted" not in ast.unparse(body) and where not in exempt:
                    offenders.append(f"{where[0]}:{node.lineno} in {where[1]}")
    assert offenders == []


def test_optional_lookups_stop_after_a_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup's Prefect version lookup is optional (a failure is a warning), but not when
    the failure is a stop signal."""
    from types import SimpleNamespace

    from prefect_dr import backup, prefect_api

    def unreachable(url: str) -> str:
        raise errors.DRError("Prefect API unreachable")

    monkeypatch.setattr(prefect_api, "server_version", unreachable)
    settings = SimpleNamespace(prefect_api_url="http://127.0.0.1:1/api")
    assert backup._prefect_version(settings) is None  # type: ignore[arg-type]
    interrupt.note("SIGTERM")
    with pytest.raises(errors.Interrupted):
        backup._prefect_version(settings)  # type: ignore[arg-type]
