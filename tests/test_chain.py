"""Chains of increments (issue 26) without a stack: the manifest's format 3 and retention's
chain rules (I9)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from prefect_dr import manifest as mf
from prefect_dr import retention
from prefect_dr.errors import VerificationError
from prefect_dr.retention import Candidate, Policy

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


def _manifest(**extra: object) -> mf.Manifest:
    base = mf.Manifest(
        backup_id="20261206T020000Z-aaaaaa", kind="full", started_at="2026-12-06T02:00:00+00:00",
        finished_at="2026-12-06T02:01:00+00:00", tool_version="0.1.0", prefect_version=None,
        alembic_revision="abc", postgres_version="15", pg_dump_version="15",
        database="db:5432/prefect", row_counts={}, artifacts=(), block_key={})
    return dataclasses.replace(base, **extra)


LINK = {"parent": "20261206T020000Z-aaaaaa", "base": "20261206T020000Z-aaaaaa", "depth": 1,
        "since": "2026-12-06T01:55:00+00:00", "overlap_s": 300, "column": "updated",
        "floors": {}}


def test_an_increment_is_format_3_and_round_trips_and_older_bytes_stay() -> None:
    full = _manifest()
    assert "watermark" not in full.to_dict() and "increment" not in full.to_dict()
    assert mf.parse(full.to_json()) == full  # a manifest without the fields: same bytes
    inc = _manifest(backup_id="20261206T030000Z-bbbbbb", kind="incremental", increment=LINK,
                    format_version=mf.INCREMENT_FORMAT_VERSION,
                    watermark={"at": "2026-12-06T03:00:00+00:00", "database": "1/2"})
    back = mf.parse(inc.to_json())
    assert back == inc and back.parent == LINK["parent"] and back.format_version == 3
    with pytest.raises(VerificationError, match="not resolved"):
        back.segments("log")  # an increment is never read without its chain


@pytest.mark.parametrize("change", [
    {"format_version": 3},                                   # format 3 without a link
    {"kind": "incremental"},                                 # an increment without one
    {"kind": "incremental", "increment": LINK},              # a link in format 2
    {"kind": "incremental", "format_version": 3, "increment": {**LINK, "depth": 0}},
    {"kind": "incremental", "format_version": 3, "increment": {**LINK, "parent": ""}},
    {"watermark": "2026-12-06"},
])
def test_malformed_links_are_refused(change: dict[str, object]) -> None:
    data = json.loads(_manifest().to_json())
    data.update(change)
    with pytest.raises(mf.ManifestError):
        mf.parse(json.dumps(data).encode())


def _cand(bid: str, hours_ago: float, kind: str = "full", **labels: str) -> Candidate:
    started = NOW - dt.timedelta(hours=hours_ago)
    return Candidate(id=bid, kind=kind, status="complete", started_at=started,
                     labels=dict(labels), last_activity=started)


def test_a_chain_goes_with_its_base_and_a_labelled_link_keeps_its_ancestors() -> None:
    fulls = [_cand("F1", 48), _cand("F2", 24)]
    incs = [_cand("I1", 47, "incremental", hold="1"), _cand("I2", 46, "incremental"),
            _cand("J1", 23, "incremental"), _cand("X1", 10, "incremental")]
    ancestors = {"I1": ["F1"], "I2": ["I1", "F1"], "J1": ["F2"], "X1": ["gone"]}
    bases = {"I1": "F1", "I2": "F1", "J1": "F2"}  # X1: its chain is broken
    policy = Policy(keep_last=1, keep_labels=("hold",))
    plain = retention.plan(fulls, policy, NOW)
    chained = retention.with_chains(plain, incs, ancestors, bases, {})
    keep = {d.id: d.reasons for d in chained.keep}
    assert set(keep) == {"F2", "J1", "I1"}  # I1: its label (kept rules apply to increments)
    assert {d.id for d in chained.remove} == {"F1", "I2", "X1"}
    # ... but keeping I1 must keep F1: the prune asks chain_needs first
    needed = retention.chain_needs(ancestors, {}, ["I1"])
    assert needed == {"F1": "chain of I1"}
    plan = retention.with_chains(retention.plan(fulls, policy, NOW, needed), incs, ancestors,
                                 bases, needed)
    kept = {d.id for d in plan.keep}
    assert {"F1", "I1", "I2", "F2", "J1"} <= kept  # F1 kept, so its whole chain is
    assert [d.id for d in plan.remove] == ["X1"]
    assert any("chain is broken" in r for d in plan.remove for r in d.reasons)
    for d in plan.keep:  # no kept increment misses a link
        assert not set(ancestors.get(d.id, [])) & {r.id for r in plan.remove}


def test_a_pinned_increment_keeps_its_chain() -> None:
    ancestors = {"I2": ["I1", "F1"], "I1": ["F1"]}
    needed = retention.chain_needs(ancestors, {"I2": "the backfill of restore --tiered"}, [])
    assert needed == {"I2": "the backfill of restore --tiered", "I1": "chain of I2",
                      "F1": "chain of I2"}


def test_increments_have_no_policy_of_their_own() -> None:
    with pytest.raises(retention.PolicyError, match="with their chain's base"):
        retention.policies_for(None, "incremental", keep_last=1)  # type: ignore[arg-type]
