"""The schema gate decides from the target's Prefect with the shipped revision table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from prefect_dr import rehearse
from prefect_dr import schema_gate as sg

ROOT = Path(__file__).resolve().parent.parent
#: a linear history a <- b <- c <- d <- e and the releases whose head each is
TABLE = sg.Table(
    revisions={"a": {"parents": [], "first_release": "3.0.0"},
               "b": {"parents": ["a"], "first_release": "3.1.0"},
               "c": {"parents": ["b"], "first_release": "3.1.5"},
               "d": {"parents": ["c"], "first_release": "3.4.0"},
               "e": {"parents": ["d"], "first_release": "3.9.1"}},
    releases={"3.0.0": "a", "3.1.0": "b", "3.1.5": "c", "3.2.0": "c", "3.4.0": "d",
              "3.9.1": "e"})


def judge(backup: str | None, **target: str) -> sg.Verdict:
    return sg.judge(backup, sg.Target(**target), TABLE)


def test_by_the_target_databases_revision() -> None:
    assert judge("b", revision="d").ok  # older: migrated forward on start
    assert "migrates it forward" in judge("b", revision="d").reason
    assert judge("d", revision="d").ok
    newer = judge("e", revision="d")
    assert not newer.ok and "newer than the target's Prefect" in newer.reason
    assert "--target-prefect-version" in newer.reason
    assert judge("d", revision="zzz").ok  # the target is newer than every known release


def test_by_the_target_prefect_version() -> None:
    assert judge("c", prefect_version="3.4.0", version_source="PREFECT_API_URL").ok
    refused = judge("e", prefect_version="3.4.0", version_source="--target-prefect-version")
    assert not refused.ok and "Prefect 3.4.0 at the target (--target-prefect-version)" in \
        refused.reason
    # 3.1.7 is not listed: between 3.1.5 (c) and 3.2.0 (c), so its head is c
    assert judge("c", prefect_version="3.1.7", version_source="x").ok
    assert not judge("d", prefect_version="3.1.7", version_source="x").ok
    # 3.3.1 lies between 3.2.0 (c) and 3.4.0 (d): d may or may not be there
    unsure = judge("d", prefect_version="3.3.1", version_source="x")
    assert not unsure.ok and "cannot tell" in unsure.reason
    # the version wins over the database's revision (the operator upgrades Prefect first)
    assert judge("e", prefect_version="3.9.1", version_source="x", revision="d").ok


def test_new_database_needs_a_released_revision() -> None:
    ok = judge("c")
    assert ok.ok and "Prefect 3.1.5 or newer" in ok.reason
    unknown = judge("fffffff")
    assert not unknown.ok and "belongs to no Prefect release" in unknown.reason
    assert not judge(None).ok


def test_shipped_table_is_generated_and_knows_the_heads_seen_live() -> None:
    data = json.loads((ROOT / "prefect_dr" / "data" / "prefect_revisions.json").read_text())
    assert data["generated_by"] == "scripts/gen-prefect-revisions"
    table = sg.table()
    for version, head in {"3.1.15": "5d03c01be85e", "3.4.25": "9e83011d1f2a",
                          "3.9.1": "91e2b8f3d6a4"}.items():
        assert table.releases[version] == head
    assert table.lineage("91e2b8f3d6a4") >= {"5d03c01be85e", "9e83011d1f2a"}
    # every release's head descends from every older release's head: a linear history
    ordered = sorted(table.releases, key=sg.version_key)
    for older, newer in itertools.pairwise(ordered):
        assert table.releases[older] in table.lineage(table.releases[newer]), (older, newer)
    real = sg.judge("91e2b8f3d6a4", sg.Target(revision="9e83011d1f2a"))
    assert not real.ok  # a 3.9.1 backup onto a 3.4.25 database


def test_rehearsal_steps_from_watched_revisions() -> None:
    seen = [(0.0, "b"), (1.0, "c"), (4.0, "e")]
    steps = rehearse.steps_from(seen, 0.0, 5.0, TABLE)
    assert [(s.revision, s.seconds) for s in steps] == [("c", 1.0), ("d", 1.5), ("e", 1.5)]
    assert steps[-1].first_release == "3.9.1"


def test_rehearsal_renders_slowest_first(capsys) -> None:
    from prefect_dr.cli import render

    result = rehearse.Rehearsal("20260101T000000Z-abcdef", "3.9.1", "/venv/bin/python",
                                scratch_database="prefect_dr_scratch_x", from_revision="c",
                                to_revision="e", steps=rehearse.steps_from(
                                    [(0.0, "c"), (1.0, "d"), (4.0, "e")], 0.0, 5.0, TABLE),
                                total_seconds=4.2, size_before=1 << 20, size_after=2 << 20,
                                ok=True)
    render.rehearsal(result)
    out = capsys.readouterr().out
    assert "Migrations (slowest first; times are estimates" in out and "c -> e" in out
    assert "est. seconds" in out
    assert result.to_dict()["step_times"].startswith("estimated")
    rows = [ln.split()[0] for ln in out.splitlines() if ln[:2] in ("d ", "e ")]
    assert rows == ["e", "d"]  # 3 s before 1 s
