"""The retention planner: golden plans for 60 synthetic backups over 400 days, hand-reasoned
checks of the same plans, parsing, and properties that hold for any input.

Regenerate the golden files with PREFECT_DR_UPDATE_GOLDEN=1 and review the diff by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from backup_fakes import NOW, Fake, sixty
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_dr import config
from prefect_dr.catalog import BackupEntry
from prefect_dr.retention import (
    Candidate,
    Plan,
    Policy,
    PolicyError,
    configured_policy,
    format_duration,
    parse_policy,
    plan,
    policies_for,
    resolve_policy,
)
from prefect_dr.storage.base import ObjectInfo

GOLDEN = Path(__file__).parent / "golden" / "retention"
UTC = dt.UTC

POLICIES = {
    "restic-typical": "keep-daily=7,keep-weekly=4,keep-monthly=12,keep-yearly=3",
    "keep-last-5": "keep-last=5",
    "hourly-daily": "keep-hourly=6,keep-daily=3",
    "within-30d-monthly": "keep-within=30d,keep-monthly=6",
    "yearly-10": "keep-yearly=10",
    "weekly-60": "keep-weekly=60",
    "within-1s-min-verified-2": "keep-within=1s,min-verified=2",
    "label-pin-grace-2h": "keep-label=pin=release,keep-last=1,grace=2h,min-verified=0",
}


def _plan(name: str) -> Plan:
    return plan([f.candidate() for f in sixty()], parse_policy(POLICIES[name]), NOW)


def _golden_form(result: Plan) -> dict:
    status = {d.id: d.candidate.status for d in result.decisions}
    return {
        "policy": result.policy.to_text(), "now": result.now.isoformat(),
        "keep": [{"id": d.id, "status": status[d.id], "reasons": list(d.reasons)}
                 for d in result.keep],
        "remove": [{"id": d.id, "status": status[d.id], "reasons": list(d.reasons)}
                   for d in result.remove],
    }


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_plan_matches_golden_file(name: str) -> None:
    got = _golden_form(_plan(name))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("PREFECT_DR_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=2) + "\n", encoding="utf-8")
    assert path.exists(), f"no golden file {path}: run with PREFECT_DR_UPDATE_GOLDEN=1"
    assert got == json.loads(path.read_text(encoding="utf-8"))


# -- the same plans, reasoned by hand -------------------------------------------------------

def _complete_newest_first() -> list[Fake]:
    return sorted((f for f in sixty() if f.status == "complete"), key=lambda f: f.started,
                  reverse=True)


def _kept(result: Plan) -> dict[str, tuple[str, ...]]:
    return {d.id: d.reasons for d in result.keep}


def test_every_backup_is_decided_once() -> None:
    for name in POLICIES:
        result = _plan(name)
        ids = [d.id for d in result.keep] + [d.id for d in result.remove]
        assert sorted(ids) == sorted(f.id for f in sixty())


def test_keep_daily_keeps_the_newest_of_each_of_the_last_seven_days() -> None:
    complete = _complete_newest_first()
    days: dict[str, Fake] = {}
    for f in complete:
        days.setdefault(f.started.strftime("%Y-%m-%d"), f)
    expected = {f.id: day for day, f in list(days.items())[:7]}
    # the data has gaps (11-14, 11-15 missing) and three a day on 11-24 and 11-25
    assert list(expected.values()) == ["2026-11-25", "2026-11-24", "2026-11-23", "2026-11-22",
                                       "2026-11-21", "2026-11-20", "2026-11-19"]
    kept = _kept(_plan("restic-typical"))
    daily = {i: [r for r in why if r.startswith("daily")] for i, why in kept.items()}
    assert {i: d[0].split()[1] for i, d in daily.items() if d} == expected
    # the newest of 11-25 is 17:00, not the 02:00 or 10:00 ones
    assert next(i for i, day in expected.items() if day == "2026-11-25").startswith(
        "20261125T170000Z")


def test_keep_weekly_uses_iso_weeks_across_the_year_boundary() -> None:
    kept = _kept(_plan("weekly-60"))
    weekly = {i: r for i, why in kept.items() for r in why if r.startswith("weekly")}
    # 2026-01-02 is the newest backup of ISO week 2026-W01, which began on Mon 2025-12-29:
    # 2025-12-31 and 2026-01-01 share its week and are not kept for it
    assert weekly["20260102T090600Z-99ef1e"] == "weekly 2026-W01"
    assert "20251231T235959Z-22d2fa" not in kept
    assert "20260101T000001Z-98177d" not in kept
    assert weekly["20251228T233000Z-7e8804"] == "weekly 2025-W52"
    # weeks without backups (the 50-day gap) use up no count: all weeks that have one are kept
    weeks = {f.started.strftime("%G-W%V") for f in _complete_newest_first()}
    assert len(weekly) == len(weeks) < 60


def test_keep_yearly_keeps_the_newest_of_each_year_and_the_oldest() -> None:
    kept = _kept(_plan("yearly-10"))
    assert kept["20261125T170000Z-3635e2"] == ("yearly 2026", "newest complete")
    # the last backup of 2025 is one second before midnight
    assert kept["20251231T235959Z-22d2fa"] == ("yearly 2025",)
    # restic: with counts left when the walk reaches the oldest backup, it is kept too
    assert kept["20251022T152800Z-17d104"] == ("yearly 2025 (oldest)",)
    assert kept["20261121T020000Z-8289ab"] == ("newest verified",)


def test_keep_last_counts_complete_backups_only() -> None:
    result = _plan("keep-last-5")
    kept = _kept(result)
    newest5 = [f.id for f in _complete_newest_first()[:5]]
    for k, backup_id in enumerate(newest5, 1):
        assert f"last {k} of 5" in kept[backup_id]
    # the failed (3h) and incomplete (1h, 30h) ones in between are not counted
    assert newest5[0] == "20261125T170000Z-3635e2"
    assert newest5[4] == "20261124T120000Z-9b4eaf"
    assert [d.id for d in result.keep if any(r.startswith("last") for r in d.reasons)] \
        == newest5


def test_hourly_and_daily_with_several_backups_a_day() -> None:
    kept = _kept(_plan("hourly-daily"))
    hourly = sorted(i for i, why in kept.items() if any(r.startswith("hourly") for r in why))
    assert hourly == sorted(f.id for f in _complete_newest_first()[:6])  # all in distinct hours
    assert "daily 2026-11-25" in kept["20261125T170000Z-3635e2"]
    assert "daily 2026-11-24" in kept["20261124T180000Z-2aa4da"]
    assert "daily 2026-11-23" in kept["20261123T020000Z-f7d37b"]


def test_keep_within_counts_from_the_newest_complete_backup_not_now() -> None:
    kept = _kept(_plan("within-30d-monthly"))
    newest = _complete_newest_first()[0].started
    within = {i for i, why in kept.items() if "within 30d" in why}
    assert within == {f.id for f in _complete_newest_first()
                      if f.started > newest - dt.timedelta(days=30)}


def test_failed_incomplete_and_corrupt() -> None:
    result = _plan("restic-typical")
    kept, removed = _kept(result), {d.id: d.reasons for d in result.remove}
    assert kept["20261126T110000Z-9e2a70"] == ("incomplete within grace 1d (may be running)",)
    assert kept["20261126T090000Z-8df3dd"] == ("failed within grace 1d",)
    assert removed["20261125T060000Z-fe00ea"] == ("incomplete older than grace 1d",)
    assert removed["20260101T120000Z-a55caf"] == ("failed older than grace 1d",)
    assert kept["20260925T105000Z-528efc"] == ("corrupt (never removed automatically)",)
    # a shorter grace removes the 3-hour-old failed backup but not the 1-hour-old incomplete
    short = _plan("label-pin-grace-2h")
    assert "20261126T090000Z-8df3dd" in {d.id for d in short.remove}
    assert "20261126T110000Z-9e2a70" in _kept(short)


def test_newest_verified_survives_a_policy_keeping_only_the_newest() -> None:
    result = _plan("within-1s-min-verified-2")
    kept = _kept(result)
    complete_kept = {i: why for i, why in kept.items()
                     if i in {f.id for f in _complete_newest_first()}}
    assert complete_kept == {
        "20261125T170000Z-3635e2": ("within 1s", "newest complete"),
        "20261121T020000Z-8289ab": ("newest verified",),   # 11-24 12:00 failed verification
        "20261011T102500Z-f99875": ("newest verified 2 of 2",),
    }


def test_labels_keep_pinned_backups() -> None:
    kept = _kept(_plan("label-pin-grace-2h"))
    assert kept["20260126T073400Z-884f31"] == ("label pin=release",)
    assert kept["20260824T052900Z-79923b"] == ("label pin=release",)
    assert kept["20261125T170000Z-3635e2"] == ("last 1 of 1", "newest complete")


# -- parsing and resolving ------------------------------------------------------------------

def test_parse_policy_round_trips() -> None:
    policy = parse_policy(" keep_daily=7  keep-weekly=4,--keep-within=1d12h,keep-label=pin, "
                          "keep-label=env=prod,min-verified=2,grace=36h")
    assert policy == Policy(keep_daily=7, keep_weekly=4, keep_within=dt.timedelta(hours=36),
                            keep_labels=("pin", "env=prod"), min_verified=2,
                            grace=dt.timedelta(hours=36))
    assert parse_policy(policy.to_text()) == policy


@pytest.mark.parametrize(("text", "message"), [
    ("", "keeps nothing"),
    ("min-verified=3", "keeps nothing"),
    ("keep-last=0", "keeps nothing"),
    ("keep-dayly=7", "did you mean 'keep-daily'"),
    ("keep-daily", "needs a value"),
    ("keep-daily=-1", "whole number"),
    ("keep-daily=seven", "whole number"),
    ("keep-within=7x", "not a duration"),
    ("keep-within=0s,keep-last=1", "positive duration"),
    ("keep-last=1,keep-last=2", "given twice"),
    ("keep-label=a b", "unknown rule 'b'"),
    ("keep-label=!x", "key or key=value"),
])
def test_parse_policy_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_policy(text)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_plan_refuses_a_policy_keeping_nothing() -> None:
    with pytest.raises(PolicyError, match="must keep something"):
        plan([], Policy(min_verified=3), NOW)


def test_resolve_policy_flags_replace_keep_rules_and_override_safety_one_by_one() -> None:
    configured = parse_policy("keep-daily=7,keep-weekly=4,min-verified=2,grace=6h")
    assert resolve_policy(configured) == configured
    flags = resolve_policy(configured, keep_last=3)
    assert flags == Policy(keep_last=3, min_verified=2, grace=dt.timedelta(hours=6))
    assert resolve_policy(configured, min_verified=0).keep_daily == 7
    with pytest.raises(PolicyError, match="no retention policy for full backups"):
        resolve_policy(None, what="full backups")
    with pytest.raises(PolicyError, match="keeps nothing"):
        resolve_policy(configured, keep_last=0)


def test_retention_reads_no_settings_object() -> None:
    """Pure: the settings' values (a mapping) are all it is given."""
    assert policies_for({"retention_full": "keep-last=3"}) == {"full": Policy(keep_last=3)}


def test_policies_from_settings_per_kind(tmp_path: Path) -> None:
    cfg = tmp_path / "prefect-dr.toml"
    cfg.write_text('[retention]\nfull = "keep-daily=7,keep-monthly=12"\n', encoding="utf-8")
    env = {"PREFECT_DR_RETENTION_CONFIG_ONLY": "keep-last=48,grace=2h"}
    settings = config.load(config_file=cfg, env=env)
    assert configured_policy(settings.values, "full") == Policy(keep_daily=7, keep_monthly=12)
    both = policies_for(settings.values)
    assert both["config-only"] == Policy(keep_last=48, grace=dt.timedelta(hours=2))
    assert policies_for(settings.values, "full", keep_last=2) == {"full": Policy(keep_last=2)}
    only_full = config.load(config_file=cfg, env={})
    assert list(policies_for(only_full.values)) == ["full"]  # config-only is not managed
    with pytest.raises(PolicyError, match="no retention policy for config-only"):
        policies_for(only_full.values, "config-only")
    assert set(policies_for(config.load(env={}).values, keep_last=1)) == {"full", "config-only"}
    with pytest.raises(PolicyError, match="no retention policy"):
        policies_for(config.load(env={}).values)
    bad = config.load(env={"PREFECT_DR_RETENTION_FULL": "keep-daly=7"})
    with pytest.raises(PolicyError, match=r"PREFECT_DR_RETENTION_FULL / retention.full: .*"
                                          "keep-daily"):
        policies_for(bad.values)


def test_format_duration() -> None:
    assert [format_duration(dt.timedelta(seconds=s)) for s in (0, 1, 90, 86400, 36 * 3600,
                                                               15 * 86400, 14 * 86400)] \
        == ["0s", "1s", "1m30s", "1d", "1d12h", "15d", "2w"]


def test_candidate_from_catalog_entry() -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=UTC)
    objects = [ObjectInfo("k", 1, t + dt.timedelta(hours=5))]
    entry = BackupEntry("20260101T000000Z-abcdef", "incomplete", kind="full", objects=objects,
                        verification={"result": "passed"}, labels={"a": "b"}, size=1)
    cand = Candidate.from_entry(entry)
    assert cand.started_at == t  # no status record: the start comes from the id
    assert cand.last_activity == t + dt.timedelta(hours=5)
    assert cand.verified is True and cand.labels == {"a": "b"}
    entry.started_at, entry.verification = "2026-01-01T01:00:00+01:00", {"result": "failed"}
    assert Candidate.from_entry(entry).started_at == t
    assert Candidate.from_entry(entry).verified is False


# -- properties -----------------------------------------------------------------------------

_statuses = st.sampled_from(["complete"] * 6 + ["failed", "incomplete", "corrupt"])
_backups = st.lists(st.tuples(st.integers(0, 500 * 24), _statuses, st.sampled_from(
    [None, True, False]), st.booleans()), max_size=40)
_policies = st.builds(
    Policy, keep_last=st.integers(0, 5), keep_hourly=st.integers(0, 5),
    keep_daily=st.integers(0, 10), keep_weekly=st.integers(0, 6),
    keep_monthly=st.integers(0, 6), keep_yearly=st.integers(0, 3),
    keep_within=st.sampled_from([None, dt.timedelta(days=3), dt.timedelta(hours=1)]),
    keep_labels=st.sampled_from([(), ("pin",)]), min_verified=st.integers(0, 3),
    grace=st.sampled_from([dt.timedelta(0), dt.timedelta(hours=24)]))


@settings(max_examples=300, deadline=None)
@given(_backups, _policies)
def test_safety_properties(raw: list, policy: Policy) -> None:
    if not policy.keeps_something:
        policy = Policy(keep_last=1, min_verified=policy.min_verified)
    cands = [Candidate(id=f"{(NOW - dt.timedelta(hours=h)):%Y%m%dT%H%M%SZ}-{i:06x}", kind="full",
                       status=s, started_at=NOW - dt.timedelta(hours=h), verified=v,
                       labels={"pin": "x"} if pin else {})
             for i, (h, s, v, pin) in enumerate(raw)]
    result = plan(cands, policy, NOW)
    assert sorted(d.id for d in result.decisions) == sorted(c.id for c in cands)
    assert plan(list(reversed(cands)), policy, NOW) == result  # order of input is irrelevant
    removed = {d.id for d in result.remove}
    complete = sorted((c for c in cands if c.status == "complete"),
                      key=lambda c: (c.started_at, c.id), reverse=True)
    if complete:
        assert complete[0].id not in removed
    for c in [c for c in complete if c.verified][:policy.min_verified]:
        assert c.id not in removed
    for c in cands:
        if c.status == "corrupt" or (c.status != "complete"
                                     and NOW - c.started_at < policy.grace):
            assert c.id not in removed
        if "pin" in policy.keep_labels and c.labels and c.status == "complete":
            assert c.id not in removed
    for d in result.keep + result.remove:
        assert d.reasons


def test_partial_and_safety_backups_never_displace_whole_ones() -> None:
    """I2 (issue 20, findings 3 and 6): keep-last 1 with newer partial and safety backups keeps
    the newest *whole* backup; the safety backup is kept by its own rule, the partial one only
    while no whole backup is newer."""
    day = dt.timedelta(days=1)
    whole_old = Fake(NOW - 3 * day, suffix="00000a")
    whole = Fake(NOW - 2 * day, suffix="00000b")
    partial_old = Fake(NOW - 2.5 * day, labels={"backfill": "unfinished"}, suffix="00000c")
    partial_new = Fake(NOW - 1.5 * day, labels={"backfill": "unfinished"}, suffix="00000d")
    safety = Fake(NOW - day, labels={"safety": "pre-restore", "restore-of": whole.id},
                  suffix="00000e")
    safety_old = Fake(NOW - 9 * day, labels={"safety": "pre-restore"}, suffix="00000f")
    fakes = [whole_old, whole, partial_old, partial_new, safety, safety_old]
    result = plan([f.candidate() for f in fakes], parse_policy("keep-last=1"), NOW)
    kept = {d.id: d.reasons for d in result.keep}
    removed = {d.id: d.reasons for d in result.remove}
    assert "newest complete" in kept[whole.id] and "last 1 of 1" in kept[whole.id]
    assert kept[partial_new.id] == ("partial, and no whole backup is newer",)
    assert kept[safety.id] == ("safety backup within 1w",)
    assert set(removed) == {whole_old.id, partial_old.id, safety_old.id}
    assert removed[safety_old.id] == ("safety backup older than 1w",)
    assert "whole backup is newer" in removed[partial_old.id][0]
    shorter = plan([f.candidate() for f in fakes],
                   parse_policy("keep-last=1,keep-safety-within=12h"), NOW)
    assert safety.id in {d.id for d in shorter.remove}


def test_a_needed_backup_is_kept_whatever_the_policy() -> None:
    """I1 (finding 2): a backup an unfinished backfill needs is never removed, and the plan
    says why."""
    day = dt.timedelta(days=1)
    fakes = [Fake(NOW - n * day, suffix=f"00000{n}") for n in range(1, 6)]
    needed = {fakes[-1].id: "the unfinished history backfill of prefect on host:5432"}
    result = plan([f.candidate() for f in fakes], parse_policy("keep-last=1"), NOW, needed)
    (decision,) = [d for d in result.keep if d.id == fakes[-1].id]
    assert decision.reasons == ("needed: the unfinished history backfill of prefect on "
                                "host:5432",)
    assert len(result.remove) == 3


def test_keep_safety_within_parses_and_prints() -> None:
    policy = parse_policy("keep-last=2,keep-safety-within=3d")
    assert policy.keep_safety_within == dt.timedelta(days=3)
    assert parse_policy(policy.to_text()) == policy
    assert "keep-safety-within" not in parse_policy("keep-last=2").to_text()  # default: silent
