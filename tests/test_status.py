from __future__ import annotations

import datetime as dt

import pytest

from prefect_dr import status
from prefect_dr.catalog import COMPLETE, FAILED, BackupEntry

NOW = dt.datetime(2026, 11, 26, 13, 30, tzinfo=dt.UTC)


def _entry(bid: str, started: dt.datetime, state: str = COMPLETE,
           verification: dict | None = None, kind: str = "full") -> BackupEntry:
    return BackupEntry(bid, state, kind=kind, started_at=started.isoformat(),
                       verification=verification)


def test_fresh_when_the_last_due_run_happened() -> None:
    entries = [_entry("a", dt.datetime(2026, 11, 26, 12, 0, 5, tzinfo=dt.UTC))]
    report = status.evaluate(entries, backup_cron="0 */6 * * *", verify_cron=None,
                             grace=dt.timedelta(hours=1), now=NOW)
    assert report.ok, report.to_dict()


def test_grace_lets_a_running_backup_finish() -> None:
    # 12:00's run may still be going at 12:30 with a 1h grace: 06:00's backup is enough
    entries = [_entry("a", dt.datetime(2026, 11, 26, 6, 0, 5, tzinfo=dt.UTC))]
    at = dt.datetime(2026, 11, 26, 12, 30, tzinfo=dt.UTC)
    assert status.evaluate(entries, backup_cron="0 */6 * * *", verify_cron=None,
                           grace=dt.timedelta(hours=1), now=at).ok
    late = status.evaluate(entries, backup_cron="0 */6 * * *", verify_cron=None,
                           grace=dt.timedelta(hours=1), now=NOW)
    assert not late.ok and "12:00:00" in late.items[0].detail


def test_failed_backups_do_not_count_and_none_is_stale() -> None:
    entries = [_entry("a", dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC), FAILED)]
    report = status.evaluate(entries, backup_cron="0 */6 * * *", verify_cron=None,
                             grace=dt.timedelta(hours=1), now=NOW)
    assert not report.ok and "no complete full backup" in report.items[0].detail
    assert not status.evaluate([], backup_cron=None, verify_cron=None,
                               grace=dt.timedelta(0), now=NOW).ok


def test_verification_stale_or_failed() -> None:
    good = {"result": "passed", "finished_at": "2026-11-26T04:40:00+00:00"}
    bad = {"result": "failed", "failed_check": "integrity (dump)",
           "finished_at": "2026-11-26T04:40:00+00:00"}
    base = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    ok = status.evaluate([_entry("a", base, verification=good)], backup_cron=None,
                         verify_cron="30 4 * * *", grace=dt.timedelta(hours=1), now=NOW)
    assert ok.ok
    failed = status.evaluate([_entry("a", base, verification=bad)], backup_cron=None,
                             verify_cron="30 4 * * *", grace=dt.timedelta(hours=1), now=NOW)
    assert not failed.ok and "integrity (dump)" in failed.items[1].detail
    next_day = NOW + dt.timedelta(days=1)
    stale = status.evaluate([_entry("a", next_day, verification=good)], backup_cron=None,
                            verify_cron="30 4 * * *", grace=dt.timedelta(hours=1), now=next_day)
    assert not stale.ok and "is missing" in stale.items[1].detail


@pytest.mark.parametrize("expr", ["every day", "0 2 * * * *", "0 2 31 2 *"])
def test_bad_cron(expr: str) -> None:
    """status judges by the same definition of a schedule as the settings and k8s render."""
    with pytest.raises(ValueError, match="invalid cron schedule"):
        status.validate_cron(expr)


def test_config_only_backups_never_stand_in_for_full_ones() -> None:
    """Hourly config-only backups and their verifications are fresh, the full ones stopped a
    week ago: the default (full) probe is stale on both counts; --kind config-only is fresh."""
    week_ago = NOW - dt.timedelta(days=7)
    fresh_check = {"result": "passed", "finished_at": (NOW - dt.timedelta(minutes=20)).isoformat()}
    old_check = {"result": "passed", "finished_at": week_ago.isoformat()}
    entries = [_entry("full-old", week_ago, verification=old_check)] + [
        _entry(f"cfg-{h}", NOW - dt.timedelta(hours=h, minutes=-5), kind="config-only",
               verification=fresh_check) for h in range(1, 4)]
    kwargs = {"backup_cron": "0 2 * * *", "verify_cron": "30 4 * * *",
              "grace": dt.timedelta(hours=1), "now": NOW}
    full = status.evaluate(entries, **kwargs)
    assert [(i.what, i.ok) for i in full.items] == [("full backup", False),
                                                     ("full verification", False)]
    assert "full-old" in full.items[0].detail and "full-old" in full.items[1].detail
    config = status.evaluate(entries, kind="config-only", **kwargs)
    assert config.ok, config.to_dict()
    only_config = [e for e in entries if e.kind == "config-only"]
    none_full = status.evaluate(only_config, **kwargs)
    assert not none_full.ok
    assert none_full.items[0].detail.startswith("no complete full backup")
    assert none_full.items[1].detail == "no verification of a full backup recorded"


def test_without_a_schedule_the_newest_backup_must_be_younger_than_the_maximum_age() -> None:
    """Issue 23: without a schedule, a backup of any age was green, silently."""
    day_old = [_entry("a", NOW - dt.timedelta(hours=25))]
    fresh = status.evaluate(day_old, backup_cron=None, verify_cron=None,
                            grace=dt.timedelta(hours=1), now=NOW)
    assert fresh.ok and fresh.items[0].rule.startswith("no backup schedule: at most 26h old")
    old = [_entry("a", NOW - dt.timedelta(hours=27))]
    stale = status.evaluate(old, backup_cron=None, verify_cron=None,
                            grace=dt.timedelta(hours=1), now=NOW)
    assert not stale.ok and "older than 26h" in stale.items[0].detail
    weekly = status.evaluate(old, backup_cron=None, verify_cron=None,
                             grace=dt.timedelta(hours=1), now=NOW,
                             max_age=dt.timedelta(days=8))
    assert weekly.ok and weekly.items[0].rule == "no backup schedule: at most 8d old"
    scheduled = status.evaluate(old, backup_cron="0 */6 * * *", verify_cron=None,
                                grace=dt.timedelta(hours=1), now=NOW)
    assert scheduled.items[0].rule == "schedule '0 */6 * * *', grace 1h"
    assert "rule" in scheduled.to_dict()["items"][0]
