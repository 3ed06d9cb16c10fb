"""Decisions the CLI used to make itself, now in the use cases that own them (issue 24):
whether a restore resumes a backfill, which database a kept one belongs to, whether a backup
whose copy failed is partial."""

from __future__ import annotations

from prefect_dr import copy, errors, restore
from prefect_dr.backfill import TableState

BID = "20260101T020000Z-abcdef"


def test_a_restore_resumes_only_its_own_unfinished_backfill() -> None:
    pending = [TableState("log", BID, "PENDING", 0)]
    assert restore.resumes(pending, BID)
    assert not restore.resumes(pending, BID, dry_run=True)
    assert not restore.resumes(pending, "20260102T020000Z-abcdef")
    assert not restore.resumes([], BID)


def test_a_kept_database_names_the_one_it_was_kept_beside() -> None:
    kept = restore.Kept("prefect_pre_restore_x_pre_restore_20260101020000", "pre_restore",
                        "20260101020000", 1, "")
    assert kept.database == "prefect_pre_restore_x"
    assert restore.Kept("prefect_rolled_back_20260101020000", "rolled_back", "20260101020000",
                        1, "").database == "prefect"


def test_a_backup_whose_copy_was_refused_is_partial() -> None:
    good = copy.CopyResult("a", "s3://b", [copy.CopiedBackup(BID, copy.COPIED)])
    bad = copy.CopyResult("a", "gs://c", [copy.CopiedBackup(BID, copy.REFUSED,
                                                             detail="store failed")])
    assert copy.after_backup_failed(BID, [good]) is None
    assert copy.after_backup_failed(BID, []) is None
    failure = copy.after_backup_failed(BID, [good, bad])
    assert failure is not None and failure.exit_code == errors.PARTIAL
    assert failure.message == (f"backup {BID} is complete, but its copy to gs://c failed: "
                               "store failed")
