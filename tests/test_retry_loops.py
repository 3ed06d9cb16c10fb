"""The retries that go through retry.call beside the stores': backfill's swap of a busy table,
the database swap of a restore, and the drop of a scratch database. Each keeps its own rule:
which errors are retried, how often or how long, what is raised at the end and what is logged
(fake connections: no server needed; the integration tests run them against PostgreSQL)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from prefect_dr import backfill, backfill_state, retry
from prefect_dr.pg import scratch, swap


class _Conn:
    """A connection whose transactions fail with the next of ``failures`` (None: it goes
    through) and whose statements are recorded."""

    def __init__(self, failures: list[BaseException | None]) -> None:
        self.failures = failures
        self.transactions = 0
        self.statements: list[Any] = []

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.transactions += 1
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        yield

    def execute(self, query: Any, params: Any = None) -> None:
        self.statements.append(query)

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        class Cursor:
            rowcount = 4

            def execute(self, query: Any) -> None:
                pass

        yield Cursor()


def _locked() -> psycopg.errors.LockNotAvailable:
    return psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")


@pytest.fixture
def swap_of_t(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """backfill._swap on a table ``t`` with three attempts; the waits asked for, recorded
    (and not waited)."""
    waits: list[int] = []
    monkeypatch.setattr(backfill.table_copy, "columns_of", lambda conn, table: ["id"])
    monkeypatch.setattr(backfill_state, "state_of", lambda conn: ["another table"])
    monkeypatch.setattr(backfill_state, "LOCK_ATTEMPTS", 3)
    monkeypatch.setattr(backfill_state, "lock_wait_s", lambda n: waits.append(n) or 0.0)
    return waits


def test_a_busy_table_is_swapped_once_free(swap_of_t: list[int],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    conn = _Conn([_locked(), _locked(), None])
    assert backfill._swap(conn, "t", None) == 4  # type: ignore[arg-type]
    assert conn.transactions == 3 and swap_of_t == [1, 2]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "backfill: swap of t is busy, retrying (1)"),
        ("INFO", "backfill: swap of t is busy, retrying (2)")]


def test_a_table_busy_every_time_gives_up_after_lock_attempts(swap_of_t: list[int]) -> None:
    conn = _Conn([_locked()] * 5)
    with pytest.raises(backfill_state.BackfillError, match=r"could not lock t for its swap in 3 "
                                                     r"attempts; run 'prefect-dr restore"):
        backfill._swap(conn, "t", None)  # type: ignore[arg-type]
    assert conn.transactions == 3 and swap_of_t == [1, 2]


def test_another_error_of_the_swap_is_not_retried(swap_of_t: list[int]) -> None:
    conn = _Conn([psycopg.errors.UndefinedTable("no t")])
    with pytest.raises(psycopg.errors.UndefinedTable):
        backfill._swap(conn, "t", None)  # type: ignore[arg-type]
    assert conn.transactions == 1 and swap_of_t == []


def test_the_swap_waits_longer_each_time_up_to_two_seconds() -> None:
    assert [backfill_state.lock_wait_s(n) for n in (1, 2, 9, 10, 11, 59)] == pytest.approx(
        [0.2, 0.4, 1.8, 2.0, 2.0, 2.0])


def _in_use() -> psycopg.errors.ObjectInUse:
    return psycopg.errors.ObjectInUse("database is being accessed by other users")


@pytest.fixture
def quiet_databases(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """swap.swap with nobody connected; the renames it makes, recorded."""
    renames: list[tuple[str, str]] = []
    monkeypatch.setattr(swap, "sessions", lambda admin, name: [])
    monkeypatch.setattr(swap, "rename", lambda admin, old, new: renames.append((old, new)))
    return renames


@pytest.mark.parametrize("failures,transactions", [(1, 2), (2, 3)])
def test_a_client_connecting_during_a_forced_swap_is_forced_off_again(
        quiet_databases: list[tuple[str, str]], caplog: pytest.LogCaptureFixture,
        failures: int, transactions: int) -> None:
    caplog.set_level(logging.DEBUG)
    admin = _Conn([_in_use()] * failures + [None])
    swap.swap(admin, "db", "db_restore", "db_old", force_disconnect=True)  # type: ignore[arg-type]
    assert admin.transactions == transactions
    assert quiet_databases == [("db", "db_old"), ("db_restore", "db")]
    assert not caplog.records  # retried silently, as before


@pytest.mark.parametrize("force,transactions", [(False, 1), (True, 3)])
def test_a_swap_whose_database_stays_in_use_changes_nothing(
        quiet_databases: list[tuple[str, str]], force: bool, transactions: int) -> None:
    """Without --force-disconnect the first refusal is final; with it, ``attempts`` (3)."""
    admin = _Conn([_in_use()] * 5)
    with pytest.raises(swap.ConnectedClientsError,
                       match=r"^clients connected to db during the swap; nothing changed"):
        swap.swap(admin, "db", "db_restore", "db_old",  # type: ignore[arg-type]
                  force_disconnect=force)
    assert admin.transactions == transactions and quiet_databases == []


class _Dropper:
    """An admin connection: each DROP DATABASE statement gets the next of ``answers``."""

    def __init__(self, answers: list[BaseException | None]) -> None:
        self.answers = answers
        self.forced: list[bool] = []

    def execute(self, query: Any) -> None:
        self.forced.append("FORCE" in repr(query))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def _denied() -> psycopg.errors.InsufficientPrivilege:
    return psycopg.errors.InsufficientPrivilege("permission denied to terminate process")


def test_a_scratch_database_in_use_is_forced_off_and_dropped() -> None:
    admin = _Dropper([_in_use(), _denied(), _in_use(), _in_use(), _in_use(), None])
    scratch.drop_database(admin, "s")  # type: ignore[arg-type]
    assert admin.forced == [False, True, False, True, False, True]


def test_a_plain_drop_refused_for_another_reason_is_not_retried() -> None:
    admin = _Dropper([_denied()])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        scratch.drop_database(admin, "s")  # type: ignore[arg-type]
    assert admin.forced == [False]


def test_a_scratch_database_that_stays_in_use_is_given_up_after_wait_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retried every 0.5 s while ``wait_s`` lasts (1.2 s: attempts at 0, 0.5 and 1 s), then
    the forced drop's error is raised."""
    clock = [0.0]
    real = retry.call

    def on_a_fake_clock(fn: Any, **kwargs: Any) -> Any:
        def sleep(seconds: float) -> None:
            assert seconds == 0.5
            clock[0] += seconds
        return real(fn, **kwargs, sleep=sleep, clock=lambda: clock[0])

    monkeypatch.setattr(retry, "call", on_a_fake_clock)
    admin = _Dropper([_in_use()] * 20)
    with pytest.raises(psycopg.errors.ObjectInUse):
        scratch.drop_database(admin, "s", wait_s=1.2)  # type: ignore[arg-type]
    assert admin.forced == [False, True] * 3 and clock[0] == 1.0


def test_a_scratch_drop_after_a_stop_signal_still_finishes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The drop is the clean-up a stop signal runs: it goes on retrying, it is not stopped."""
    from prefect_dr import interrupt

    monkeypatch.setattr(interrupt, "_noted", "SIGTERM")
    admin = _Dropper([_in_use(), _in_use(), None])
    scratch.drop_database(admin, "s")  # type: ignore[arg-type]
    assert admin.forced == [False, True, False]
