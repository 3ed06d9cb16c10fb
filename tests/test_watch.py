"""watch's decisions with a fake clock: the debounce, the backoff, and the loop driven by a
scripted event stream, table poll and backup (no I/O; the real thing is in
test_watch_integration.py)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from test_retry import FakeClock

from prefect_dr.errors import DatabaseError, DRError, Interrupted, LockHeldError
from prefect_dr.watch import loop, stream
from prefect_dr.watch.state import Backoff, Debouncer, Source, Status
from prefect_dr.watch.stream import StreamDown


class Done(BaseException):
    """Ends a loop run at the scripted end time."""


def test_one_change_is_backed_up_after_the_quiet_time():
    deb = Debouncer(quiet_s=5, max_delay_s=20)
    assert not deb.pending and deb.due_at() is None and not deb.due(100)
    deb.change(100)
    assert deb.due_at() == 105 and not deb.due(104.9) and deb.due(105)


def test_a_burst_waits_for_quiet_but_never_past_the_maximum_delay():
    deb = Debouncer(quiet_s=5, max_delay_s=20)
    for t in range(0, 4):  # four changes a second apart, then quiet
        deb.change(float(t))
    assert deb.due_at() == 8
    deb = Debouncer(quiet_s=5, max_delay_s=20)
    for t in range(0, 60):  # a change every second for a minute
        deb.change(float(t))
        if deb.due(float(t)):
            break
    assert t == 20


def test_a_change_during_a_backup_makes_another_one_due():
    deb = Debouncer(quiet_s=5, max_delay_s=20)
    deb.change(0)
    deb.started(5)
    assert not deb.pending and not deb.due(100)
    deb.change(6)  # seen while the backup runs
    assert not deb.due(100)  # never two at once
    deb.succeeded(8)
    assert deb.pending and deb.due_at() == 11


def test_a_failed_backup_keeps_its_changes_and_waits_for_the_retry():
    deb = Debouncer(quiet_s=5, max_delay_s=20)
    deb.change(0)
    deb.started(5)
    deb.failed(6, retry_in=30)
    assert deb.pending and deb.first_change == 0 and deb.due_at() == 36
    assert not deb.due(35) and deb.due(36)
    deb.started(36)
    deb.succeeded(37)
    assert not deb.pending and deb.retry_at == 0


def test_the_debounce_is_validated():
    with pytest.raises(ValueError):
        Debouncer(quiet_s=10, max_delay_s=5)
    with pytest.raises(ValueError, match="--max-delay"):
        loop.Options(debounce_s=10, max_delay_s=5)


def test_backoff_doubles_up_to_its_maximum_and_resets():
    backoff = Backoff(1, 30)
    assert [backoff.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_event_names_that_are_configuration_changes():
    for name in ("prefect.variable.created", "prefect.block-document.updated",
                 "prefect.deployment.deleted", "prefect.work-pool.updated",
                 "prefect.work-queue.created", "prefect.automation.updated",
                 "prefect.concurrency-limit.deleted", "prefect.flow.created"):
        assert stream.is_config_change(name), name
    for name in ("prefect.work-pool.ready", "prefect.deployment.not-ready",
                 "prefect.automation.triggered", "prefect.automation.action.executed",
                 "prefect.flow-run.Completed", "prefect.variable", "other.variable.created",
                 "prefect.artifact-collection.updated"):
        assert not stream.is_config_change(name), name


def test_the_protocol_messages():
    assert stream.socket_url("http://h:4200/api/") == "ws://h:4200/api/events/out"
    assert stream.socket_url("https://h/api") == "wss://h/api/events/out"
    now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    message = stream.filter_message(now)
    assert message["type"] == "filter" and message["backfill"] is False
    assert message["filter"]["occurred"]["since"] == now.isoformat()
    assert "prefect.variable." in message["filter"]["event"]["prefix"]
    assert stream.token_from({}) is None
    assert stream.token_from({"PREFECT_API_AUTH_STRING": "u:p"}) == "u:p"
    assert stream.token_from({"PREFECT_API_KEY": "k", "PREFECT_API_AUTH_STRING": "u:p"}) == "k"


class FakeStream:
    """Scripted events ``(time, name)``; down during ``down`` windows ``(start, end)``."""

    def __init__(self, clock: FakeClock, events: list[tuple[float, str]],
                 down: list[tuple[float, float]] = (), end: float = 1e9,
                 open_takes: float = 0.0) -> None:
        self.clock, self.events, self.down, self.end = clock, sorted(events), list(down), end
        self.opens = self.closes = 0
        self.open_takes = open_takes  # the handshake's time

    def _is_down(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.down)

    def open(self) -> None:
        if self._is_down(self.clock.now):
            raise StreamDown("event stream ws://x unavailable: refused")
        self.opens += 1
        self.clock.now += self.open_takes

    def next_change(self, timeout: float) -> str | None:
        until = self.clock.now + timeout
        downs = [a for a, _ in self.down if self.clock.now <= a <= until]
        if self._is_down(self.clock.now):
            raise StreamDown("event stream lost: gone")
        if self.events and self.events[0][0] <= until and not (downs and downs[0] <
                                                                self.events[0][0]):
            t, name = self.events.pop(0)
            self.clock.now = max(self.clock.now, t)
            return name
        if downs:
            self.clock.now = downs[0]
            raise StreamDown("event stream lost: gone")
        self.clock.now = until
        if self.clock.now >= self.end:
            raise Done()
        return None

    def close(self) -> None:
        self.closes += 1


class FakePoller:
    """Configuration changes at the times ``changes``; with ``baseline``, the first call only
    records what is there, as the real poller does (a change before it is never reported)."""

    def __init__(self, clock: FakeClock, changes: list[float] = (), fail: bool = False,
                 baseline: bool = False) -> None:
        self.clock, self.changes, self.fail = clock, sorted(changes), fail
        self.polls: list[float] = []
        self.seen_until = -1.0
        self.marks = self.closes = 0
        self.baseline = baseline

    def changed(self) -> bool:
        self.polls.append(self.clock.now)
        if self.fail:
            raise DatabaseError("cannot connect to PostgreSQL")
        if self.baseline and len(self.polls) == 1:
            self.seen_until = self.clock.now
            return False
        new = [c for c in self.changes if self.seen_until < c <= self.clock.now]
        self.seen_until = self.clock.now
        return bool(new)

    def mark(self) -> None:
        self.marks += 1
        self.seen_until = self.clock.now

    def close(self) -> None:
        self.closes += 1


def _backups(clock: FakeClock, duration: float = 2.0, fail: list[Exception] | None = None):
    taken: list[float] = []

    def backup() -> str:
        taken.append(clock.now)
        clock.now += duration
        if fail:
            raise fail.pop(0)
        return f"b{len(taken)}"
    return backup, taken


def _sleeper(clock: FakeClock, end: float):
    def sleep(seconds: float) -> None:
        clock.now += seconds
        if clock.now >= end:
            raise Done()
    return sleep


def _run(options, clock, *, backup, poller, events=None, end=300.0):
    status = Status()
    with pytest.raises(Done):
        loop.run(options, backup=backup, poller=poller, stream=events, status=status,
                 clock=clock, wall=clock, sleep=_sleeper(clock, end))
    return status


OPTS = loop.Options(debounce_s=5, max_delay_s=20, poll_s=10, safety_poll_s=20, retry_s=30,
                    initial_backup=False)


def test_a_burst_of_fifty_announced_changes_makes_one_backup():
    clock = FakeClock()
    burst = [(100 + i * 0.05, "prefect.variable.created") for i in range(50)]
    events = FakeStream(clock, burst, end=300)
    poller = FakePoller(clock)
    backup, taken = _backups(clock)
    status = _run(OPTS, clock, backup=backup, poller=poller, events=events)
    assert len(taken) == 1 and 100 + 2.45 + 5 <= taken[0] < 110
    assert status.backups == 1 and status.changes == {"stream": 50}
    assert status.source is Source.STREAM and status.pending_since is None
    assert poller.marks == 1 and events.closes == 1 and poller.closes == 1


def test_an_initial_backup_is_taken_at_once():
    clock = FakeClock()
    backup, taken = _backups(clock)
    _run(loop.Options(initial_backup=True), clock, backup=backup, poller=FakePoller(clock),
         events=FakeStream(clock, [], end=100))
    assert taken == [0]


def test_a_change_the_stream_does_not_announce_is_found_by_the_safety_poll():
    clock = FakeClock()
    poller = FakePoller(clock, changes=[50])
    backup, taken = _backups(clock)
    _run(OPTS, clock, backup=backup, poller=poller, events=FakeStream(clock, [], end=200))
    assert len(taken) == 1 and 50 < taken[0] <= 50 + OPTS.safety_poll_s + OPTS.debounce_s
    # the baseline at the start, then one poll at the connection and every 20 s after it
    assert poller.polls[:2] == [0, 0]
    assert all(b - a == pytest.approx(20) for a, b in itertools.pairwise(poller.polls[1:]))


def test_a_change_made_while_the_stream_connects_is_backed_up():
    """The tables' baseline is taken before the stream's handshake: a change made during the
    handshake, which the stream cannot announce, is found by the poll at the connection (CI
    caught a watch that took its baseline after the handshake, and so never saw it)."""
    clock = FakeClock()
    poller = FakePoller(clock, changes=[0.5], baseline=True)
    backup, taken = _backups(clock)
    _run(OPTS, clock, backup=backup, poller=poller,
         events=FakeStream(clock, [], end=200, open_takes=1.0))
    assert poller.polls[:2] == [0, 1.0]
    assert len(taken) == 1 and 1.0 < taken[0] <= 1.0 + OPTS.debounce_s


def test_an_announced_change_is_not_backed_up_twice_when_the_poll_sees_it_later():
    clock = FakeClock()
    poller = FakePoller(clock, changes=[50])
    backup, taken = _backups(clock)
    _run(OPTS, clock, backup=backup, poller=poller,
         events=FakeStream(clock, [(50, "prefect.variable.updated")], end=200))
    assert len(taken) == 1


def test_stream_down_falls_back_to_polling_and_comes_back():
    clock = FakeClock()
    events = FakeStream(clock, [(150, "prefect.variable.created")], down=[(30, 100)], end=250)
    poller = FakePoller(clock, changes=[60])
    backup, taken = _backups(clock)
    status = _run(OPTS, clock, backup=backup, poller=poller, events=events)
    during = [p for p in poller.polls if 30 <= p < 100]
    assert len(during) >= 6  # every 10 s while down
    assert all(b - a <= OPTS.poll_s + 1e-9 for a, b in itertools.pairwise(during))
    assert 60 < taken[0] <= 60 + OPTS.poll_s + OPTS.debounce_s  # found by the poll
    assert events.opens >= 2 and status.source is Source.STREAM  # back on the stream
    assert any(150 <= t <= 156 for t in taken)  # and it announces again
    assert status.changes["poll"] >= 1 and status.changes["stream"] == 1


def test_no_api_url_means_polling_only():
    clock = FakeClock()
    poller = FakePoller(clock, changes=[42])
    backup, taken = _backups(clock)
    status = _run(OPTS, clock, backup=backup, poller=poller, events=None, end=100)
    assert status.source is Source.POLL and len(taken) == 1 and 42 < taken[0] <= 57


@pytest.mark.parametrize("error", [DRError("bucket unreachable"),
                                   LockHeldError("backup lock held by host x")])
def test_a_failed_backup_is_retried_and_counted(error):
    clock = FakeClock()
    backup, taken = _backups(clock, fail=[error])
    status = _run(OPTS, clock, backup=backup, poller=FakePoller(clock),
                  events=FakeStream(clock, [(10, "prefect.variable.created")], end=200))
    assert len(taken) == 2 and taken[1] - taken[0] == pytest.approx(2 + OPTS.retry_s)
    assert status.failures == 1 and status.backups == 1 and status.last_error is None
    assert status.pending_since is None


def test_a_failing_poll_is_logged_and_the_loop_goes_on(caplog):
    clock = FakeClock()
    backup, taken = _backups(clock)
    status = _run(OPTS, clock, backup=backup, poller=FakePoller(clock, fail=True),
                  events=FakeStream(clock, [(10, "prefect.variable.created")], end=100))
    assert len(taken) == 1 and status.backups == 1
    assert "configuration poll failed" in caplog.text


def test_a_stop_signal_ends_the_loop_and_closes_everything():
    clock = FakeClock()

    class Stopping(FakeStream):
        def next_change(self, timeout):
            raise Interrupted("stopped by signal SIGTERM")

    events, poller = Stopping(clock, []), FakePoller(clock)
    with pytest.raises(Interrupted):
        loop.run(OPTS, backup=_backups(clock)[0], poller=poller, stream=events,
                 status=Status(), clock=clock, wall=clock, sleep=clock.sleep)
    assert events.closes == 1 and poller.closes == 1


def test_a_stop_during_a_backup_is_not_retried():
    clock = FakeClock()
    backup, taken = _backups(clock, fail=[Interrupted("stopped by signal SIGTERM")])
    with pytest.raises(Interrupted):
        loop.run(OPTS, backup=backup, poller=FakePoller(clock), status=Status(),
                 stream=FakeStream(clock, [(1, "prefect.variable.created")], end=500),
                 clock=clock, wall=clock, sleep=clock.sleep)
    assert len(taken) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics-port", "70000"], "--metrics-port"),
    (["--debounce", "30s", "--max-delay", "10s"], "--max-delay (10s) must be at least"),
    (["--debounce", "5x"], "--debounce: '5x' is not a duration"),
    ([], "invalid configuration"),  # no repository, database or recipients
])
def test_bad_flags_and_missing_settings_exit_2_with_one_line(args, message, tmp_path):
    from conftest import run_cli

    proc = run_cli(["watch", *args], {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                   timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_a_metrics_port_in_use_is_one_line_and_exit_1(tmp_path):
    import socket

    from prefect_dr.watch import metrics

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(DRError, match=f"cannot serve metrics on 127.0.0.1:{port}") as info:
            metrics.serve(Status(), port)
    assert info.value.exit_code == 1


def test_the_metrics_read_the_status_at_each_scrape():
    from prometheus_client import CollectorRegistry, generate_latest

    from prefect_dr.watch.metrics import StatusCollector

    status = Status()
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    text = generate_latest(registry).decode()
    assert 'prefect_dr_watch_source{source="poll"} 1.0' in text
    assert "prefect_dr_watch_last_backup_success_timestamp_seconds 0.0" in text
    status.source, status.last_backup_success, status.backups = Source.STREAM, 1234.5, 3
    status.changes["stream"] = 7
    text = generate_latest(registry).decode()
    assert 'prefect_dr_watch_source{source="stream"} 1.0' in text
    assert 'prefect_dr_watch_source{source="poll"} 0.0' in text
    assert "prefect_dr_watch_last_backup_success_timestamp_seconds 1234.5" in text
    assert "prefect_dr_watch_backups_total 3.0" in text
    assert 'prefect_dr_watch_changes_total{source="stream"} 7.0' in text
