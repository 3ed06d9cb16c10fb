"""Crashes of `restore`: SIGKILL at random points.

The live database (`prefect` on the chaos stack) is restored from a backup of a different,
bigger database (the bulky copy), so "unchanged" and "restored" are told apart by content. A
trial kills the restore either after a random delay within a measured restore's duration
(reading, streaming, checks, safety backup...) or at a failpoint: right after one of the
restore's steps (tests/chaos/failpoint.py), which reaches boundaries too short for a timer.

Invariant after every kill: the live database exists, accepts connections and is either
unchanged, or the swap completed and `rollback` brings the unchanged database back. A final
uninterrupted restore must drop what the killed runs left.

Kills inside the swap (between its statements) are a test of their own: this suite found that
they left the live database missing or refusing connections, or swapped without the comment
`rollback` needs; since 6225c1c the swap is one transaction. When a restore completed, half of
the time its `rollback` is SIGKILLed at a random point first: the live database must then be the
restored or the old one, and a rollback run again must finish the job.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from prefect_dr.pg import scratch

from .conftest import BULKY, CHANGED, FIGURES, SEED, SOAK, Chaos, count
from .harness import (
    LIVE,
    Proc,
    cli,
    databases,
    drop_kept,
    fingerprint,
    listing,
    need,
    open_uploads,
    prefix_root,
    repair,
    wait_no_client_programs,
)
from .netfault import FaultProxy

pytestmark = pytest.mark.integration

KILLS = count(3, 20)
SWAP_KILLS = count(3, 8)  # CI: a sample of SWAP_POINTS; soak: each point once, then random
SCENARIO = FIGURES.scenario(
    "restore-sigkill", group="Crashes", title="restore SIGKILLed at a random point",
    invariant="the live database exists, accepts connections and is unchanged, or the swap "
              "completed and `rollback` restores it unchanged")
SWAP_SCENARIO = FIGURES.scenario(
    "restore-sigkill-swap", group="Crashes",
    title="restore SIGKILLed between the statements of the swap",
    invariant="as above (found by this suite: the swap was several autocommit statements; "
              "since 6225c1c it is one transaction)")
ROLLBACK_SCENARIO = FIGURES.scenario(
    "rollback-sigkill", group="Crashes", title="rollback SIGKILLed at a random point",
    invariant="the live database is the restored one or the old one, serving; a rollback "
              "run again finishes the job")

# Failpoints at the boundaries of the restore's steps before the swap ...
STEP_POINTS = [
    "prefect_dr.restore:_drop_leftovers:after:1",
    "prefect_dr.restore_stream:read_small_artifacts:after:1",
    "prefect_dr.semantic:semantic_checks:after:1",
    "prefect_dr.backup:run:after:1",  # the safety backup is taken, the swap not yet begun
    "prefect_dr.pg.swap:swap:before:1",
]
# ... and between the statements of the swap (one transaction since 6225c1c).
SWAP_POINTS = [
    "prefect_dr.pg.swap:_clear:after:1",
    "prefect_dr.pg.swap:_clear:after:2",
    "prefect_dr.pg.swap:rename:after:1",
    "prefect_dr.pg.swap:rename:after:2",
    "prefect_dr.pg.swap:comment:after:1",
    "prefect_dr.pg.swap:comment:after:2",
    "prefect_dr.pg.swap:swap:after:1",
]
ROLLBACK_POINTS = [
    "prefect_dr.restore:_take_lock:after:1",
    "prefect_dr.pg.swap:rename:after:1",
    "prefect_dr.pg.swap:rename:after:2",
    "prefect_dr.pg.swap:comment:after:2",
    "prefect_dr.pg.swap:swap:after:1",
]


@dataclass
class Setup:
    env: dict[str, str]
    backup_id: str
    before: dict[str, Any]  # fingerprint of the live database
    restored: dict[str, Any]  # fingerprint of what the backup holds


@pytest.fixture(scope="module")
def setup(chaos: Chaos) -> Iterator[Setup]:
    """A backup of another database (the bulky one in soak mode, a small changed copy in CI)
    to restore over the live one."""
    env = chaos.env("rkill")
    source = BULKY if SOAK else CHANGED
    run = cli(["backup", "--json"], dict(env, PREFECT_DR_DATABASE_URL=chaos.url(source)))
    need(run.returncode == 0, run.describe())
    before = fingerprint(chaos.stack, LIVE)
    yield Setup(env, run.json["backup_id"], before, fingerprint(chaos.stack, source))
    repair(chaos.stack, before)


def judge(chaos: Chaos, setup: Setup, t: Any, point: str,
          rng: random.Random | None = None) -> str:
    """Check the invariant after a kill; returns the state found. Raises AssertionError (via
    t.check) when it does not hold. With ``rng``, a swapped state is first rolled back by a
    rollback SIGKILLed at a random point (half the time)."""
    stack = chaos.stack
    t.check(not wait_no_client_programs(f"/{LIVE}_restore_") and
            not wait_no_client_programs(f"/{LIVE}"), "pg_restore/pg_dump of the killed run "
            "still runs")
    dbs = databases(stack, f"{LIVE}%")
    t.check(LIVE in dbs, f"the live database {LIVE} is gone (kill at {point}); "
            f"databases: {sorted(dbs)}")
    t.check(dbs[LIVE], f"the live database {LIVE} refuses connections (kill at {point})")
    now = fingerprint(stack, LIVE)
    if now == setup.before:
        t.check(not [d for d in dbs if "_pre_restore_" in d],
                f"live unchanged but a pre-restore database exists: {sorted(dbs)}")
        return "unchanged"
    t.check(now == setup.restored, "the live database changed into something that is neither "
            f"the old nor the restored database (kill at {point})", lost=True)
    if rng is not None and rng.random() < 0.5:
        point = rng.choice(ROLLBACK_POINTS)
        with ROLLBACK_SCENARIO.trial(seed=SEED, point=point) as r:
            run = Proc(["rollback", "--yes", "--json"], setup.env, failpoint=point).wait(120)
            r.check(run.returncode == -9, f"failpoint {point} not reached: {run.describe()}")
            r.fault()
            dbs = databases(stack, f"{LIVE}%")
            r.check(dbs.get(LIVE) is True, f"after a killed rollback {LIVE} is gone or refuses "
                    f"connections: {sorted(dbs)}")
            state = fingerprint(stack, LIVE)
            r.check(state in (setup.before, setup.restored), "a killed rollback left a live "
                    "database that is neither the restored nor the old one", lost=True)
            r.outcome("rolled back" if state == setup.before else "still restored")
        if state == setup.before:
            drop_kept(chaos.stack)
            return "swapped, rollback killed after it committed"
    back = cli(["rollback", "--yes", "--json"], setup.env)
    t.check(back.returncode == 0, f"swap completed but rollback fails: {back.describe()}")
    t.check(databases(stack, LIVE).get(LIVE) is True, "rolled back database refuses "
            "connections")
    t.check(fingerprint(stack, LIVE) == setup.before, "rollback did not bring back the "
            "unchanged database", lost=True)
    drop_kept(chaos.stack)
    return "swapped, rolled back"


@pytest.mark.timeout(300 + 2 * KILLS * 90)
def test_restore_killed_at_random_points(chaos: Chaos, setup: Setup,
                                         rng: random.Random) -> None:
    proxy = FaultProxy(chaos.stack.s3_endpoint, rate=8_000_000)
    through = dict(setup.env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    args = ["restore", setup.backup_id, "--yes", "--force-disconnect", "--json"]
    try:
        duration = 4.0  # CI: an estimate; soak: measured
        if SOAK:
            with SCENARIO.trial(seed=SEED, calibration=True) as t:
                run = cli(args, through)
                t.check(run.returncode == 0, run.describe())
                duration = run.seconds
                t.outcome(judge(chaos, setup, t, "none (calibration)"))

        faults = 0  # a timed kill can fire after the end: trials go on until KILLS landed
        for i in range(2 * KILLS):
            if faults >= KILLS:
                break
            timed = rng.random() < 0.5
            point = f"after {rng.uniform(0.3, duration):.2f}s" if timed else rng.choice(
                STEP_POINTS + SWAP_POINTS)
            group = rng.random() < 0.5
            with SCENARIO.trial(seed=SEED, trial=i, point=point, group=group) as t:
                proc = Proc(args, through, failpoint=None if timed else point)
                if timed:
                    deadline = proc.started + float(point.split()[1][:-1])
                    while time.monotonic() < deadline and proc.popen.poll() is None:
                        time.sleep(0.01)
                    proc.kill(group=group)
                run = proc.wait(timeout=300)
                if run.returncode == -9:
                    t.fault()
                    faults += 1
                else:  # the timer fired after the end: a whole restore
                    t.check(timed and run.returncode == 0, run.describe())
                t.outcome(judge(chaos, setup, t, point, rng))

        with SCENARIO.trial(seed=SEED, final="uninterrupted restore, rollback, prune") as t:
            run = cli(args, setup.env)
            t.check(run.returncode == 0, run.describe())
            left = [d for d in databases(chaos.stack, f"{LIVE}_restore_%")]
            t.check(not left, f"leftovers of killed restores survived a restore: {left}")
            t.outcome(judge(chaos, setup, t, "none (final)"))
            pruned = cli(["prune", "--grace", "0s", "--json"],
                         dict(setup.env, PREFECT_DR_RETENTION_FULL="keep-last=50"))
            t.check(pruned.returncode == 0, pruned.describe())
            t.check(all(e.status == "complete" for e in listing(setup.env).values()),
                    "prune left incomplete safety backups of killed restores")
            t.check(not open_uploads(chaos.stack, prefix_root(setup.env)), "open uploads left")
    finally:
        proxy.close()


@pytest.mark.timeout(120 + SWAP_KILLS * 60)
def test_restore_killed_inside_the_swap(chaos: Chaos, setup: Setup, rng: random.Random) -> None:
    """Every boundary between the swap's statements (soak), a sample of them (CI)."""
    args = ["restore", setup.backup_id, "--yes", "--no-safety-backup", "--force-disconnect",
            "--json"]
    points = list(SWAP_POINTS)
    rng.shuffle(points)
    points = (points + [rng.choice(SWAP_POINTS) for _ in range(SWAP_KILLS)])[:SWAP_KILLS]
    try:
        for point in points:
            with SWAP_SCENARIO.trial(seed=SEED, point=point) as t:
                run = Proc(args, setup.env, failpoint=point).wait(timeout=300)
                t.check(run.returncode == -9, f"the failpoint was not reached: {run.describe()}")
                t.fault()
                t.outcome(judge(chaos, setup, t, point, rng))
    finally:
        repair(chaos.stack, setup.before)


AUTOVACUUM = FIGURES.scenario(
    "autovacuum-swap", group="Crashes", title="restore and rollback while autovacuum works",
    invariant="autovacuum is not a client: restore --force-disconnect and rollback succeed "
              "(found by the soak: the swap counted autovacuum workers as connected clients "
              "and, forced, failed to terminate them as a non-superuser)")
AV_DB = "prefect_av"


@pytest.mark.timeout(240)
def test_restore_while_autovacuum_works(chaos: Chaos, setup: Setup) -> None:
    """A Prefect database on which autovacuum is busy (a table of dead rows, vacuumed at the
    slowest cost settings) is restored over and rolled back, as happens on a busy server or
    right after a big restore."""
    stack = chaos.stack
    with stack.admin() as admin:
        scratch.drop_database(admin, AV_DB)
        admin.execute(f'CREATE DATABASE "{AV_DB}" OWNER prefect')
    try:
        with stack.connect(AV_DB) as conn:
            conn.execute("CREATE TABLE chaos_dead (id int, pad text) WITH ("
                         "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1,"
                         " autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0)")
            conn.execute("INSERT INTO chaos_dead SELECT g, repeat('x', 200) "
                         "FROM generate_series(1, 100000) g")
            conn.execute("DELETE FROM chaos_dead")
        with stack.admin() as admin:
            admin.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
            admin.execute("SELECT pg_reload_conf()")
        busy = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not busy:
            with stack.admin() as admin:
                busy = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                     "AND backend_type = 'autovacuum worker'",
                                     (AV_DB,)).fetchone()[0]
            time.sleep(0.5)
        need(bool(busy), "autovacuum never started on the test database")
        target = ["--target-url", chaos.url(AV_DB)]
        with AUTOVACUUM.trial(seed=SEED) as t:
            t.fault()
            forced = cli(["restore", setup.backup_id, "--yes", "--no-safety-backup",
                          "--force-disconnect", "--json", *target], setup.env)
            t.outcome(f"restore --force-disconnect: exit {forced.returncode}")
            t.check(forced.returncode == 0, forced.describe())
            with stack.connect(AV_DB) as conn:
                restored = conn.execute("SELECT to_regclass('chaos_dead')").fetchone()[0]
            t.check(restored is None, "the restored database still has the old table")
            back = cli(["rollback", "--yes", *target], setup.env)
            t.outcome(f"rollback: exit {back.returncode}")
            t.check(back.returncode == 0, back.describe())
            with stack.connect(AV_DB) as conn:
                old = conn.execute("SELECT to_regclass('chaos_dead')").fetchone()[0]
            t.check(old is not None, "rollback did not bring the old database back")
    finally:
        with stack.admin() as admin:
            admin.execute("ALTER SYSTEM RESET autovacuum_naptime")
            admin.execute("SELECT pg_reload_conf()")
            for name in [r[0] for r in admin.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s", (AV_DB + "%",))]:
                scratch.drop_database(admin, name)
