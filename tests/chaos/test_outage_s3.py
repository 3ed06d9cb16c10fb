"""S3 outages in the middle of an upload (backup), a download (verify, restore) and a prune.

"S3 down" is a proxy between the tool and SeaweedFS that resets every open connection and every
new one (after reading its request line). It starts at a random byte offset of the transfer (a
random DELETE for prune) and is either *short* (back after 0.3-1.5 s, less than the retry
deadline) or *long* (back only when the tool writes its failed record, or when it has exited).
Every run uses PREFECT_DR_S3_RETRY_DEADLINE=3.

Invariants: a short outage is ridden out (or fails as cleanly as a long one); a long one ends
within a bound in a clean failure: the documented exit code, one `error:` line, no traceback, a
FAILED record (backup: status record and metrics; verify: its verification record); nothing ever
looks complete that is not whole; the next prune removes every leftover and open upload.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from .conftest import BULKY, FIGURES, SEED, Chaos, count
from .harness import (
    LIVE,
    artifacts_match,
    cli,
    databases,
    delete_prefix,
    drop_kept,
    error_problem,
    fingerprint,
    get,
    keys,
    listing,
    metric,
    need,
    open_uploads,
    prefix_root,
    put,
    whole,
)
from .netfault import FaultProxy, Request

pytestmark = pytest.mark.integration

BOUND_S = 60  # a failed run must end within this (retry deadline 3 s)
SHORT_DEADLINE = "10"  # short outages (< 1.5 s) run with this retry deadline: they are ridden out
UPLOADS = count(2, 10)
DOWNLOADS = count(2, 10)
PRUNES = count(1, 6)
UPLOAD = FIGURES.scenario(
    "s3-outage-upload", group="Outages", title="S3 down in the middle of a backup's upload",
    invariant="short: ridden out, the backup complete and whole; long: exit 1 within "
              f"{BOUND_S}s, one error line, a FAILED status record and metric; prune cleans up")
DOWNLOAD = FIGURES.scenario(
    "s3-outage-download", group="Outages",
    title="S3 down in the middle of a download (verify, restore)",
    invariant="short: ridden out (resumed); long: a clean failure within the bound; the live "
              "database unchanged and no half-restored database left")
PRUNE = FIGURES.scenario(
    "s3-outage-prune", group="Outages", title="S3 down in the middle of a prune",
    invariant="no complete backup loses an object; exit 1 with one error line; the next prune "
              "finishes the job")
VERIFY_EXIT = FIGURES.scenario(
    "s3-outage-verify-exit", group="Outages",
    title="S3 down during verify: exit code and record",
    invariant="exit 1 (S3 unreachable, docs/exit-codes.md), no verification record: an outage "
              "is no verdict on the backup (found by this suite: it was exit 13 and a failed "
              "record; fixed in 6225c1c)")


def _plan(rng: random.Random, n: int, choices: list[str]) -> list[str]:
    """The first trials cover every choice in order, the rest are random."""
    return [choices[i] if i < len(choices) else rng.choice(choices) for i in range(n)]


def _outage(proxy: FaultProxy, kind: str, rng: random.Random, allow: object = None
            ) -> tuple[object, str, dict[str, str]]:
    """(action starting the outage, label, environment changes). A short outage lasts
    0.3-1.5 s and runs with a retry deadline of 10 s; a long one lasts until ``allow`` lets a
    request through (or the run ends), with the suite's deadline of 3 s."""
    if kind == "short":
        seconds = round(rng.uniform(0.3, 1.5), 2)

        def act() -> None:
            proxy.down()
            threading.Timer(seconds, proxy.up).start()
        return act, f"short ({seconds}s)", {"PREFECT_DR_S3_RETRY_DEADLINE": SHORT_DEADLINE}
    return (lambda: proxy.down(allow=allow)), "long", {}  # type: ignore[arg-type]


def _is_status_put(req: Request) -> bool:
    return req.method == "PUT" and req.path.split("?")[0].endswith("/status.json")


@pytest.mark.timeout(120 + UPLOADS * 120)
def test_s3_down_during_backup_upload(chaos: Chaos, rng: random.Random) -> None:
    env = chaos.env("s3up", PREFECT_DR_DATABASE_URL=chaos.url(BULKY))
    metrics = Path(env["PREFECT_DR_METRICS_FILE"])
    first = cli(["backup", "--json"], env)
    need(first.returncode == 0, first.describe())
    total = first.json["size"]
    proxy = FaultProxy(chaos.stack.s3_endpoint)
    through = dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    seen = set(listing(env))
    try:
        for i, kind in enumerate(_plan(rng, UPLOADS, ["long", "short"])):
            proxy.reset()
            offset = rng.randrange(int(total * 0.05), int(total * 0.95))
            action, label, extra = _outage(proxy, kind, rng, allow=_is_status_put)
            trigger = proxy.at("up", offset, action, freeze=False)  # type: ignore[arg-type]
            with UPLOAD.trial(seed=SEED, trial=i, outage=label, offset=offset, of=total) as t:
                run = cli(["backup", "--json"], {**through, **extra}, timeout=300)
                proxy.up()
                t.check(trigger.fired.is_set(), f"the outage never began: {run.describe()}")
                t.fault()
                t.check(run.seconds < BOUND_S, f"took {run.seconds:.0f}s: {run.describe()}")
                entries = listing(env)
                new = [e for bid, e in entries.items() if bid not in seen]
                seen |= set(entries)
                t.check(len(new) == 1, f"expected one new backup, got {new}")
                if run.returncode == 0:
                    t.outcome(f"{kind}: ridden out")
                    t.check(new[0].status == "complete" and artifacts_match(chaos.stack, new[0]),
                            f"backup {new[0].backup_id} reported complete is not whole",
                            lost=True)
                else:
                    t.outcome(f"{kind}: failed cleanly")
                    t.check(error_problem(run, 1) is None, str(error_problem(run, 1)))
                    t.check(new[0].status == "failed" and bool(new[0].error),
                            f"no FAILED record: {new[0].status} {new[0].error}")
                    t.check(metric(metrics, "last_run_success", command="backup") == 0,
                            "the metrics do not record the failed backup")
                for entry in entries.values():
                    t.check(entry.status in ("complete", "failed", "incomplete"),
                            f"{entry.backup_id} is {entry.status}")
                    if entry.status == "complete":
                        t.check(whole(chaos.stack, entry), f"{entry.backup_id} not whole",
                                lost=True)
    finally:
        proxy.close()
    with UPLOAD.trial(seed=SEED, final="prune --grace 0s") as t:
        pruned = cli(["prune", "--grace", "0s", "--json"],
                     dict(env, PREFECT_DR_RETENTION_FULL="keep-last=50"))
        t.check(pruned.returncode == 0, pruned.describe())
        entries = listing(env)
        t.check(all(e.status == "complete" for e in entries.values()), "leftovers survive")
        t.check(not open_uploads(chaos.stack, prefix_root(env)), "open uploads survive")
        for entry in entries.values():
            t.check(artifacts_match(chaos.stack, entry), f"{entry.backup_id} broken", lost=True)
        if len(entries) > 1:
            final = cli(["verify", "--all" if chaos_soak() else "--latest", "--json"], env)
            t.check(final.returncode == 0, final.describe(), lost=True)


def chaos_soak() -> bool:
    from .conftest import SOAK

    return SOAK


@pytest.fixture(scope="module")
def bulky_backup(chaos: Chaos) -> tuple[dict[str, str], str, int]:
    """A repository with one backup of the bulky database: (env, backup id, size)."""
    env = chaos.env("s3down", PREFECT_DR_DATABASE_URL=chaos.url(BULKY))
    made = cli(["backup", "--json"], env)
    need(made.returncode == 0, made.describe())
    return env, made.json["backup_id"], made.json["size"]


@pytest.mark.timeout(120 + DOWNLOADS * 120)
def test_s3_down_during_download(chaos: Chaos, bulky_backup: tuple[dict[str, str], str, int],
                                 rng: random.Random) -> None:
    env, backup_id, total = bulky_backup
    live_env = dict(env, PREFECT_DR_DATABASE_URL=chaos.url(LIVE))
    before, restored = fingerprint(chaos.stack, LIVE), fingerprint(chaos.stack, BULKY)
    proxy = FaultProxy(chaos.stack.s3_endpoint)
    through = dict(live_env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    plans = _plan(rng, DOWNLOADS, ["verify long", "restore short", "verify short",
                                   "restore long"])
    try:
        for i, plan in enumerate(plans):
            op, kind = plan.split()
            proxy.reset()
            offset = rng.randrange(int(total * 0.05), int(total * 0.9))

            def records(req: Request) -> bool:
                return req.method == "PUT" and "/verifications/" in req.path

            action, label, extra = _outage(proxy, kind, rng,
                                           allow=records if op == "verify" else None)
            trigger = proxy.at("down", offset, action, freeze=False)  # type: ignore[arg-type]
            args = ["verify", backup_id, "--json"] if op == "verify" else [
                "restore", backup_id, "--yes", "--no-safety-backup", "--force-disconnect",
                "--json"]
            with DOWNLOAD.trial(seed=SEED, trial=i, op=op, outage=label, offset=offset) as t:
                run = cli(args, {**through, **extra}, timeout=300)
                proxy.up()
                t.check(trigger.fired.is_set(), f"the outage never began: {run.describe()}")
                t.fault()
                t.check(run.seconds < BOUND_S, f"took {run.seconds:.0f}s: {run.describe()}")
                if run.returncode == 0:
                    t.outcome(f"{op} {kind}: ridden out")
                else:
                    t.outcome(f"{op} {kind}: failed cleanly")
                    t.check(error_problem(run, 1) is None, str(error_problem(run, 1)))
                if op == "restore":
                    left = [d for d in databases(chaos.stack, f"{LIVE}_restore_%")]
                    t.check(not left, f"half-restored database left: {left}")
                    state = fingerprint(chaos.stack, LIVE)
                    if run.returncode == 0:
                        t.check(state == restored, "restore reported success, live differs",
                                lost=True)
                        back = cli(["rollback", "--yes"], live_env)
                        t.check(back.returncode == 0, back.describe())
                        state = fingerprint(chaos.stack, LIVE)
                    t.check(state == before, "the live database changed", lost=True)
                    drop_kept(chaos.stack)
                entry = listing(env)[backup_id]
                t.check(entry.status == "complete" and artifacts_match(chaos.stack, entry),
                        "the outage damaged the backup", lost=True)
    finally:
        proxy.close()


def test_verify_exit_code_when_s3_goes_down(
        chaos: Chaos, bulky_backup: tuple[dict[str, str], str, int]) -> None:
    env, backup_id, size = bulky_backup
    proxy = FaultProxy(chaos.stack.s3_endpoint)
    try:
        # S3 is back when verify writes its record (as it is once a short outage is over)
        proxy.at("down", size // 2, lambda: proxy.down(
            allow=lambda r: r.method == "PUT" and "/verifications/" in r.path), freeze=False)
        with VERIFY_EXIT.trial(seed=SEED) as t:
            run = cli(["verify", backup_id, "--json"],
                      dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url))
            t.fault()
            t.outcome(f"exit {run.returncode}")
            t.check(error_problem(run, 1) is None, str(error_problem(run, 1)))
            newest = listing(env)[backup_id].verification
            t.check(newest is None or newest.get("result") != "failed",
                    f"the outage was recorded as a failed verification: {newest}")
    finally:
        proxy.close()


@pytest.mark.timeout(120 + PRUNES * 90)
def test_s3_down_during_prune(chaos: Chaos, rng: random.Random) -> None:
    env = chaos.env("s3prune")
    ids = []
    for _ in range(3):
        made = cli(["backup", "--kind", "config-only", "--json"], env)
        need(made.returncode == 0, made.describe())
        ids.append(made.json["backup_id"])
    root = prefix_root(env)
    snapshot = {k: get(chaos.stack, k) for k in keys(chaos.stack, root)}
    policy = dict(env, PREFECT_DR_RETENTION_CONFIG_ONLY="keep-last=1")
    proxy = FaultProxy(chaos.stack.s3_endpoint)
    through = dict(policy, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    try:
        for i, kind in enumerate(_plan(rng, PRUNES, ["long", "short"])):
            delete_prefix(chaos.stack, root)
            for key, body in snapshot.items():
                put(chaos.stack, key, body)
            chaos.stack.s3().create_multipart_upload(Bucket=chaos.stack.bucket,
                                                     Key=f"{root}backups/{ids[0]}/stale.part")
            dry = cli(["prune", "--grace", "0s", "--dry-run", "--json"], policy)
            assert dry.returncode == 0, dry.describe()
            deletes = dry.json["counts"]["objects_deleted"]
            nth = rng.randint(1, deletes)
            proxy.reset()
            action, label, extra = _outage(proxy, kind, rng)
            trigger = proxy.before_request(
                lambda r: r.method == "DELETE" and "uploadId" not in r.path, nth,
                action, freeze=False)  # type: ignore[arg-type]
            with PRUNE.trial(seed=SEED, trial=i, outage=label, at_delete=nth, of=deletes) as t:
                run = cli(["prune", "--grace", "0s", "--json"], {**through, **extra},
                          timeout=300)
                proxy.up()
                t.check(trigger.fired.is_set(), f"the outage never began: {run.describe()}")
                t.fault()
                t.check(run.seconds < BOUND_S, f"took {run.seconds:.0f}s: {run.describe()}")
                if run.returncode == 0:
                    t.outcome(f"{kind}: ridden out")
                else:
                    t.outcome(f"{kind}: stopped part-way")
                    t.check(error_problem(run, 1) is None, str(error_problem(run, 1)))
                    for entry in listing(env).values():
                        if entry.status == "complete":
                            t.check(whole(chaos.stack, entry),
                                    f"prune left {entry.backup_id} complete but not whole",
                                    lost=True)
                    again = cli(["prune", "--grace", "0s", "--json"], policy)
                    t.check(again.returncode == 0, f"the next prune failed: {again.describe()}")
                entries = listing(env)
                t.check(set(entries) == {ids[-1]}, f"after prune: {sorted(entries)}")
                t.check(artifacts_match(chaos.stack, entries[ids[-1]]), "the kept backup "
                        "was damaged", lost=True)
                t.check(not open_uploads(chaos.stack, root), "open uploads survive")
    finally:
        proxy.close()
