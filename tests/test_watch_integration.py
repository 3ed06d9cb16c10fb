"""watch against the stack's real Prefect server, PostgreSQL and S3, as a real process: a
variable set through the API is in a config-only backup within 60 s; a burst of 50 changes
makes one or two backups; the Prefect server killed and brought back is survived (table poll,
then the stream again); SIGTERM ends it within 10 s with exit 130 and frees the lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import STACK, listed_backups, run_cli
from test_backup_integration import _decrypt_with_age, _fetch, _zstd_d

from prefect_dr import prefect_api

pytestmark = pytest.mark.integration
FAST = ["--debounce", "2s", "--max-delay", "10s", "--poll-interval", "2s",
        "--safety-poll-interval", "30s", "--retry", "3s"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Watch:
    """A running ``prefect-dr watch`` with its metrics port and log file."""

    def __init__(self, env: dict[str, str], tmp: Path, *args: str) -> None:
        self.port = _free_port()
        self.log = tmp / f"watch-{self.port}.log"
        self.env = env
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect_dr", "--log-format", "json", "watch",
                 "--metrics-port", str(self.port), *args],
                env=env, stdout=subprocess.DEVNULL, stderr=out)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("prefect_dr_watch_"):
                name, value = line.rsplit(" ", 1)
                out[name.removeprefix("prefect_dr_watch_")] = float(value)
        return out

    def wait(self, what: str, ok: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"watch exited {self.proc.returncode}: {self.text()}"
            found = ok()
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"{what} not within {timeout}s; log: {self.text()[-3000:]}")

    def source(self) -> str | None:
        m = self.metrics()
        return next((s for s in ("stream", "poll") if m.get(f'source{{source="{s}"}}') == 1),
                    None)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return code, time.monotonic() - start


@pytest.fixture()
def repo_env(cli_env: dict[str, str]) -> dict[str, str]:
    return dict(cli_env, PREFECT_DR_S3_PREFIX=f"t-watch-{uuid.uuid4().hex[:10]}")


@pytest.fixture()
def watch(repo_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(*args: str) -> Watch:
        w = Watch(repo_env, tmp_path, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def _watch_backups(env: dict[str, str]) -> list[dict]:
    return sorted((b for b in listed_backups(env).values() if b["kind"] == "config-only"
                   and b["status"] == "complete"), key=lambda b: b["backup_id"])


def _variables(env: dict[str, str], backup_id: str, identity: tuple[Path, str]) -> set[str]:
    manifest = json.loads(run_cli(["show", backup_id, "--json"], env).stdout)
    config = next(a for a in manifest["artifacts"] if a["name"] == "config")
    export = json.loads(_zstd_d(_decrypt_with_age(_fetch(env, config["key"]), identity[0])))
    return {v["name"] for v in export["variables"]}


def _set_variable(env: dict[str, str], name: str) -> None:
    prefect_api.request(env["PREFECT_API_URL"], "POST", "/variables/",
                        {"name": name, "value": 1})


def _backed_up(env: dict[str, str], identity: tuple[Path, str], name: str
               ) -> Callable[[], str | None]:
    def check() -> str | None:
        for b in reversed(_watch_backups(env)):
            if name in _variables(env, b["backup_id"], identity):
                return str(b["backup_id"])
        return None
    return check


@pytest.fixture()
def variables(repo_env: dict[str, str]) -> Iterator[str]:
    """A name prefix for this test's variables, all deleted afterwards (in the database: the
    API may be down when a test fails)."""
    prefix = f"watch_{uuid.uuid4().hex[:8]}_"
    yield prefix
    with psycopg.connect(repo_env["PREFECT_DR_DATABASE_URL"], autocommit=True,
                         password=repo_env.get("PGPASSWORD")) as conn:
        conn.execute("DELETE FROM variable WHERE name LIKE %s", (prefix + "%",))


def test_a_variable_set_through_the_api_is_backed_up_within_60s(
        repo_env, identity, watch, variables):
    w = watch("--no-initial-backup", *FAST)
    w.wait("the event stream", lambda: w.source() == "stream", 30)
    name = variables + "one"
    start = time.monotonic()
    _set_variable(repo_env, name)
    backup_id = w.wait("a backup with the variable", _backed_up(repo_env, identity, name), 60)
    elapsed = time.monotonic() - start
    assert elapsed < 60
    assert listed_backups(repo_env)[backup_id]["labels"] == {"trigger": "watch"}
    m = w.metrics()
    assert m["changes_total{source=\"stream\"}"] >= 1 and m["backups_total"] == 1
    assert m["last_backup_success_timestamp_seconds"] >= m["last_change_seen_timestamp_seconds"]
    assert m["pending_since_timestamp_seconds"] == 0
    print(f"variable backed up {elapsed:.1f}s after it was set")


def test_a_burst_of_fifty_changes_makes_one_or_two_backups(
        repo_env, identity, watch, variables):
    w = watch("--no-initial-backup", *FAST[:-3], "5s", "--retry", "3s")  # safety poll 5s
    w.wait("the event stream", lambda: w.source() == "stream", 30)
    for i in range(50):
        _set_variable(repo_env, f"{variables}{i:02d}")
    last = f"{variables}49"
    w.wait("a backup with the last variable", _backed_up(repo_env, identity, last), 60)
    time.sleep(12)  # the debounce, the maximum delay and a safety poll more: nothing else
    backups = _watch_backups(repo_env)
    assert 1 <= len(backups) <= 2, [b["backup_id"] for b in backups]
    print(f"a burst of 50 changes made {len(backups)} backup(s)")
    assert w.metrics()["changes_total{source=\"stream\"}"] >= 50


def _stack(*args: str) -> None:
    subprocess.run([str(STACK), *args, "prefect"], check=True, capture_output=True,
                   timeout=180, env=dict(os.environ))


def test_the_prefect_server_killed_and_brought_back_is_survived(
        repo_env, identity, watch, variables):
    w = watch("--no-initial-backup", *FAST)
    w.wait("the event stream", lambda: w.source() == "stream", 30)
    try:
        _stack("down")
        w.wait("the fallback to polling", lambda: w.source() == "poll", 15)
        name = variables + "during_outage"  # the API is down: written in the database
        with psycopg.connect(repo_env["PREFECT_DR_DATABASE_URL"], autocommit=True,
                             password=repo_env.get("PGPASSWORD")) as conn:
            conn.execute("INSERT INTO variable (id, name, value, tags) VALUES "
                         "(gen_random_uuid(), %s, '1'::jsonb, '[]'::jsonb)", (name,))
        w.wait("a backup with the variable", _backed_up(repo_env, identity, name), 60)
        assert w.metrics()["changes_total{source=\"poll\"}"] >= 1
    finally:
        _stack("up")
    w.wait("the event stream again", lambda: w.source() == "stream", 60)
    before = w.metrics()["changes_total{source=\"stream\"}"]
    name = variables + "after_outage"
    _set_variable(repo_env, name)
    w.wait("a backup with the new variable", _backed_up(repo_env, identity, name), 60)
    assert w.metrics()["changes_total{source=\"stream\"}"] > before
    assert w.proc.poll() is None


def test_sigterm_ends_an_idle_watch_within_10s_with_exit_130(watch):
    w = watch("--no-initial-backup", *FAST)
    w.wait("the event stream", lambda: w.source() == "stream", 30)
    code, took = w.stop()
    assert code == 130 and took < 10, (code, took, w.text())
    assert "stopped by signal SIGTERM" in w.text()


def test_sigterm_during_a_backup_stops_it_and_frees_the_lock(repo_env, watch):
    w = watch(*FAST)  # the initial backup starts at once
    w.wait("the backup to start", lambda: "started" in w.text(), 30)
    code, took = w.stop()
    assert code == 130 and took < 10, (code, took, w.text())
    listed = listed_backups(repo_env)
    assert all(b["status"] in ("complete", "failed") for b in listed.values()), listed
    again = run_cli(["backup", "--kind", "config-only", "--json"], repo_env, timeout=120)
    assert again.returncode == 0, again.stderr  # the lock is free


def test_the_poll_sees_configuration_changes_not_runtime_updates(clone, monkeypatch):
    from prefect_dr.errors import DatabaseError
    from prefect_dr.watch.poll import ConfigPoller

    monkeypatch.setenv("PGPASSWORD", clone["PGPASSWORD"])
    url = clone["PREFECT_DR_DATABASE_URL"]
    poller = ConfigPoller(url)
    try:
        assert poller.changed() is False  # the first read only records
        with psycopg.connect(url, autocommit=True, password=clone.get("PGPASSWORD")) as conn:
            def run(statement: str) -> bool:
                conn.execute(statement)
                return poller.changed()

            # what workers polling and runs taking slots do: not configuration
            assert not run("UPDATE work_queue SET last_polled = now(), status = 'READY', "
                           "updated = now()")
            assert not run("UPDATE work_pool SET status = 'READY', updated = now(), "
                           "last_transitioned_status_at = now()")
            assert not run("UPDATE deployment SET last_polled = now(), status = 'READY', "
                           "updated = now()")
            assert not run("UPDATE concurrency_limit_v2 SET active_slots = active_slots + 1, "
                           "denied_slots = denied_slots + 1, avg_slot_occupancy_seconds = 3, "
                           "updated = now()")
            assert not poller.changed()
            # configuration (Prefect sets `updated` on every update): updates, an insert, a delete
            assert run("UPDATE variable SET value = '\"changed\"'::jsonb, updated = now() "
                       "WHERE name = 'dr_string'")
            assert run("UPDATE work_pool SET is_paused = NOT is_paused, updated = now()")
            assert run("UPDATE concurrency_limit_v2 SET \"limit\" = \"limit\" + 1, "
                       "updated = now()")
            assert run("INSERT INTO variable (id, name, value, tags) VALUES "
                       "(gen_random_uuid(), 'watch_poll', '1'::jsonb, '[]'::jsonb)")
            assert run("DELETE FROM variable WHERE name = 'watch_poll'")
            assert not poller.changed()
            # the session is read-only
            poller.mark()
            session = poller._session()
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                session.execute("DELETE FROM variable")
    finally:
        poller.close()
    with pytest.raises(DatabaseError, match="cannot connect"):
        ConfigPoller(url.replace(clone["_DB"], "no_such_db")).changed()


@pytest.fixture()
def auth_server(clone: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Prefect server of its own on the clone, requiring PREFECT_SERVER_API_AUTH_STRING:
    (API URL, auth string)."""
    import urllib.parse

    auth = f"watch:{uuid.uuid4().hex}"
    port = _free_port()
    parts = urllib.parse.urlsplit(clone["PREFECT_DR_DATABASE_URL"])
    connection = (f"postgresql+asyncpg://{parts.username}:"
                  f"{urllib.parse.quote(clone['PGPASSWORD'])}@{parts.hostname}:{parts.port}"
                  f"{parts.path}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_API_DATABASE_CONNECTION_URL=connection,
               PREFECT_SERVER_API_AUTH_STRING=auth, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION="false")
    prefect = str(Path(sys.executable).with_name("prefect"))
    with (tmp_path / "prefect.log").open("wb") as out:
        proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], env=env, stdout=out, stderr=out,
                                start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "prefect.log").read_text()[-2000:]
            try:
                prefect_api.request(api, "GET", "/admin/version", auth=auth, timeout=2)
                break
            except prefect_api.PrefectAPIError:
                assert time.monotonic() < deadline, "the Prefect server did not start"
                time.sleep(0.5)
        yield api, auth
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_stream_authenticates_as_the_prefect_cli(clone, identity, auth_server, tmp_path):
    """PREFECT_API_AUTH_STRING, as the Prefect CLI sends it: a wrong one is refused (watch
    polls, and never logs it), the right one follows the stream of a server requiring it."""
    api, auth = auth_server
    env = dict(clone, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING="watch:wrong")
    refused = Watch(env, tmp_path, "--no-initial-backup", *FAST)
    try:
        refused.wait("the fallback to polling", lambda: "authentication" in refused.text(), 30)
        assert refused.source() == "poll"
        assert "watch:wrong" not in refused.text()
    finally:
        refused.proc.kill()
        refused.proc.wait()
    w = Watch(dict(env, PREFECT_API_AUTH_STRING=auth), tmp_path, "--no-initial-backup", *FAST)
    try:
        w.wait("the event stream", lambda: w.source() == "stream", 30)
        name = f"watch_auth_{uuid.uuid4().hex[:6]}"
        prefect_api.request(api, "POST", "/variables/", {"name": name, "value": 1}, auth=auth)
        w.wait("a backup with the variable", _backed_up(clone, identity, name), 60)
        assert w.metrics()["changes_total{source=\"stream\"}"] >= 1
        assert auth.split(":")[1] not in w.text()
    finally:
        w.proc.kill()
        w.proc.wait()


@pytest.mark.parametrize("version", ["3.4.25"])
def test_an_older_prefect_whose_stream_announces_no_variables(
        version, repo_env, identity, tmp_path, monkeypatch):
    """Prefect before 3.7 emits no lifecycle event for a variable: watch connects to its
    stream (the same handshake) and the safety poll backs the variable up within 60 s. (This
    server runs without services, so its stream would deliver nothing anyway: the test proves
    the handshake and the poll, not the absence of the event, which is read off the source.)"""
    from test_prefect_versions_integration import _admin, _url, venv_python

    from prefect_dr.pg import scratch
    from prefect_dr.smoke import PrefectServer

    monkeypatch.setenv("PGPASSWORD", repo_env["PGPASSWORD"])
    name = f"watch_old_{uuid.uuid4().hex[:6]}"
    with _admin(repo_env) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _url(repo_env, name)
    try:
        with PrefectServer(url, python=venv_python(version)) as server:
            env = dict(repo_env, PREFECT_DR_DATABASE_URL=url, PREFECT_API_URL=server.api)
            w = Watch(env, tmp_path, "--no-initial-backup", *FAST[:-3], "5s", "--retry", "3s")
            try:
                w.wait("the event stream", lambda: w.source() == "stream", 30)
                variable = f"watch_{uuid.uuid4().hex[:6]}"
                start = time.monotonic()
                prefect_api.request(server.api, "POST", "/variables/",
                                    {"name": variable, "value": 1})
                w.wait("a backup with the variable", _backed_up(env, identity, variable), 60)
                assert time.monotonic() - start < 60
                m = w.metrics()
                assert m["changes_total{source=\"poll\"}"] >= 1
                assert m["changes_total{source=\"stream\"}"] == 0  # found by the poll only
            finally:
                w.proc.kill()
                w.proc.wait()
    finally:
        with _admin(repo_env) as conn:
            scratch.drop_database(conn, name)
