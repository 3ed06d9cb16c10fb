"""Faults in `restore --tiered`: SIGKILL at random points of both phases, S3 down and
PostgreSQL restarted during phase 2 (the history backfill).

The live database (`prefect` on the chaos stack) is restored from a format-4 backup of another
database: a copy of it with a marker table and a few MB of incompressible history (`events`,
`event_resources`, `log`), so "unchanged", "phase 1 live" and "restored" are told apart by
content. Every run goes through a bandwidth-limited proxy, so the history loads for a while.

Phase 1 kills land at a random byte of the dump's download or right after one of its steps
(failpoints); phase 2 kills at a random byte of a history table's download (while loading), at
a failpoint between tables (a shadow table ready, a table swapped), or while the backfill waits
for a live table's lock (the test holds a read lock on `log`, as a long Prefect query would).

Invariants after every kill: the live database exists and serves: unchanged (a phase 1 kill),
or the restored one whose configuration matches the manifest, each history table either empty
and listed as unfinished or whole, each run table holding its live part (pending) or every row,
and `rollback --list` naming the unfinished backfill.
`restore --resume` (or the same `restore --tiered` again, which a phase 1 kill needs) then
completes: every table's row count exactly the manifest's, the live database equal to the
backup's source, no `prefect_dr_backfill` schema, no `<db>_restore_*` left; `rollback` brings
the old database back. S3 down or PostgreSQL restarted in phase 2: exit 1, one `error:` line
naming `restore --resume`, no traceback; then the same checks.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from prefect_dr.pg import scratch
from prefect_dr.runs_split import RUN_TABLES

from .conftest import FIGURES, SEED, Chaos, count
from .harness import (
    CONFIG_TABLES,
    CONSTRAINTS,
    LIVE,
    Proc,
    Run,
    cli,
    comment_of,
    databases,
    drop_kept,
    error_problem,
    fingerprint,
    need,
    repair,
    wait_no_client_programs,
)
from .netfault import FaultProxy

pytestmark = pytest.mark.integration

SOURCE = "prefect_tiered"  # the database backed up: LIVE + a marker table + bulk history
DEFERRED = ("event_resources", "events", "log")  # loaded in this order (by name)
HISTORY_ROWS = 12_000  # per history table, ~300 bytes of random hex each
RATE = 3_000_000  # bytes/s through the proxy: the history (~6 MB) loads for seconds
BOUND_S = 90
KILLS = count(2, 24)
S3_OUTAGES = count(1, 6)
PG_RESTARTS = count(1, 4)
KILL = FIGURES.scenario(
    "tiered-sigkill", group="Crashes",
    title="restore --tiered SIGKILLed at a random point of either phase",
    invariant="the live database serves: unchanged (phase 1) or the restored configuration "
              "with each history table empty and listed unfinished, or whole (phase 2); "
              "`rollback --list` names the unfinished backfill; `restore --resume` (or the same "
              "restore again) completes with every row count exactly the manifest's, no "
              "backfill schema, no half-restored database; `rollback` undoes it (found by this "
              "suite: phase 1 downloaded and decrypted the whole history into memory before "
              "the swap; fixed in f384be2; and a kill right after the last table's swap left "
              "an empty backfill schema that `restore --resume` saw nothing to do in; fixed in "
              "196b42e)")
S3_DOWN = FIGURES.scenario(
    "tiered-s3-outage", group="Outages",
    title="S3 down during a tiered restore's phase 2",
    invariant="exit 1, one error line naming `restore --resume`; the live database serves the "
              "restored configuration; a resume once S3 is back completes with exact counts")
PG_RESTART = FIGURES.scenario(
    "tiered-pg-restart", group="Outages",
    title="PostgreSQL restarted during a tiered restore's phase 2",
    invariant="exit 1, one error line naming `restore --resume`; the live database serves the "
              "restored configuration; a resume completes with exact counts (found by this "
              "suite: an S3 download cut by a clean close was an unexpected IncompleteReadError "
              "instead of being resumed; fixed in 1d21c17)")

# Failpoints (tests/chaos/failpoint.py) of phase 1, before the swap ...
PHASE1_POINTS = [
    "prefect_dr.restore_stream:read_small_artifacts:after:1",
    "prefect_dr.backfill:prepare:after:1",  # the backfill state written, not yet live
    "prefect_dr.semantic:semantic_checks:after:1",
    "prefect_dr.pg.swap:swap:before:1",
]
# ... and of phase 2: swapped in, nothing loaded; a shadow table ready; between tables; the
# finished runs' flow runs in, not their task runs; every foreign key back NOT VALID, none or
# one validated (issue 25).
PHASE2_POINTS = [
    "prefect_dr.backfill:run:before:1",
    "prefect_dr.runs_backfill:_load_group:after:1",
    "prefect_dr.runs_backfill:_validate:before:1",
    "prefect_dr.runs_backfill:_validate:after:1",
    *(f"prefect_dr.backfill:_load:after:{n}" for n in (1, 2, 3)),
    *(f"prefect_dr.backfill:_swap:after:{n}" for n in (1, 2, 3)),  # 3: the last one
]
# The first trials take each kind in this order (CI: the first two), the rest are random.
KINDS = ["swap lock wait", "phase 1 step", "phase 2 download byte", "phase 2 step",
         "phase 1 download byte"]


@dataclass
class Setup:
    env: dict[str, str]
    backup_id: str
    before: dict[str, Any]  # fingerprint of the live database
    restored: dict[str, Any]  # fingerprint of the backup's source
    rows: dict[str, int]  # the manifest's exact row counts
    live: dict[str, int]  # the live part's rows of each split run table (phase 1's)
    pre: int  # bytes a restore downloads before the history artifacts (about)
    history: int  # bytes of the history artifacts
    proxy: FaultProxy = field(repr=False)

    @property
    def through(self) -> dict[str, str]:
        return dict(self.env, PREFECT_DR_S3_ENDPOINT_URL=self.proxy.url)

    def args(self) -> list[str]:
        return ["restore", self.backup_id, "--tiered", "--yes", "--no-safety-backup",
                "--force-disconnect", "--json"]


def _add_history(chaos: Chaos, db: str, rows: int) -> None:
    payload = ("(SELECT string_agg(md5(random()::text || g::text || i::text), '') "
               "FROM generate_series(1, 9) i)")
    with chaos.stack.connect(db) as conn:
        conn.execute("CREATE TABLE chaos_tiered_marker AS SELECT 1 AS id")
        conn.execute(
            "INSERT INTO events (occurred, event, resource_id, resource, related_resource_ids, "
            "related, payload, received, recorded, id) SELECT now() - g * interval '1 s', "
            f"'dr.chaos', 'dr.chaos.' || g, '{{}}'::jsonb, '[]'::jsonb, '[]'::jsonb, "
            f"jsonb_build_object('blob', {payload}), now(), now(), gen_random_uuid() "
            f"FROM generate_series(1, {rows}) g")
        conn.execute(
            "INSERT INTO event_resources (occurred, resource_id, resource_role, resource, "
            "event_id) SELECT occurred, resource_id, 'related', "
            "json_build_object('n', md5(random()::text)), id FROM events "
            "WHERE event = 'dr.chaos'")
        conn.execute(
            "INSERT INTO log (name, level, flow_run_id, message, timestamp) SELECT 'dr.chaos', "
            f"20, NULL, {payload}, now() FROM generate_series(1, {rows}) g")


@pytest.fixture(scope="module")
def setup(chaos: Chaos) -> Iterator[Setup]:
    """A format-4 backup of SOURCE (history and split runs) to restore over the live
    database."""
    stack = chaos.stack
    with stack.connect("postgres") as conn:
        scratch.drop_database(conn, SOURCE)
        conn.execute(f'CREATE DATABASE "{SOURCE}" TEMPLATE {LIVE}')
    _add_history(chaos, SOURCE, HISTORY_ROWS)
    env = chaos.env("tiered")
    made = cli(["backup", "--json"], dict(env, PREFECT_DR_DATABASE_URL=chaos.url(SOURCE)))
    need(made.returncode == 0, made.describe())
    backup_id = made.json["backup_id"]
    shown = cli(["show", backup_id, "--json"], env)
    need(shown.returncode == 0, shown.describe())
    manifest = shown.json
    need(manifest.get("format_version") == 4, f"not a format-4 backup: {manifest}")
    live = {a["table"]: int(a["rows"]) for a in manifest["artifacts"] if a.get("part") == "live"}
    need(sorted(live) == sorted(RUN_TABLES), f"split run tables missing: {manifest}")
    rows = {t: int(e["rows"]) for t, e in manifest["row_counts"].items() if e.get("exact")}
    need(all(t in rows for t in DEFERRED), f"history counts missing: {manifest['row_counts']}")
    later = [a for a in manifest["artifacts"] if a.get("table") and a.get("part") != "live"]
    history = sum(int(a["size"]) for a in later)
    pre = sum(int(a["size"]) for a in manifest["artifacts"] if a not in later)
    before = fingerprint(stack, LIVE)
    proxy = FaultProxy(stack.s3_endpoint, rate=RATE)
    try:
        yield Setup(env, backup_id, before, fingerprint(stack, SOURCE), rows, live, pre, history,
                    proxy)
    finally:
        proxy.close()
        repair(stack, before)
        with stack.connect("postgres") as conn:
            scratch.drop_database(conn, SOURCE)


# -- probes ------------------------------------------------------------------------------------
def _serving(chaos: Chaos, backup_id: str) -> bool:
    """Whether the live database is the restored one (phase 1 swapped in)."""
    return f"restored backup {backup_id}" in comment_of(chaos.stack, LIVE)


def _backfill_state(chaos: Chaos) -> dict[str, str] | None:
    """{table: status} of the live database's unfinished backfill (None: no backfill schema)."""
    with chaos.stack.connect(LIVE) as conn:
        if not conn.execute("SELECT to_regnamespace('prefect_dr_backfill') IS NOT NULL"
                            ).fetchone()[0]:
            return None
        if not conn.execute("SELECT to_regclass('prefect_dr_backfill.state') IS NOT NULL"
                            ).fetchone()[0]:
            return {}
        return {str(r[0]): str(r[1]) for r in conn.execute(
            "SELECT table_name, status FROM prefect_dr_backfill.state")}


def _wait(predicate: Any, proc: Proc, timeout: float = 120) -> bool:
    """Poll ``predicate`` until true (True) or the process ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.popen.poll() is not None:
            return bool(predicate())
        time.sleep(0.03)
    return False


def _sessions_gone(chaos: Chaos, timeout: float = 30) -> bool:
    """Wait until no session of a killed run is left on the live or a restored database (a
    backend finishing a statement after its client died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with chaos.stack.admin() as admin:
            n = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s "
                              "AND backend_type = 'client backend' AND pid <> "
                              "pg_backend_pid()", (f"{LIVE}%",)).fetchone()[0]
        if not n:
            return True
        time.sleep(0.1)
    return False


def clean(run: Run) -> str | None:
    """Why a run's output is not clean (a traceback, a stray stderr line), or None."""
    if "Traceback" in run.stdout + run.stderr:
        return f"a traceback: {run.describe()}"
    if run.stray_lines():
        return f"stray stderr lines {run.stray_lines()[:3]}: {run.describe()}"
    return None


# -- the invariant -----------------------------------------------------------------------------
def judge(chaos: Chaos, s: Setup, t: Any, point: str, rng: random.Random) -> str:
    """After a fault: check the live database serves and the backfill is visible; finish the
    restore (resume, or run it again), check it is exact; roll back. Returns the state found."""
    stack = chaos.stack
    s.proxy.reset()
    t.check(not wait_no_client_programs(f"/{LIVE}"), "pg_restore of the killed run still runs")
    t.check(_sessions_gone(chaos), "sessions of the killed run never ended")
    dbs = databases(stack, f"{LIVE}%")
    t.check(dbs.get(LIVE) is True, f"the live database is gone or refuses connections after "
            f"{point}: {sorted(dbs)}")
    listed = cli(["rollback", "--list", "--json"], s.env)
    t.check(listed.returncode == 0 and clean(listed) is None, listed.describe())
    unfinished = listed.json["unfinished_backfill"]
    now = fingerprint(stack, LIVE)
    state = _backfill_state(chaos)
    if not _serving(chaos, s.backup_id):  # killed in phase 1
        t.check(now == s.before, f"phase 1 killed ({point}) but the live database changed",
                lost=True)
        t.check(unfinished is None and state is None,
                f"an unfinished backfill in the unchanged database: {unfinished}")
        t.check(not [d for d in dbs if "_pre_restore_" in d], "live unchanged but a "
                f"pre-restore database exists: {sorted(dbs)}")
        found, finish = "phase 1: unchanged, restore run again", s.args()
    else:
        for table in CONFIG_TABLES:
            if table in s.rows:
                have = now[table][0] if isinstance(now[table], list) else now[table]
                t.check(have == s.rows[table], f"{table}: {have} rows live, the manifest says "
                        f"{s.rows[table]} ({point})", lost=True)
        for table, value in now.items():
            if table not in (*DEFERRED, *RUN_TABLES, CONSTRAINTS):
                t.check(value == s.restored.get(table), f"{table} differs from the backup's "
                        f"({point})", lost=True)
        pending = state or {}
        for table in DEFERRED:
            want = 0 if table in pending else s.rows[table]
            t.check(now[table] == want, f"{table}: {now[table]} rows live, expected {want} "
                    f"({'pending' if table in pending else 'done'}; {point})", lost=True)
        for table in RUN_TABLES:  # pending: the live part only; loaded or done: every row
            want = s.live[table] if pending.get(table) == "pending" else s.rows[table]
            t.check(now[table] == want, f"{table}: {now[table]} rows live, expected {want} "
                    f"({pending.get(table, 'done')}; {point})", lost=True)
        if pending:
            t.check(bool(unfinished) and s.backup_id in str(unfinished),
                    f"rollback --list does not show the unfinished backfill: {unfinished}")
            resume = rng.random() < 0.5
            total = len(DEFERRED) + len(RUN_TABLES)
            found = f"phase 2: {len(pending)} of {total} tables left, " + (
                "resumed" if resume else "restore run again")
            finish = ["restore", "--resume", "--json"] if resume else s.args()
        else:
            t.check(state is None and unfinished is None,
                    f"no table pending but a backfill schema or record left: {state}, "
                    f"{unfinished}")
            found, finish = "complete", []
    if finish:
        done = cli(finish, s.env, timeout=300)
        t.check(done.returncode == 0 and clean(done) is None,
                f"finishing after {point} failed: {done.describe()}")
    final = fingerprint(stack, LIVE)
    for table, want in s.rows.items():
        have = final[table][0] if isinstance(final[table], list) else final[table]
        t.check(have == want, f"{table}: {have} rows after the finish, the manifest says {want} "
                f"({point})", lost=True)
    t.check(final == s.restored, f"the finished restore differs from the backup ({point})",
            lost=True)
    t.check(_backfill_state(chaos) is None, "the prefect_dr_backfill schema is left")
    left = list(databases(stack, f"{LIVE}_restore_%"))
    t.check(not left, f"half-restored databases left after the finish: {left}")
    back = cli(["rollback", "--yes", "--json"], s.env)
    t.check(back.returncode == 0 and clean(back) is None, back.describe())
    t.check(fingerprint(stack, LIVE) == s.before, "rollback did not bring back the old "
            "database", lost=True)
    drop_kept(stack)
    return found


# -- SIGKILL -----------------------------------------------------------------------------------
def _kill_plan(rng: random.Random, n: int) -> list[str]:
    return [KINDS[i] if i < len(KINDS) else rng.choice(KINDS) for i in range(n)]


def _kill_once(chaos: Chaos, s: Setup, kind: str, rng: random.Random, t: Any) -> str:
    """Start a tiered restore, SIGKILL it as ``kind`` says; returns where it was killed."""
    group = rng.random() < 0.5
    s.proxy.reset()
    if kind.endswith("step"):
        point = rng.choice(PHASE1_POINTS if kind.startswith("phase 1") else PHASE2_POINTS)
        run = Proc(s.args(), s.through, failpoint=point).wait(timeout=300)
        t.check(run.returncode == -9, f"failpoint {point} not reached: {run.describe()}")
        if kind.startswith("phase 1"):  # found by this scenario: phase 1 read the history
            t.check(s.proxy.down_bytes < s.pre + s.history // 4, f"phase 1 downloaded "
                    f"{s.proxy.down_bytes} bytes: more than the dump and the small artifacts "
                    f"({s.pre}), the history ({s.history}) too")
        return point
    if kind.endswith("download byte"):
        if kind.startswith("phase 1"):
            offset = rng.randrange(int(s.pre * 0.05), int(s.pre * 0.95))
        else:
            offset = s.pre + rng.randrange(int(s.history * 0.05), int(s.history * 0.95))
        holder: list[Proc] = []
        trigger = s.proxy.at("down", offset, lambda: holder[0].kill(group=group))
        holder.append(Proc(s.args(), s.through))
        run = holder[0].wait(timeout=300)
        t.check(trigger.fired.is_set() and run.returncode == -9,
                f"never killed at byte {offset}: {run.describe()}")
        s.proxy.reset()
        return f"byte {offset} of the download ({kind.split()[0]} {kind.split()[1]})"
    # swap lock wait: a long read of `log` in the live database holds its swap off
    proc = Proc(s.args(), s.through)
    try:
        live = _wait(lambda: _serving(chaos, s.backup_id), proc)
        t.check(live, "phase 1 never went live: " + ("" if live else proc.wait(60).describe()))
        with chaos.stack.connect(LIVE) as conn, conn.transaction():
            conn.execute("LOCK TABLE log IN ACCESS SHARE MODE")
            ready = _wait(lambda: (_backfill_state(chaos) or {}).get("log") == "ready", proc)
            t.check(ready and proc.popen.poll() is None,
                    "the backfill never waited for the lock of log (done before the lock was "
                    f"taken?): {_backfill_state(chaos)}")
            waited = rng.uniform(0.2, 2.5)
            time.sleep(waited)
            t.check(proc.popen.poll() is None, "the swap of log did not wait for its lock")
            proc.kill(group=group)
            run = proc.wait(60)
    finally:
        if proc.popen.poll() is None:
            proc.kill(group=True)
            proc.wait(60)
    t.check(run.returncode == -9, run.describe())
    return f"waiting {waited:.1f}s for the lock of log"


@pytest.mark.timeout(300 + KILLS * 120)
def test_tiered_restore_killed_at_random_points(chaos: Chaos, setup: Setup,
                                                rng: random.Random) -> None:
    try:
        for i, kind in enumerate(_kill_plan(rng, KILLS)):
            with KILL.trial(seed=SEED, trial=i, kind=kind) as t:
                point = _kill_once(chaos, setup, kind, rng, t)
                t.params["point"] = point
                t.fault()
                t.outcome(judge(chaos, setup, t, point, rng))
    finally:
        repair(chaos.stack, setup.before)


# -- outages -----------------------------------------------------------------------------------
def _phase2_failure(chaos: Chaos, s: Setup, t: Any, run: Run, what: str) -> None:
    """The checks of a phase 2 that failed on an outage: a clean exit 1 naming --resume, the
    restored database live with its backfill unfinished."""
    t.check(run.seconds < BOUND_S, f"took {run.seconds:.0f}s: {run.describe()}")
    problem = error_problem(run, 1, "restore --resume")
    t.check(problem is None, f"{what}: {problem}; {run.describe()}")
    t.check(_serving(chaos, s.backup_id), f"{what} in phase 2 but the backup is not live: "
            f"{run.describe()}")
    t.check(bool(_backfill_state(chaos)), f"{what}: no unfinished backfill recorded")


@pytest.mark.timeout(120 + S3_OUTAGES * 150)
def test_s3_down_during_phase_2(chaos: Chaos, setup: Setup, rng: random.Random) -> None:
    s = setup
    try:
        for i in range(S3_OUTAGES):
            s.proxy.reset()
            offset = s.pre + rng.randrange(int(s.history * 0.05), int(s.history * 0.9))
            trigger = s.proxy.at("down", offset, s.proxy.down, freeze=False)
            with S3_DOWN.trial(seed=SEED, trial=i, offset=offset) as t:
                run = cli(s.args(), s.through, timeout=300)
                s.proxy.up()
                t.check(trigger.fired.is_set(), f"the outage never began: {run.describe()}")
                t.fault()
                _phase2_failure(chaos, s, t, run, "S3 down")
                t.outcome(judge(chaos, s, t, f"S3 down from byte {offset}", rng))
    finally:
        repair(chaos.stack, s.before)


@pytest.mark.timeout(120 + PG_RESTARTS * 200)
def test_postgres_restarted_during_phase_2(chaos: Chaos, setup: Setup,
                                           rng: random.Random) -> None:
    s = setup
    try:
        for i in range(PG_RESTARTS):
            mode = rng.choice(["fast", "immediate"])
            offset = s.pre + rng.randrange(int(s.history * 0.05), int(s.history * 0.5))
            errors: list[BaseException] = []

            def restart(mode: str = mode, errors: list[BaseException] = errors) -> None:
                try:
                    chaos.stack.pg_restart(mode)
                except BaseException as exc:  # reported by the test
                    errors.append(exc)

            thread = threading.Thread(target=restart, daemon=True)
            s.proxy.reset()
            s.proxy.at("down", offset, thread.start, freeze=False)
            with PG_RESTART.trial(seed=SEED, trial=i, mode=mode, offset=offset) as t:
                run = cli(s.args(), s.through, timeout=300)
                thread.join(120)
                t.check(thread.ident is not None, f"the restart never began: {run.describe()}")
                t.check(not errors, f"restarting PostgreSQL failed: {errors}")
                t.fault()
                _phase2_failure(chaos, s, t, run, f"PostgreSQL restarted ({mode})")
                t.outcome(judge(chaos, s, t, f"PostgreSQL restarted ({mode}) at byte {offset}",
                                rng))
    finally:
        repair(chaos.stack, s.before)
