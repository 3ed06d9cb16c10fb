from __future__ import annotations

import pytest

from prefect_dr.layout import DUMP, MANIFEST, Layout

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
