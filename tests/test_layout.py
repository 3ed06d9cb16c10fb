from __future__ import annotations

import datetime as dt

import pytest

from prefect_dr.layout import BACKUP_ID_RE, DUMP, MANIFEST, Layout, new_id

BID = "20261126T153000Z-a1b2c3"


def test_keys_are_versioned_under_the_prefix() -> None:
    lay = Layout("team/prefect")
    assert lay.artifact(BID, MANIFEST) == f"team/prefect/v1/backups/{BID}/manifest.json"
    assert lay.artifact(BID, DUMP).startswith("team/prefect/v1/backups/")
    assert Layout("").root == "v1/"
    assert lay.lock("backup").startswith("team/prefect/v1/locks/")


def test_parse_backup_key_round_trips() -> None:
    lay = Layout("p")
    assert lay.parse_backup_key(lay.artifact(BID, DUMP)) == (BID, DUMP)
    assert lay.parse_backup_key("p/v1/backups/not-an-id/x") is None
    assert lay.parse_backup_key("other/v1/backups/" + BID + "/x") is None


def test_malformed_backup_id_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed backup id"):
        Layout("p").backup_dir("../../etc")


def test_ids_made_within_one_second_sort_in_the_order_they_were_made() -> None:
    """"latest", an increment's parent and copy's order follow sorted ids: two backups in the
    same second must not sort at random (a copy test caught it: the random suffix did)."""
    start = dt.datetime(2026, 12, 6, 11, 13, 34, tzinfo=dt.UTC)
    for _ in range(200):
        made = [new_id(start + dt.timedelta(milliseconds=ms)) for ms in (0, 1, 250, 500, 999)]
        assert made == sorted(made)
        assert all(BACKUP_ID_RE.match(i) for i in made)
        assert {i[:16] for i in made} == {"20261206T111334Z"}
    assert len({new_id(start) for _ in range(50)}) > 40  # still random at the same instant
