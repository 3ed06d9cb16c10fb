"""prune: deletion order, dry run, listing errors, Object Lock, outages; memory and real S3."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from backup_fakes import NOW, Fake, sixty, write_backup
from conftest import run_cli
from slowproxy import SlowProxy

from prefect_dr import catalog, prune
from prefect_dr import layout as lay
from prefect_dr.errors import StorageError
from prefect_dr.layout import Layout
from prefect_dr.retention import Policy, PolicyError, parse_policy
from prefect_dr.retention import plan as make_plan
from prefect_dr.storage.base import IncompleteUpload, ObjectRetention, Storage
from prefect_dr.storage.memory import MemoryStorage
from prefect_dr.storage.s3 import S3Storage

UTC = dt.UTC
DAY = dt.timedelta(days=1)
LAYOUT = Layout("repo")


class Recording(MemoryStorage):
    """Memory storage that records deletes and can fail after a number of them."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []
        self.fail_after: int | None = None
        self.fail_list = False

    def delete(self, key: str) -> None:
        if self.fail_after is not None and len(self.deleted) >= self.fail_after:
            raise StorageError(f"delete {key}: cannot reach the S3 endpoint")
        super().delete(key)
        self.deleted.append(key)

    def list(self, prefix: str) -> Iterator:
        for n, info in enumerate(super().list(prefix)):
            if self.fail_list and n == 3:
                raise StorageError("list: S3 error InternalError")
            yield info


def _repo(fakes: list[Fake], storage: Storage | None = None) -> Storage:
    storage = storage if storage is not None else Recording()
    for fake in fakes:
        write_backup(storage, LAYOUT, fake)
    return storage


def _keys(storage: Storage) -> set[str]:
    return {i.key for i in storage.list(LAYOUT.root)}


def _assert_no_complete_backup_is_broken(storage: Storage) -> None:
    """What `list` reports complete still has every artifact its manifest names, whole."""
    for entry in catalog.list_backups(storage, LAYOUT):
        if entry.status == "complete":
            assert entry.manifest is not None
            for artifact in entry.manifest.artifacts:
                info = storage.stat(artifact.key)
                assert info is not None, f"{entry.backup_id} is complete but lost {artifact.key}"
                assert info.size == artifact.size


def _daily(n: int, *, end: dt.datetime = NOW - DAY, **kw: object) -> list[Fake]:
    return [Fake(end - k * DAY, suffix=f"{k:06x}", **kw) for k in range(n - 1, -1, -1)]


POLICY = {"full": parse_policy("keep-daily=3")}


def test_deletes_exactly_the_plan_manifest_first_status_last() -> None:
    fakes = _daily(6)
    fakes[0].verified = True
    storage = _repo(fakes)
    before = _keys(storage)
    result = prune.run(storage, LAYOUT, POLICY, now=NOW)
    # the oldest is the newest verified one: kept; the two after it go
    removed = [r.decision.id for r in result.removed]
    assert removed == [fakes[1].id, fakes[2].id]
    assert result.plans["full"].keep[-1].reasons == ("newest verified",)
    expected = {k for k in before if any(k.startswith(LAYOUT.backup_dir(i)) for i in removed)}
    assert set(storage.deleted) == expected and _keys(storage) == before - expected
    for backup_id in removed:
        mine = [k for k in storage.deleted if k.startswith(LAYOUT.backup_dir(backup_id))]
        assert mine[0].endswith("/" + lay.MANIFEST)
        assert mine[-1].endswith("/" + lay.STATUS)
        assert mine[1:3] == [LAYOUT.artifact(backup_id, lay.CONFIG_EXPORT),
                             LAYOUT.artifact(backup_id, lay.DUMP)]
    assert result.finished and result.counts == {
        "kept": 4, "removed": 2, "skipped_locked": 0, "uploads_aborted": 0,
        "objects_deleted": 8, "bytes_freed": sum(r.size for r in result.removed)}
    assert {e.backup_id for e in catalog.list_backups(storage, LAYOUT)} \
        == {f.id for f in fakes} - set(removed)


def test_verification_records_go_after_artifacts_before_status() -> None:
    fakes = _daily(3)
    fakes[0].verified = False
    storage = _repo(fakes)
    write_backup(storage, LAYOUT, fakes[0], verifications=3)
    prune.run(storage, LAYOUT, {"full": Policy(keep_last=1)}, now=NOW)
    mine = [k.rsplit("/", 2)[-2:] for k in storage.deleted
            if k.startswith(LAYOUT.backup_dir(fakes[0].id))]
    names = ["/".join(p) if p[0] == "verifications" else p[1] for p in mine]
    assert names[:3] == [lay.MANIFEST, lay.CONFIG_EXPORT, lay.DUMP]
    assert [n.split("/")[0] for n in names[3:6]] == ["verifications"] * 3
    assert names[6:] == [lay.STATUS]


def test_dry_run_deletes_nothing_and_reports_the_same() -> None:
    storage = _repo(_daily(6))
    storage.uploads["u"] = IncompleteUpload(LAYOUT.artifact(_daily(6)[0].id, lay.DUMP), "u",
                                            NOW - 3 * DAY)
    before = _keys(storage)
    dry = prune.run(storage, LAYOUT, POLICY, now=NOW, dry_run=True)
    assert storage.deleted == [] and _keys(storage) == before and "u" in storage.uploads
    real = prune.run(storage, LAYOUT, POLICY, now=NOW)
    assert dry.counts == real.counts and dry.rows() == real.rows()
    assert dry.to_dict()["dry_run"] is True and real.counts["uploads_aborted"] == 1
    assert "u" not in storage.uploads


def test_listing_error_deletes_nothing() -> None:
    storage = _repo(_daily(6))
    storage.fail_list = True
    with pytest.raises(StorageError, match="InternalError"):
        prune.run(storage, LAYOUT, POLICY, now=NOW)
    assert storage.deleted == []


def test_upload_listing_error_deletes_nothing() -> None:
    storage = _repo(_daily(6))

    def broken(prefix: str) -> list:
        raise StorageError("list uploads: S3 error SlowDown")
    storage.list_incomplete_uploads = broken
    with pytest.raises(StorageError, match="SlowDown"):
        prune.run(storage, LAYOUT, POLICY, now=NOW)
    assert storage.deleted == []


def test_object_lock_skips_the_whole_backup_and_reports_it() -> None:
    fakes = _daily(6)
    storage = _repo(fakes)
    until = dt.datetime.now(UTC) + dt.timedelta(days=30)
    storage.retentions[LAYOUT.artifact(fakes[1].id, lay.DUMP)] = ObjectRetention(
        until, "COMPLIANCE")
    storage.retentions[LAYOUT.artifact(fakes[0].id, lay.STATUS)] = ObjectRetention(
        legal_hold=True)
    expired = dt.datetime.now(UTC) - DAY
    storage.retentions[LAYOUT.artifact(fakes[2].id, lay.MANIFEST)] = ObjectRetention(
        expired, "GOVERNANCE")
    result = prune.run(storage, LAYOUT, POLICY, now=dt.datetime.now(UTC))
    assert [x.decision.id for x in result.locked] == [fakes[0].id, fakes[1].id]
    assert result.locked[1].key == LAYOUT.artifact(fakes[1].id, lay.DUMP)
    assert [r.decision.id for r in result.removed] == [fakes[2].id]  # the lock expired
    for fake in fakes[:2]:  # left whole, still complete
        assert not any(k.startswith(LAYOUT.backup_dir(fake.id)) for k in storage.deleted)
    listed = {e.backup_id: e.status for e in catalog.list_backups(storage, LAYOUT)}
    assert listed[fakes[0].id] == listed[fakes[1].id] == "complete"
    rows = {r["backup_id"]: r for r in result.rows()}
    assert rows[fakes[1].id]["action"] == "locked"
    assert "COMPLIANCE until" in rows[fakes[1].id]["reasons"][-1]
    assert result.counts["skipped_locked"] == 2 and result.finished


def test_newest_verified_survives_a_policy_that_keeps_only_the_newest() -> None:
    fakes = _daily(8, end=NOW - 10 * DAY)
    fakes[2].verified = True
    fakes[5].verified = True
    fakes[6].verified = False
    storage = _repo(fakes)
    result = prune.run(storage, LAYOUT, {"full": parse_policy("keep-within=1s")}, now=NOW)
    left = {e.backup_id for e in catalog.list_backups(storage, LAYOUT)}
    assert left == {fakes[7].id, fakes[5].id}
    assert {d.id: d.reasons for d in result.plans["full"].keep} == {
        fakes[7].id: ("within 1s", "newest complete"), fakes[5].id: ("newest verified",)}
    # min-verified=0 drops the safety net (the newest complete backup still stays)
    prune.run(storage, LAYOUT, {"full": parse_policy("keep-within=1s,min-verified=0")},
              now=NOW)
    assert {e.backup_id for e in catalog.list_backups(storage, LAYOUT)} == {fakes[7].id}


def test_failed_incomplete_orphans_and_grace() -> None:
    fakes = _daily(3)
    running = Fake(NOW - dt.timedelta(hours=2), "incomplete", suffix="aaaaaa")
    stale = Fake(NOW - 3 * DAY, "incomplete", suffix="bbbbbb")
    failed = Fake(NOW - 2 * DAY, "failed", suffix="cccccc")
    corrupt = Fake(NOW - 30 * DAY, "corrupt", suffix="dddddd")
    storage = _repo([*fakes, running, stale, failed, corrupt])
    # a leftover with no status record (kind unknown): a verification record written late
    orphan = Fake(NOW - 40 * DAY, suffix="eeeeee")
    storage.put_bytes(LAYOUT.verification(orphan.id, "20260101T000000Z-000000"), b"{}")
    for name, backup, age in (("young", running, 1), ("old", stale, 49), ("fresh", stale, 1),
                              ("loose", None, 49)):
        key = LAYOUT.artifact(backup.id, lay.DUMP) if backup else LAYOUT.backups_root + "junk"
        storage.uploads[name] = IncompleteUpload(key, name, NOW - dt.timedelta(hours=age))
    result = prune.run(storage, LAYOUT, {"full": Policy(keep_last=10)}, now=NOW)
    assert {r.decision.id for r in result.removed} == {stale.id, failed.id, orphan.id}
    assert sorted(u.upload_id for u in result.uploads) == ["loose", "old"]
    assert set(storage.uploads) == {"young", "fresh"}
    left = {e.backup_id: e.status for e in catalog.list_backups(storage, LAYOUT)}
    assert left[running.id] == "incomplete" and left[corrupt.id] == "corrupt"


def test_only_the_given_kinds_are_touched() -> None:
    fulls = _daily(4)
    configs = _daily(4, kind="config-only", end=NOW - DAY - dt.timedelta(hours=1))
    storage = _repo(fulls + configs)
    result = prune.run(storage, LAYOUT, {"full": Policy(keep_last=1)}, now=NOW)
    assert {r.decision.id for r in result.removed} == {f.id for f in fulls[:3]}
    both = prune.run(storage, LAYOUT, {"full": Policy(keep_last=1),
                                       "config-only": Policy(keep_last=2)}, now=NOW)
    assert {r.decision.id for r in both.removed} == {f.id for f in configs[:2]}
    with pytest.raises(PolicyError, match="unknown backup kind"):
        prune.run(storage, LAYOUT, {"fulll": Policy(keep_last=1)}, now=NOW)
    with pytest.raises(PolicyError, match="no retention policy"):
        prune.run(storage, LAYOUT, {}, now=NOW)


def test_a_failure_at_any_delete_never_leaves_a_broken_complete_backup() -> None:
    # the newest 25 of the sixty: several a day, failed, incomplete, verification records
    fakes = [f for f in sixty() if f.status != "corrupt"][-25:]
    policy = {"full": parse_policy("keep-daily=3,keep-weekly=1")}
    total = len(prune.run(_repo(fakes), LAYOUT, policy, now=NOW, dry_run=True).removed)
    deletes = prune.run(_repo(fakes), LAYOUT, policy, now=NOW).counts["objects_deleted"]
    assert total > 15 and deletes > 60
    expected = _keys(_pruned(fakes, policy))
    for fail_after in range(deletes):
        storage = _repo(fakes)
        storage.fail_after = fail_after
        with pytest.raises(prune.PruneError, match="prune stopped part-way") as info:
            prune.run(storage, LAYOUT, policy, now=NOW)
        assert info.value.result.counts["objects_deleted"] == fail_after
        assert not info.value.result.finished
        _assert_no_complete_backup_is_broken(storage)
        # and the next prune finishes the job
        storage.fail_after = None
        prune.run(storage, LAYOUT, policy, now=NOW)
        assert _keys(storage) == expected


def _pruned(fakes: list[Fake], policy: dict[str, Policy]) -> Storage:
    storage = _repo(fakes)
    prune.run(storage, LAYOUT, policy, now=NOW)
    return storage


def test_result_json_is_serialisable() -> None:
    storage = _repo(_daily(5))
    data = prune.run(storage, LAYOUT, POLICY, now=NOW).to_dict()
    text = json.dumps(data)
    assert data["policies"] == {"full": "keep-daily=3,min-verified=1,grace=1d"}
    assert {r["action"] for r in data["backups"]} == {"keep", "remove"}
    assert "reasons" in text


# -- against the stack's S3 -----------------------------------------------------------------

def _s3(env: dict[str, str], endpoint: str | None = None, bucket: str | None = None,
        **kw: object) -> S3Storage:
    os.environ["AWS_ACCESS_KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = env["AWS_SECRET_ACCESS_KEY"]
    return S3Storage(bucket or env["PREFECT_DR_S3_BUCKET"],
                     endpoint_url=endpoint or env["PREFECT_DR_S3_ENDPOINT_URL"],
                     region=env["PREFECT_DR_S3_REGION"], **kw)


@pytest.fixture()
def s3_layout(stack_env: dict[str, str]) -> Iterator[tuple[S3Storage, Layout]]:
    storage = _s3(stack_env)
    layout = Layout(f"prune-{uuid.uuid4().hex[:10]}")
    yield storage, layout
    for info in list(storage.list(layout.root)):
        storage.delete(info.key)
    for up in storage.list_incomplete_uploads(layout.root):
        storage.abort_incomplete_upload(up)


def _s3_keys(storage: Storage, layout: Layout) -> set[str]:
    return {i.key for i in storage.list(layout.root)}


@pytest.mark.integration
def test_s3_deletes_exactly_the_planned_objects_and_dry_run_nothing(
        s3_layout: tuple[S3Storage, Layout]) -> None:
    storage, layout = s3_layout
    fakes = [*_daily(5), Fake(NOW - 4 * DAY, "failed", suffix="fa11ed"),
             Fake(NOW - dt.timedelta(hours=1), "incomplete", suffix="a11ce0")]
    fakes[1].verified = True
    for fake in fakes:
        write_backup(storage, layout, fake)
    # a multipart upload left open: real S3 stamps it now, so "now" is moved past the grace
    stale = storage.client.create_multipart_upload(
        Bucket=storage.bucket, Key=layout.artifact(fakes[2].id, lay.DUMP))["UploadId"]
    now = max(dt.datetime.now(UTC), NOW) + 2 * DAY
    policy = {"full": parse_policy("keep-last=2")}
    before = _s3_keys(storage, layout)

    dry = prune.run(storage, layout, policy, now=now, dry_run=True)
    assert _s3_keys(storage, layout) == before
    assert [u.upload_id for u in storage.list_incomplete_uploads(layout.root)] == [stale]

    entries = catalog.list_backups(storage, layout)
    from prefect_dr.retention import Candidate
    planned = make_plan([Candidate.from_entry(e) for e in entries], policy["full"], now)
    planned_ids = {d.id for d in planned.remove}
    expected = {k for k in before if layout.parse_backup_key(k)[0] in planned_ids}
    result = prune.run(storage, layout, policy, now=now)
    assert {r.decision.id for r in result.removed} == planned_ids \
        == {fakes[0].id, fakes[2].id, fakes[5].id, fakes[6].id}
    assert _s3_keys(storage, layout) == before - expected
    assert storage.list_incomplete_uploads(layout.root) == []
    assert dry.counts == result.counts and result.counts["uploads_aborted"] == 1
    assert {e.backup_id for e in catalog.list_backups(storage, layout)} \
        == {fakes[1].id, fakes[3].id, fakes[4].id}


class _CutAfter(S3Storage):
    """S3 through a proxy that is shut down after ``cut_after`` deletes (an outage)."""

    def __init__(self, proxy: SlowProxy, cut_after: int, env: dict[str, str]) -> None:
        super().__init__(env["PREFECT_DR_S3_BUCKET"], endpoint_url=proxy.url,
                         region=env["PREFECT_DR_S3_REGION"], retry_deadline_s=1.0)
        self.proxy, self.cut_after, self.deletes = proxy, cut_after, 0

    def delete(self, key: str) -> None:
        super().delete(key)
        self.deletes += 1
        if self.deletes == self.cut_after:
            self.proxy.close()


@pytest.mark.integration
@pytest.mark.parametrize("cut_after", [1, 6])
def test_s3_outage_mid_prune_leaves_no_broken_complete_backup(
        s3_layout: tuple[S3Storage, Layout], stack_env: dict[str, str], cut_after: int) -> None:
    direct, layout = s3_layout
    fakes = _daily(5)
    for fake in fakes:
        write_backup(direct, layout, fake, size=4096)
    target = urlsplit(stack_env["PREFECT_DR_S3_ENDPOINT_URL"])
    proxy = SlowProxy((target.hostname, target.port), rate=50_000_000)
    storage = _CutAfter(proxy, cut_after, stack_env)
    later = max(dt.datetime.now(UTC), NOW) + 2 * DAY  # the objects were written just now
    try:
        with pytest.raises(prune.PruneError, match="prune stopped part-way") as info:
            prune.run(storage, layout, {"full": Policy(keep_last=1)}, now=later)
    finally:
        proxy.close()
    done = info.value.result
    assert cut_after <= sum(r.deleted for r in done.removed) <= cut_after + 1
    _assert_no_complete_backup_is_broken_in(direct, layout)
    listed = {e.backup_id: e.status for e in catalog.list_backups(direct, layout)}
    assert listed.get(fakes[0].id) != "complete"  # its manifest went first
    assert [listed[f.id] for f in fakes[2:]] == ["complete"] * 3
    # once S3 is back, the next prune finishes the job
    prune.run(direct, layout, {"full": Policy(keep_last=1)}, now=later)
    assert {e.backup_id for e in catalog.list_backups(direct, layout)} == {fakes[-1].id}


def _assert_no_complete_backup_is_broken_in(storage: Storage, layout: Layout) -> None:
    for entry in catalog.list_backups(storage, layout):
        if entry.status == "complete":
            assert entry.manifest is not None
            for artifact in entry.manifest.artifacts:
                info = storage.stat(artifact.key)
                assert info is not None and info.size == artifact.size, entry.backup_id


@pytest.mark.integration
def test_s3_object_lock_skips_locked_backups(stack_env: dict[str, str]) -> None:
    bucket = f"prefect-dr-lock-{uuid.uuid4().hex[:8]}"
    client = _s3(stack_env).client
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    storage = _s3(stack_env, bucket=bucket)
    layout = Layout("lock")
    try:
        fakes = _daily(4)
        for fake in fakes:
            write_backup(storage, layout, fake)
        until = dt.datetime.now(UTC) + dt.timedelta(minutes=5)
        client.put_object_retention(
            Bucket=bucket, Key=layout.artifact(fakes[1].id, lay.DUMP),
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
        lock = storage.retention(layout.artifact(fakes[1].id, lay.DUMP))
        assert lock is not None and lock.mode == "GOVERNANCE"
        assert abs((lock.until - until).total_seconds()) < 1
        assert storage.retention(layout.artifact(fakes[1].id, lay.STATUS)) is None
        assert storage.retention(layout.artifact(fakes[1].id, "missing")) is None
        result = prune.run(storage, layout, {"full": Policy(keep_last=1)},
                           now=dt.datetime.now(UTC))
        assert [x.decision.id for x in result.locked] == [fakes[1].id]
        assert {r.decision.id for r in result.removed} == {fakes[0].id, fakes[2].id}
        listed = {e.backup_id: e.status for e in catalog.list_backups(storage, layout)}
        assert listed == {fakes[1].id: "complete", fakes[3].id: "complete"}
    finally:
        versions = client.list_object_versions(Bucket=bucket)
        for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
            client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                                 BypassGovernanceRetention=True)
        client.delete_bucket(Bucket=bucket)


@pytest.mark.integration
def test_real_backups_are_pruned_whole(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, PREFECT_DR_S3_PREFIX=f"prune-real-{uuid.uuid4().hex[:8]}")
    ids = []
    for _ in range(3):
        proc = run_cli(["backup", "--json", "--kind", "config-only"], env)
        assert proc.returncode == 0, proc.stderr
        ids.append(json.loads(proc.stdout)["backup_id"])
    storage = _s3(env)
    layout = Layout(env["PREFECT_DR_S3_PREFIX"])
    try:
        result = prune.run(storage, layout, {"config-only": Policy(keep_last=1)})
        assert [r.decision.id for r in result.removed] == ids[:2]
        assert {k.split("/")[3] for k in _s3_keys(storage, layout)} == {ids[2]}
        proc = run_cli(["list", "--json"], env)
        assert [b["backup_id"] for b in json.loads(proc.stdout)["backups"]] == [ids[2]]
    finally:
        for info in list(storage.list(layout.root)):
            storage.delete(info.key)


def test_with_a_verify_key_only_signed_verifications_count() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from prefect_dr import signing

    key = Ed25519PrivateKey.generate()
    fakes = _daily(6, end=NOW - 10 * DAY)
    fakes[3].verified = True  # an unsigned record: counts only without a verify key
    storage = _repo(fakes)
    signed = signing.sign_record({"format": "prefect-dr-verification", "format_version": 1,
                                  "backup_id": fakes[1].id, "result": "passed"}, key)
    storage.put_bytes(LAYOUT.verification(fakes[1].id, "20990101T000000Z-000000"),
                      json.dumps(signed).encode())
    # a signed record copied from another backup is not this backup's verification
    storage.put_bytes(LAYOUT.verification(fakes[4].id, "20990101T000000Z-000000"),
                      json.dumps(signed).encode())
    policy = {"full": parse_policy("keep-last=1")}

    def protected(result: prune.PruneResult) -> list[str]:
        return [d.id for d in result.plans["full"].keep if "newest verified" in d.reasons]

    assert protected(prune.run(storage, LAYOUT, policy, now=NOW, dry_run=True)) \
        == [fakes[3].id]
    keyed = prune.run(storage, LAYOUT, policy, now=NOW, verify_key=key.public_key())
    assert protected(keyed) == [fakes[1].id]
    assert {e.backup_id for e in catalog.list_backups(storage, LAYOUT)} \
        == {fakes[1].id, fakes[5].id}
