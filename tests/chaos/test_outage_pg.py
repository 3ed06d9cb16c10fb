"""PostgreSQL restarted in the middle of a dump (backup) and of a restore.

The chaos stack's own PostgreSQL is stopped (`pg_ctl -m fast`: sessions terminated, or
`-m immediate`: like a crash) and started again while the operation streams; the transfer runs
through a bandwidth-limited proxy, so pg_dump (paced by the upload) and pg_restore (fed by the
download) are mid-stream when it happens.

Invariants: the run fails cleanly (exit 1, one `error:` line, no traceback) within a bound; a
backup leaves a FAILED record and no open upload, never a complete-looking backup; a restore
leaves the live database unchanged and accepting connections; once PostgreSQL is back the next
run succeeds and drops what the failed one left.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from .conftest import BULKY, FIGURES, SEED, Chaos, count
from .harness import (
    LIVE,
    Run,
    cli,
    databases,
    drop_kept,
    error_problem,
    fingerprint,
    listing,
    need,
    open_uploads,
    prefix_root,
    wait_no_client_programs,
)
from .netfault import FaultProxy

pytestmark = pytest.mark.integration

BOUND_S = 90
DUMPS = count(1, 4)
RESTORES = count(1, 4)
DUMP = FIGURES.scenario(
    "pg-restart-dump", group="Outages", title="PostgreSQL restarted in the middle of a dump",
    invariant="exit 1, one error line, a FAILED record, no open upload, nothing complete; the "
              "next backup succeeds")
RESTORE = FIGURES.scenario(
    "pg-restart-restore", group="Outages",
    title="PostgreSQL restarted in the middle of a restore",
    invariant="exit 1, one error line; the live database unchanged and serving; the next "
              "restore succeeds and drops the half-restored database")


def _restart_in_background(chaos: Chaos, mode: str) -> tuple[threading.Thread, list]:
    errors: list[BaseException] = []

    def go() -> None:
        try:
            chaos.stack.pg_restart(mode)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    return thread, errors


def _run_restarted(chaos: Chaos, proxy: FaultProxy, direction: str, offset: int, mode: str,
                   args: list[str], env: dict[str, str], t: Any) -> Run:
    """Run prefect-dr with ``args`` while PostgreSQL is restarted (``mode``) once ``offset``
    bytes have passed the S3 proxy in ``direction``; check the restart happened and the run
    failed cleanly (exit 1, one error line) within the bound."""
    proxy.reset()
    thread, errors = _restart_in_background(chaos, mode)
    proxy.at(direction, offset, thread.start, freeze=False)
    run = cli(args, env, timeout=300)
    thread.join(120)
    t.check(not errors, f"restarting PostgreSQL failed: {errors}")
    t.check(thread.ident is not None, f"the restart never began: {run.describe()}")
    t.fault()
    t.check(run.seconds < BOUND_S, f"took {run.seconds:.0f}s")
    t.check(error_problem(run, 1) is None, str(error_problem(run, 1)))
    return run


@pytest.mark.timeout(120 + DUMPS * 150)
def test_postgres_restarted_during_a_dump(chaos: Chaos, rng: random.Random) -> None:
    env = chaos.env("pgdump", PREFECT_DR_DATABASE_URL=chaos.url(BULKY))
    proxy = FaultProxy(chaos.stack.s3_endpoint, rate=4_000_000)
    through = dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    seen: set[str] = set()
    try:
        for i in range(DUMPS):
            mode = rng.choice(["fast", "immediate"])
            offset = rng.randrange(1_000_000, 12_000_000)  # of a ~21 MB upload
            with DUMP.trial(seed=SEED, trial=i, mode=mode, offset=offset) as t:
                _run_restarted(chaos, proxy, "up", offset, mode, ["backup", "--json"], through, t)
                t.check(not wait_no_client_programs(f"/{BULKY}"), "pg_dump still runs")
                entries = listing(env)
                new = [e for bid, e in entries.items() if bid not in seen]
                seen |= set(entries)
                t.check(len(new) == 1 and new[0].status == "failed" and bool(new[0].error),
                        f"no FAILED record: {[(e.backup_id, e.status) for e in new]}")
                t.check(not open_uploads(chaos.stack, prefix_root(env)), "an open upload left")
                t.outcome(f"failed: {new[0].error.split(':')[0]}")
                nxt = cli(["backup", "--json"], env)
                t.check(nxt.returncode == 0, f"the next backup failed: {nxt.describe()}")
                seen.add(nxt.json["backup_id"])
    finally:
        proxy.close()


@pytest.mark.timeout(120 + RESTORES * 180)
def test_postgres_restarted_during_a_restore(chaos: Chaos, rng: random.Random) -> None:
    env = chaos.env("pgrestore", PREFECT_DR_DATABASE_URL=chaos.url(BULKY))
    made = cli(["backup", "--json"], env)
    need(made.returncode == 0, made.describe())
    backup_id = made.json["backup_id"]
    live_env = dict(env, PREFECT_DR_DATABASE_URL=chaos.url(LIVE))
    before, restored = fingerprint(chaos.stack, LIVE), fingerprint(chaos.stack, BULKY)
    proxy = FaultProxy(chaos.stack.s3_endpoint, rate=4_000_000)
    through = dict(live_env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    args = ["restore", backup_id, "--yes", "--no-safety-backup", "--force-disconnect", "--json"]
    try:
        for i in range(RESTORES):
            mode = rng.choice(["fast", "immediate"])
            offset = rng.randrange(1_000_000, int(made.json["size"] * 0.6))
            with RESTORE.trial(seed=SEED, trial=i, mode=mode, offset=offset) as t:
                _run_restarted(chaos, proxy, "down", offset, mode, args, through, t)
                t.check(databases(chaos.stack, LIVE).get(LIVE) is True,
                        "the live database is gone or refuses connections")
                t.check(fingerprint(chaos.stack, LIVE) == before, "the live database changed",
                        lost=True)
                left = list(databases(chaos.stack, f"{LIVE}_restore_%"))
                t.outcome("half-restored database left" if left else "cleaned up itself")
                nxt = cli(args, live_env)
                t.check(nxt.returncode == 0, f"the next restore failed: {nxt.describe()}")
                t.check(not databases(chaos.stack, f"{LIVE}_restore_%"),
                        "the next restore did not drop the leftover")
                t.check(fingerprint(chaos.stack, LIVE) == restored, "restore result differs",
                        lost=True)
                back = cli(["rollback", "--yes"], live_env)
                t.check(back.returncode == 0, back.describe())
                t.check(fingerprint(chaos.stack, LIVE) == before, "rollback result differs",
                        lost=True)
                drop_kept(chaos.stack)
    finally:
        proxy.close()
