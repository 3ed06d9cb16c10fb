"""Retention: which backups a policy keeps, as a pure function (docs/operations.md, "Retention").

``plan(backups, policy, now)`` follows restic's ``forget`` semantics, with periods in UTC:

- complete backups are walked newest first; ``keep-last N`` keeps the N newest;
- ``keep-hourly/daily/weekly/monthly/yearly N`` keeps the newest backup of each of the N most
  recent periods that hold a backup (gaps do not use up a count); while a count is left when the
  walk reaches the oldest backup, that one is kept too ("oldest"), as restic does;
- weeks are ISO weeks (2025-12-31 is in 2026-W01); ``keep-within D`` keeps every backup started
  less than D before the newest complete backup (not before *now*: when backups stop, retention
  stops eating the history);
- ``keep-label key`` / ``keep-label key=value`` keeps every backup with that label.

Safety rules layered on top: the newest complete backup and the ``min-verified`` newest
backups whose latest verification passed are always kept; failed and incomplete backups are
removed only when their last sign of life is older than ``grace`` (an incomplete backup may be
one still running); corrupt backups are never removed automatically (a manifest this version
cannot read may have been written by a newer prefect-dr).

Deleting is a separate step (``prefect_dr.prune``). This module reads no storage and no clock.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from prefect_dr import durations
from prefect_dr import layout as lay
from prefect_dr.errors import USAGE, DRError
from prefect_dr.kinds import (
    KIND_TABLE,
    POLICY_KINDS,
    Result,
    Standing,
    Status,
    parse,
    standing,
)

if TYPE_CHECKING:
    from prefect_dr.catalog import BackupEntry

COMPLETE, FAILED, INCOMPLETE, CORRUPT = (Status.COMPLETE, Status.FAILED, Status.INCOMPLETE,
                                       Status.CORRUPT)
#: Setting that holds the policy of each kind (config.SPECS).
SETTING_OF_KIND = {kind: row.retention_setting for kind, row in KIND_TABLE.items()
                   if row.retention_setting}
#: The kinds a policy is given for. Increments have none of their own: a chain is kept or
#: removed as a unit with its base, by the full policy (:func:`with_chains`).
KINDS: tuple[str, ...] = POLICY_KINDS

_COUNTS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
           "keep_yearly")
_KEEP_RULES = (*_COUNTS, "keep_within", "keep_labels")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.\-/]+(=[^,\s]*)?$")


class PolicyError(DRError, ValueError):
    """A retention policy is malformed, keeps nothing, or is missing (a usage error)."""

    exit_code = USAGE


def format_duration(delta: dt.timedelta) -> str:
    """Compact text of a duration in the units ``durations.parse`` reads: 90s, 1d12h, 30d, 2w
    (weeks only for whole weeks)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    if seconds % 604800 == 0:
        return f"{seconds // 604800}w"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


DEFAULT_KEEP_SAFETY_WITHIN = dt.timedelta(days=7)


@dataclass(frozen=True)
class Policy:
    """What to keep of one kind of backup. Counts of 0 mean "rule not used".

    Raises PolicyError (a ValueError) on negative counts or a non-positive duration.
    """

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: dt.timedelta | None = None
    keep_labels: tuple[str, ...] = ()
    min_verified: int = 1
    grace: dt.timedelta = dt.timedelta(hours=24)
    #: how long a restore's safety backup is kept (they never count toward the rules above)
    keep_safety_within: dt.timedelta = DEFAULT_KEEP_SAFETY_WITHIN

    def __post_init__(self) -> None:
        for name in (*_COUNTS, "min_verified"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PolicyError(f"{name.replace('_', '-')} must be a whole number >= 0, "
                                  f"got {value!r}")
        if self.keep_within is not None and self.keep_within <= dt.timedelta(0):
            raise PolicyError("keep-within must be a positive duration (e.g. 7d)")
        if self.grace < dt.timedelta(0):
            raise PolicyError("grace must not be negative")
        if self.keep_safety_within < dt.timedelta(0):
            raise PolicyError("keep-safety-within must not be negative")
        for label in self.keep_labels:
            if not _LABEL_RE.match(label):
                raise PolicyError(f"keep-label {label!r} must be key or key=value")

    @property
    def keeps_something(self) -> bool:
        """Whether at least one keep rule is set (min-verified alone is a safety net)."""
        return (any(getattr(self, n) for n in _COUNTS) or self.keep_within is not None
                or bool(self.keep_labels))

    def to_text(self) -> str:
        """The policy as text ``parse_policy`` reads back, e.g. 'keep-daily=7,min-verified=1'."""
        items = [f"{n.replace('_', '-')}={getattr(self, n)}" for n in _COUNTS if getattr(self, n)]
        if self.keep_within is not None:
            items.append(f"keep-within={format_duration(self.keep_within)}")
        items += [f"keep-label={label}" for label in self.keep_labels]
        items.append(f"min-verified={self.min_verified}")
        items.append(f"grace={format_duration(self.grace)}")
        if self.keep_safety_within != DEFAULT_KEEP_SAFETY_WITHIN:
            items.append(f"keep-safety-within={format_duration(self.keep_safety_within)}")
        return ",".join(items)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (durations as text)."""
        return {
            **{n: getattr(self, n) for n in _COUNTS},
            "keep_within": format_duration(self.keep_within) if self.keep_within else None,
            "keep_labels": list(self.keep_labels), "min_verified": self.min_verified,
            "grace": format_duration(self.grace),
            "keep_safety_within": format_duration(self.keep_safety_within),
        }


_RULE_NAMES = [n.replace("_", "-") for n in _COUNTS] + [
    "keep-within", "keep-label", "min-verified", "grace", "keep-safety-within"]
_DURATION_RULES = ("keep-within", "grace", "keep-safety-within")


def parse_policy(text: str) -> Policy:
    """Parse 'keep-daily=7,keep-weekly=4,min-verified=1,grace=24h' (commas or spaces).

    Rules: keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly (counts),
    keep-within (duration), keep-label (key or key=value; repeatable), min-verified (count,
    default 1), grace (duration, default 24h), keep-safety-within (duration, default 7d).
    Underscores and leading dashes are accepted.
    Raises PolicyError (a ValueError) with a one-line message naming the bad item, also when
    the policy keeps nothing.
    """
    values: dict[str, Any] = {}
    labels: list[str] = []
    items = [i for i in re.split(r"[,\s]+", text.strip()) if i]
    for item in items:
        raw_key, sep, value = item.partition("=")
        key = raw_key.lstrip("-").lower().replace("_", "-")
        if key not in _RULE_NAMES:
            near = difflib.get_close_matches(key, _RULE_NAMES, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise PolicyError(f"retention policy: unknown rule {raw_key!r} ({hint}rules: "
                              f"{', '.join(_RULE_NAMES)})")
        if not sep or not value:
            raise PolicyError(f"retention policy: {key} needs a value, like {key}="
                              + ("7d" if key in _DURATION_RULES else
                                 "env=prod" if key == "keep-label" else "7"))
        if key == "keep-label":
            labels.append(value)
            continue
        if key in values:
            raise PolicyError(f"retention policy: {key} is given twice")
        if key in _DURATION_RULES:
            try:
                values[key] = durations.parse(value)
            except ValueError as exc:
                raise PolicyError(f"retention policy: {key}: {exc}") from None
        else:
            if not value.isdigit():
                raise PolicyError(f"retention policy: {key} must be a whole number >= 0, "
                                  f"got {value!r}")
            values[key] = int(value)
    policy = Policy(**{k.replace("-", "_"): v for k, v in values.items()},
                    keep_labels=tuple(labels))
    if not policy.keeps_something:
        raise PolicyError(f"retention policy {text.strip()!r} keeps nothing: a policy must keep "
                          "something (set keep-last, keep-daily, keep-within, ...)")
    return policy


def resolve_policy(configured: Policy | None, *, keep_last: int | None = None,
                   keep_hourly: int | None = None, keep_daily: int | None = None,
                   keep_weekly: int | None = None, keep_monthly: int | None = None,
                   keep_yearly: int | None = None, keep_within: dt.timedelta | None = None,
                   keep_labels: Iterable[str] | None = None, min_verified: int | None = None,
                   grace: dt.timedelta | None = None,
                   keep_safety_within: dt.timedelta | None = None,
                   what: str = "these backups") -> Policy:
    """Combine a configured policy with command-line options (None = option not given).

    Any keep option given replaces *all* keep rules of the configured policy (the command line
    then shows the whole policy); ``min_verified`` and ``grace`` override one by one.
    Raises PolicyError when there is no policy at all or the result keeps nothing.
    """
    given = {"keep_last": keep_last, "keep_hourly": keep_hourly, "keep_daily": keep_daily,
             "keep_weekly": keep_weekly, "keep_monthly": keep_monthly,
             "keep_yearly": keep_yearly, "keep_within": keep_within,
             "keep_labels": tuple(keep_labels) if keep_labels else None}
    if any(v is not None for v in given.values()):
        base = Policy(**{k: v for k, v in given.items() if v is not None},
                      **({"min_verified": configured.min_verified, "grace": configured.grace,
                          "keep_safety_within": configured.keep_safety_within}
                         if configured else {}))
    elif configured is not None:
        base = configured
    else:
        raise PolicyError(f"no retention policy for {what}: configure one or pass --keep-* "
                          "options")
    policy = replace(base, **{k: v for k, v in (("min_verified", min_verified),
                                                 ("grace", grace),
                                                 ("keep_safety_within", keep_safety_within))
                              if v is not None})
    if not policy.keeps_something:
        raise PolicyError(f"the retention policy for {what} keeps nothing: a policy must keep "
                          "something (e.g. --keep-last 1)")
    return policy


def configured_policy(values: Mapping[str, Any], kind: str) -> Policy | None:
    """The policy the settings' ``values`` (``Settings.values``: setting name -> value) give
    backups of ``kind`` (its retention setting, kinds.KIND_TABLE), or None when none is set.

    Raises PolicyError naming the setting when its text is malformed.
    """
    row = KIND_TABLE[kind]
    text = values.get(row.retention_setting)
    if not text:
        return None
    try:
        return parse_policy(text)
    except PolicyError as exc:
        raise PolicyError(f"{row.retention_env} / {row.retention_toml}: {exc.message}") from None


def policies_for(values: Mapping[str, Any], kind: str | None = None, **options: Any
                 ) -> dict[str, Policy]:
    """The policy of each kind to prune: ``kind`` alone, or every kind that has a policy in the
    settings' ``values`` (``Settings.values``).

    ``options`` are ``resolve_policy``'s keyword options (the command-line flags); keep options
    given without ``kind`` apply to both kinds. Raises PolicyError when ``kind`` has no policy,
    when no kind has one, or when a policy is malformed.
    """
    if kind is not None:
        try:
            row = KIND_TABLE[parse(kind)]
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
        if not row.retention_setting:
            raise PolicyError("increments are pruned with their chain's base, by the full "
                              "policy (prune --kind full)")
    flags = any(options.get(n) not in (None, (), []) for n in _KEEP_RULES)
    out: dict[str, Policy] = {}
    for k in [kind] if kind else list(KINDS):
        configured = configured_policy(values, k)
        if configured is None and not flags and kind is None:
            continue  # this kind is not managed by retention
        out[k] = resolve_policy(configured, what=f"{k} backups", **options)
    if not out:
        first, *rest = (f"{r.retention_toml} / {r.retention_env}" for r in KIND_TABLE.values()
                        if r.retention_setting)
        also = f"(and {', '.join(rest)}) " if rest else ""
        raise PolicyError(f"no retention policy: set {first} {also}or pass --keep-* options")
    return out


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def id_time(backup_id: str) -> dt.datetime | None:
    """The UTC start time encoded in a backup id, or None when the id is malformed."""
    if not lay.BACKUP_ID_RE.match(backup_id):
        return None
    return dt.datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Candidate:
    """What the planner knows of one backup.

    ``last_activity`` is the newest sign of life (start or newest object written); the grace
    period of failed and incomplete backups counts from it.
    """

    id: str
    kind: str | None
    status: str
    started_at: dt.datetime
    verified: bool | None = None  # newest verification passed / failed / never verified
    labels: Mapping[str, str] = field(default_factory=dict)
    last_activity: dt.datetime | None = None
    size: int = 0

    @classmethod
    def from_entry(cls, entry: BackupEntry) -> Candidate:
        """Build from a catalog entry; the start comes from the record, else from the id."""
        started = None
        if entry.started_at:
            try:
                started = _utc(dt.datetime.fromisoformat(entry.started_at))
            except ValueError:
                started = None
        started = started or id_time(entry.backup_id) or dt.datetime.min.replace(tzinfo=dt.UTC)
        activity = max([started, *(_utc(o.last_modified) for o in entry.objects)])
        result = (entry.verification or {}).get("result")
        verified = True if result == Result.PASSED else False if result == Result.FAILED else None
        return cls(id=entry.backup_id, kind=entry.kind, status=entry.status,
                   started_at=started, verified=verified, labels=dict(entry.labels),
                   last_activity=activity, size=entry.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``backup_id``, as in every command; ``id`` is its deprecated
        name, kept for one release: docs/json.md)."""
        return {"backup_id": self.id, "id": self.id, "kind": self.kind, "status": self.status,
                "started_at": self.started_at.isoformat(), "verified": self.verified,
                "labels": dict(self.labels), "size": self.size}


@dataclass(frozen=True)
class Decision:
    """Keep or remove one backup, and why."""

    candidate: Candidate
    keep: bool
    reasons: tuple[str, ...]

    @property
    def id(self) -> str:
        """The backup id."""
        return self.candidate.id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the candidate's fields, the action and the reasons."""
        return {**self.candidate.to_dict(), "action": "keep" if self.keep else "remove",
                "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Plan:
    """The outcome of ``plan``: decisions newest first."""

    policy: Policy
    now: dt.datetime
    keep: tuple[Decision, ...]
    remove: tuple[Decision, ...]

    @property
    def decisions(self) -> list[Decision]:
        """Every decision, newest first."""
        return sorted([*self.keep, *self.remove],
                      key=lambda d: (d.candidate.started_at, d.id), reverse=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by --json and the golden files)."""
        return {"policy": self.policy.to_text(), "now": self.now.isoformat(),
                "keep": [{"backup_id": d.id, "id": d.id, "reasons": list(d.reasons)}
                         for d in self.keep],
                "remove": [{"backup_id": d.id, "id": d.id, "reasons": list(d.reasons)}
                           for d in self.remove]}


def _iso_week(t: dt.datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


_PERIODS: tuple[tuple[str, str, Callable[[dt.datetime], str]], ...] = (
    ("keep_hourly", "hourly", lambda t: t.strftime("%Y-%m-%dT%H")),
    ("keep_daily", "daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", "weekly", _iso_week),
    ("keep_monthly", "monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", "yearly", lambda t: t.strftime("%Y")),
)


def has_label(labels: Mapping[str, str], rule: str) -> bool:
    key, sep, value = rule.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _newest_first(items: Iterable[Candidate]) -> list[Candidate]:
    return sorted(items, key=lambda c: (c.started_at, c.id), reverse=True)


def plan(backups: Iterable[Candidate], policy: Policy, now: dt.datetime,
         needed: Mapping[str, str] | None = None) -> Plan:
    """Decide, for every backup, keep or remove, with reasons (module docstring: the rules).

    ``needed`` maps the ids of backups that something still depends on (an unfinished history
    backfill, ...) to why: they are kept whatever the policy says (docs/reliability.md, I1).
    Only *whole* backups count for the keep rules, "newest complete" and ``min-verified``; a
    restore's safety backup is kept for ``keep_safety_within`` from now; a partial backup
    (taken during an unfinished backfill) while no whole backup is newer (I2).

    Pure: same input, same plan. ``backups`` should be of one kind. Raises PolicyError (a
    ValueError) when the policy keeps nothing.
    """
    if not policy.keeps_something:
        raise PolicyError("a policy must keep something (set keep-last, keep-daily, ...)")
    now = _utc(now)
    items = _newest_first(backups)
    reasons: dict[str, list[str]] = {c.id: [] for c in items}
    complete = [c for c in items if c.status == COMPLETE]
    whole = [c for c in complete if standing(c.labels) == Standing.WHOLE]

    for cand in complete:
        reasons[cand.id] += [f"label {rule}" for rule in policy.keep_labels
                             if has_label(cand.labels, rule)]
    if whole:
        past = [c.started_at for c in whole if c.started_at <= now]
        latest = max(past) if past else whole[0].started_at
        last_left = policy.keep_last
        left = {attr: getattr(policy, attr) for attr, _, _ in _PERIODS}
        previous: dict[str, str | None] = {attr: None for attr, _, _ in _PERIODS}
        for nr, cand in enumerate(whole):
            why = reasons[cand.id]
            oldest = nr == len(whole) - 1
            if policy.keep_within is not None and cand.started_at > latest - policy.keep_within:
                why.append(f"within {format_duration(policy.keep_within)}")
            if last_left > 0:
                why.append(f"last {policy.keep_last - last_left + 1} of {policy.keep_last}")
                last_left -= 1
            for attr, name, period_of in _PERIODS:
                if left[attr] <= 0:
                    continue
                period = period_of(cand.started_at)
                if period != previous[attr]:
                    why.append(f"{name} {period}")
                elif oldest:
                    why.append(f"{name} {period} (oldest)")
                else:
                    continue
                previous[attr] = period
                left[attr] -= 1
        reasons[whole[0].id].append("newest complete")
        verified = [c for c in whole if c.verified is True][:policy.min_verified]
        for k, cand in enumerate(verified, 1):
            reasons[cand.id].append("newest verified" if k == 1 else
                                    f"newest verified {k} of {policy.min_verified}")
    newest_whole = whole[0].started_at if whole else None
    safety_within = format_duration(policy.keep_safety_within)
    for cand in complete:
        role = standing(cand.labels)
        if role == Standing.SAFETY and now - cand.started_at < policy.keep_safety_within:
            reasons[cand.id].append(f"safety backup within {safety_within}")
        elif role == Standing.PARTIAL and (newest_whole is None
                                           or cand.started_at > newest_whole):
            reasons[cand.id].append("partial, and no whole backup is newer")
    for cand in items:
        if needed and cand.id in needed:
            reasons[cand.id].append(f"needed: {needed[cand.id]}")

    grace = format_duration(policy.grace)
    keep: list[Decision] = []
    remove: list[Decision] = []
    for cand in items:
        why = reasons[cand.id]
        if cand.status == COMPLETE or (needed and cand.id in needed):
            if why:
                keep.append(Decision(cand, True, tuple(why)))
            else:
                remove.append(Decision(cand, False, (_unkept(cand, safety_within),)))
        elif cand.status == CORRUPT:
            keep.append(Decision(cand, True, ("corrupt (never removed automatically)",)))
        else:
            status = FAILED if cand.status == FAILED else INCOMPLETE
            age = now - (cand.last_activity or cand.started_at)
            if age < policy.grace:
                note = " (may be running)" if status == INCOMPLETE else ""
                keep.append(Decision(cand, True, (f"{status} within grace {grace}{note}",)))
            else:
                remove.append(Decision(cand, False, (f"{status} older than grace {grace}",)))
    return Plan(policy, now, tuple(keep), tuple(remove))


def _unkept(cand: Candidate, safety_within: str) -> str:
    """Why a complete backup that no rule keeps is removed."""
    role = standing(cand.labels)
    if role == Standing.SAFETY:
        return f"safety backup older than {safety_within}"
    if role == Standing.PARTIAL:
        return "partial (taken during an unfinished history backfill); a whole backup is newer"
    return "no keep rule matches"


def chain_needs(ancestors: Mapping[str, list[str]], needed: Mapping[str, str],
                labelled: Iterable[str]) -> dict[str, str]:
    """``needed`` plus every ancestor of an increment that is needed or ``labelled`` (kept by
    a keep-label rule): keeping an increment keeps its whole chain (docs/reliability.md, I9)."""
    out = dict(needed)
    for bid in [*needed, *labelled]:
        for up in ancestors.get(bid, []):
            out.setdefault(up, f"chain of {bid}")
    return out


def with_chains(full: Plan, increments: Iterable[Candidate], ancestors: Mapping[str, list[str]],
                bases: Mapping[str, str], needed: Mapping[str, str]) -> Plan:
    """``full`` (the full backups' plan) with a decision for each complete increment: a chain
    is a unit, so an increment is kept exactly when its base is (or when it is needed, or has
    a keep label), and removed with it. An increment whose chain is broken (a link missing or
    not complete; ``bases`` names no base for it) cannot be restored and is removed unless
    needed. ``ancestors``: parent first, as far as listed; ``bases``: increment -> its base
    when every link up to it is listed complete."""
    kept = {d.id for d in full.keep}
    keep = list(full.keep)
    remove = list(full.remove)
    for cand in _newest_first(increments):
        why = [f"label {rule}" for rule in full.policy.keep_labels
               if has_label(cand.labels, rule)]
        if cand.id in needed:
            why.append(f"needed: {needed[cand.id]}")
        base = bases.get(cand.id)
        if base is not None and base in kept:
            why.append(f"chain of base {base}")
        if why:
            keep.append(Decision(cand, True, tuple(why)))
        elif base is None:
            up = ancestors.get(cand.id) or ["its parent"]
            remove.append(Decision(cand, False, (f"its chain is broken after {up[-1]}",)))
        else:
            remove.append(Decision(cand, False, (f"its base {base} is removed",)))
    return replace(full, keep=tuple(keep), remove=tuple(remove))
