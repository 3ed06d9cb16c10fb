"""Synthetic backups for retention and prune tests: candidates for the planner, and repositories
written through any Storage (memory or the stack's S3) in the real layout."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import dataclass, field

from prefect_dr import layout as lay
from prefect_dr.catalog import status_record
from prefect_dr.layout import Layout
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.retention import Candidate
from prefect_dr.storage.base import Storage

UTC = dt.UTC
#: "now" of every golden plan: 400 days after the first synthetic backup's day.
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass
class Fake:
    """One synthetic backup."""

    started: dt.datetime
    status: str = "complete"
    kind: str = "full"
    verified: bool | None = None
    labels: dict[str, str] = field(default_factory=dict)
    suffix: str = "000000"

    @property
    def id(self) -> str:
        return self.started.strftime("%Y%m%dT%H%M%SZ") + "-" + self.suffix

    def candidate(self) -> Candidate:
        return Candidate(id=self.id, kind=self.kind, status=self.status, started_at=self.started,
                         verified=self.verified, labels=dict(self.labels),
                         last_activity=self.started)


def sixty() -> list[Fake]:
    """60 backups over 400 days (oldest first), deterministic.

    Shape: every 12 days from 400 to ~200 days ago, then a 50-day gap, every 8 days from 150 to
    ~20 days ago, then daily with two missing days, three a day on the last two days.
    Specials: the 2025/2026 year boundary (2025-12-28 23:30 is ISO 2025-W52; 2025-12-31
    23:59:59 and 2026-01-01 00:00:01 are both ISO 2026-W01), failed, incomplete and corrupt
    backups (some inside the 24h grace), verification results, labels.
    """
    rng = random.Random(20261126)
    times: list[dt.datetime] = []

    def at(days_ago: float, hour: int | None = None, minute: int | None = None) -> dt.datetime:
        day = (NOW - dt.timedelta(days=days_ago)).replace(
            hour=rng.randint(0, 23) if hour is None else hour,
            minute=rng.randint(0, 59) if minute is None else minute, second=0, microsecond=0)
        return day

    times += [at(d) for d in range(400, 199, -12)]            # 17 backups, 12 days apart
    times += [at(d) for d in range(150, 19, -8)]              # 17 backups, 8 days apart
    times += [at(d, 2, 0) for d in range(17, 2, -1) if d not in (11, 12)]  # 13 daily
    specials = [
        dt.datetime(2025, 12, 28, 23, 30, tzinfo=UTC),
        dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
        dt.datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC),  # failed
    ]
    recent = [NOW - dt.timedelta(days=2) + dt.timedelta(hours=h) for h in (-8, 0, 6)]
    recent += [NOW - dt.timedelta(days=1) + dt.timedelta(hours=h) for h in (-10, -2, 5)]
    recent += [NOW - dt.timedelta(hours=30), NOW - dt.timedelta(hours=3),
               NOW - dt.timedelta(hours=1)]
    times = sorted(set(times + specials + recent))
    fakes = [Fake(t, suffix=f"{rng.getrandbits(24):06x}", labels={"env": "prod"})
             for t in times]
    by_time = {f.started: f for f in fakes}

    def nth_before(days_ago: float) -> Fake:
        """The newest fake started at least ``days_ago`` days before NOW."""
        limit = NOW - dt.timedelta(days=days_ago)
        return [f for f in fakes if f.started <= limit][-1]

    by_time[dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)].status = "failed"
    by_time[NOW - dt.timedelta(hours=3)].status = "failed"          # within grace
    by_time[NOW - dt.timedelta(hours=1)].status = "incomplete"      # may be running
    by_time[NOW - dt.timedelta(hours=30)].status = "incomplete"     # older than grace
    nth_before(100).status = "failed"
    nth_before(250).status = "incomplete"
    nth_before(60).status = "corrupt"
    nth_before(300).labels["pin"] = "release"
    nth_before(90).labels["pin"] = "release"
    for days, result in ((5, True), (40, True), (120, True), (2, False), (9, False)):
        nth_before(days).verified = result
    for f in fakes[::7]:
        f.labels["trigger"] = "manual"
    assert len(fakes) == 60, len(fakes)
    return fakes


# -- writing fake backups into a real repository layout ---------------------------------------

def _artifact(name: str, key: str, data: bytes) -> Artifact:
    digest = hashlib.sha256(data).hexdigest()
    return Artifact(name=name, key=key, content="test", size=len(data), sha256=digest,
                    plaintext_size=len(data), plaintext_sha256=digest, compression="none")


def write_backup(storage: Storage, layout: Layout, fake: Fake, *, size: int = 64,
                 verifications: int = 1) -> list[str]:
    """Write ``fake`` into ``storage`` the way backup/verify would; return the keys written."""
    bid = fake.id
    keys = []

    def put(key: str, data: bytes) -> None:
        storage.put_bytes(key, data)
        keys.append(key)

    started = fake.started.isoformat()
    put(layout.artifact(bid, lay.STATUS), status_record(
        bid, fake.kind, "failed" if fake.status == "failed" else "running", started_at=started,
        host="test", pid=1, run_id="test", labels=dict(fake.labels),
        error="boom" if fake.status == "failed" else None))
    if fake.status == "failed":
        return keys
    artifacts = []
    for name, file in (("dump", lay.DUMP), ("config", lay.CONFIG_EXPORT)):
        data = (bid + name).encode() * (size // len(bid + name) + 1)
        put(layout.artifact(bid, file), data[:size])
        artifacts.append(_artifact(name, layout.artifact(bid, file), data[:size]))
    if fake.status == "incomplete":
        return keys
    if fake.status == "corrupt":
        put(layout.artifact(bid, lay.MANIFEST), b'{"format": "prefect-dr-manifest", "format')
        return keys
    manifest = Manifest(
        backup_id=bid, kind=fake.kind, started_at=started,
        finished_at=(fake.started + dt.timedelta(minutes=5)).isoformat(), tool_version="test",
        prefect_version="3.9.1", alembic_revision="abc", postgres_version="15",
        pg_dump_version="15", database="test", row_counts={}, artifacts=tuple(artifacts),
        block_key={}, labels=dict(fake.labels))
    put(layout.artifact(bid, lay.MANIFEST), manifest.to_json())
    if fake.verified is not None:
        for i in range(verifications):
            stamp = (fake.started + dt.timedelta(hours=1, minutes=i)).strftime(
                "%Y%m%dT%H%M%SZ") + f"-{i:06x}"
            record = {"format": "prefect-dr-verification", "format_version": 1,
                      "backup_id": bid, "result": "passed" if fake.verified else "failed"}
            put(layout.verification(bid, stamp), json.dumps(record).encode())
    return keys
