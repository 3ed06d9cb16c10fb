"""Crashes of `backup`: SIGKILL at random byte offsets of its upload.

A proxy between the tool and S3 counts the bytes the tool sends; at the trial's offset it stops
forwarding (S3 has received exactly that many bytes) and SIGKILLs the backup (alone, or with its
pg_dump: its whole process group). Offsets are drawn half uniformly over the whole upload (the
dump's parts dominate), half inside one of the requests of a calibration run (status record,
lock object, multipart start/parts/completion, configuration export, manifest, lock release), so
the rare small steps are hit too. Some offsets lie past the end: that backup completes.

After every trial: no backup that `list` reports complete fails `verify`; every complete
backup has all its artifacts; the killed run's pg_dump is gone; the next run is not blocked by
the dead run's lock. At the end `prune --grace 0s` removes every leftover and aborts every open
multipart upload, leaving only whole, verified backups.
"""

from __future__ import annotations

import random
import threading

import pytest

from .conftest import BULKY, FIGURES, SEED, Chaos, count
from .harness import (
    Proc,
    cli,
    keys,
    listing,
    open_uploads,
    prefix_root,
    wait_no_client_programs,
    whole,
)
from .netfault import FaultProxy, Request

pytestmark = pytest.mark.integration

KILLS = count(4, 50)
SCENARIO = FIGURES.scenario(
    "backup-sigkill", group="Crashes",
    title="backup SIGKILLed at a random byte offset of its upload",
    invariant="no backup `list` reports complete fails `verify`; the next backup is not "
              "blocked; `prune --grace 0s` removes every leftover and open upload")


def pick_offset(rng: random.Random, total: int, requests: list[Request]) -> tuple[int, str]:
    """An upload offset: uniform over the whole upload (5% past its end), or inside the first
    4 KiB of one request of the calibration run."""
    if rng.random() < 0.5 or not requests:
        return rng.randrange(0, int(total * 1.05) + 1), "uniform"
    i = rng.randrange(len(requests))
    start = requests[i].offset
    end = requests[i + 1].offset if i + 1 < len(requests) else total
    return rng.randrange(start, max(start + 1, min(end, start + 4096))), \
        f"{requests[i].method} {requests[i].path.split('?')[0].rsplit('/', 1)[-1]}"


@pytest.mark.timeout(120 + 2 * KILLS * 60)
def test_backup_killed_at_random_upload_offsets(chaos: Chaos, rng: random.Random) -> None:
    env = chaos.env("bkill", PREFECT_DR_DATABASE_URL=chaos.url(BULKY))
    proxy = FaultProxy(chaos.stack.s3_endpoint)
    through = dict(env, PREFECT_DR_S3_ENDPOINT_URL=proxy.url)
    verified: set[str] = set()
    try:
        with SCENARIO.trial(calibration=True, seed=SEED) as t:
            run = cli(["backup", "--json"], through)
            t.check(run.returncode == 0, run.describe())
            total, requests = proxy.up_bytes, list(proxy.requests)
            t.check(sum(r.method == "PUT" and "partNumber" in r.path for r in requests) >= 2,
                    f"the calibration backup was not a multipart upload: {requests}")
            t.outcome("complete")
        seen = set(listing(env))

        faults = 0  # an offset past the end kills nothing: trials go on until KILLS landed
        for i in range(2 * KILLS):
            if faults >= KILLS:
                break
            offset, where = pick_offset(rng, total, requests)
            group = rng.random() < 0.5
            proxy.reset()
            ready = threading.Event()
            holder: dict[str, Proc] = {}

            def kill(group: bool = group, ready: threading.Event = ready,
                     holder: dict[str, Proc] = holder) -> None:
                ready.wait(30)
                holder["proc"].kill(group=group)

            trigger = proxy.at("up", offset, kill)
            with SCENARIO.trial(seed=SEED, trial=i, offset=offset, of=total, at=where,
                                group=group) as t:
                holder["proc"] = Proc(["backup", "--json"], through)
                ready.set()
                run = holder["proc"].wait(timeout=180)
                if trigger.fired.is_set():
                    t.fault()
                    faults += 1
                    t.check(run.returncode == -9, f"expected SIGKILL: {run.describe()}")
                else:  # the offset lay past the end of this run's upload
                    t.check(run.returncode == 0, f"an unkilled backup failed (the killed "
                            f"run before it blocked it?): {run.describe()}")
                t.check(not wait_no_client_programs(f"/{BULKY}"),
                        "pg_dump of the killed backup still runs")
                entries = listing(env)
                new = [e for bid, e in entries.items() if bid not in seen]
                seen |= set(entries)
                t.outcome(new[0].status if new else "nothing listed")
                for entry in entries.values():
                    t.check(entry.status in ("complete", "incomplete", "failed"),
                            f"backup {entry.backup_id} is {entry.status}: {entry.error}")
                    if entry.status != "complete":
                        continue
                    t.check(whole(chaos.stack, entry),
                            f"complete backup {entry.backup_id} lacks an artifact", lost=True)
                    if entry.backup_id not in verified:
                        check = cli(["verify", entry.backup_id, "--json"], env)
                        t.check(check.returncode == 0, f"complete backup {entry.backup_id} "
                                f"fails verify: {check.describe()}", lost=True)
                        verified.add(entry.backup_id)
    finally:
        proxy.close()

    with SCENARIO.trial(seed=SEED, final="next backup + prune --grace 0s") as t:
        nxt = cli(["backup", "--json"], env)
        t.check(nxt.returncode == 0, f"the backup after the kills failed: {nxt.describe()}")
        leftovers = [e for e in listing(env).values() if e.status != "complete"]
        pruned = cli(["prune", "--grace", "0s", "--json"],
                     dict(env, PREFECT_DR_RETENTION_FULL="keep-last=2"))
        t.check(pruned.returncode == 0, pruned.describe())
        root = prefix_root(env)
        entries = listing(env)
        t.check(all(e.status == "complete" for e in entries.values()),
                f"prune left {[(e.backup_id, e.status) for e in entries.values()]}")
        t.check(2 <= len(entries) <= 3, f"keep-last=2 (+ newest verified) kept {len(entries)}")
        t.check(not open_uploads(chaos.stack, root), "prune left open multipart uploads: "
                f"{open_uploads(chaos.stack, root)}")
        stray = [k for k in keys(chaos.stack, root)
                 if not any(k.startswith(f"{root}backups/{bid}/") for bid in entries)]
        t.check(not stray, f"objects left that belong to no kept backup: {stray[:5]}")
        for entry in entries.values():
            t.check(whole(chaos.stack, entry), f"prune broke {entry.backup_id}", lost=True)
        final = cli(["verify", "--all", "--json"], env)
        t.check(final.returncode == 0, final.describe(), lost=True)
        t.outcome(f"prune removed {len(leftovers)} leftovers")
        SCENARIO.notes.append(f"upload of one backup: {total} bytes in {len(requests)} requests")
