"""`status`: is the newest backup (and verification) as fresh as the schedule says it must be?

With a cron schedule, the backup that *must* exist by now is the one of the newest scheduled time
``t`` with ``t + grace <= now``: the newest complete backup must have started at ``t`` or later
(a minute of clock skew allowed). The same for verifications, whose newest record must also have
passed. Without a backup schedule the newest complete backup must be younger than a maximum age
(:data:`DEFAULT_MAX_AGE`, 26 hours: a daily backup with two hours to spare); every verdict names
the rule it applied.

Freshness is judged per kind: by default only *full* backups, and only verifications of full
backups, count, so hourly config-only backups can never keep the probe green while full
backups (the only ones holding run history) have stopped. Increments are judged by their own
schedule (``--kind incremental``), which a full backup also keeps.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prefect_dr import cron
from prefect_dr.catalog import BackupEntry, whole
from prefect_dr.kinds import DEFAULT_LATEST_KIND, FRESH_FOR, Result

SKEW = dt.timedelta(minutes=1)
#: How old the newest backup may be when no backup schedule is known (``status --max-age``).
DEFAULT_MAX_AGE = dt.timedelta(hours=26)


@dataclass
class Freshness:
    """Verdict for one thing that runs on a schedule."""

    what: str
    ok: bool
    detail: str
    newest: str | None = None
    due_since: str | None = None
    rule: str = ""  # the rule applied: the schedule and grace, or the maximum age


@dataclass
class Report:
    """Both verdicts."""

    items: list[Freshness] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when everything is fresh."""
        return all(i.ok for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ok": self.ok, "items": [i.__dict__ for i in self.items]}


def validate_cron(expr: str) -> None:
    """Raise ValueError (one line) unless ``expr`` is a valid schedule (cron.validate)."""
    cron.validate(expr)


def due_since(expr: str, grace: dt.timedelta, now: dt.datetime) -> dt.datetime:
    """The newest scheduled time whose run, plus ``grace``, must have finished by ``now``."""
    return cron.newest_due(expr, grace, now)


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def evaluate(entries: list[BackupEntry], *, backup_cron: str | None, verify_cron: str | None,
             grace: dt.timedelta, now: dt.datetime, kind: str = DEFAULT_LATEST_KIND,
             max_age: dt.timedelta | None = None) -> Report:
    """Judge the freshness of backups of ``kind`` and of their verifications from the
    repository listing: against ``backup_cron`` and ``grace``, or without a schedule (or with
    ``max_age`` given) against ``max_age`` (default :data:`DEFAULT_MAX_AGE`). Raises
    ValueError for a bad cron."""
    report = Report()
    complete = [e for k in FRESH_FOR.get(kind, (kind,)) for e in whole(entries, k)]
    # (partial and safety backups never count: I2)
    entries = complete
    newest = max(complete, key=lambda e: e.started_at or "", default=None)
    started = _time(newest.started_at) if newest else None
    if backup_cron and max_age is None:
        due = due_since(backup_cron, grace, now)
        ok = started is not None and started >= due - SKEW
        detail = (f"newest complete {kind} backup {newest.backup_id} started "
                  f"{newest.started_at}" if newest else f"no complete {kind} backup") + (
            "" if ok else f"; one scheduled at {due.isoformat()} is missing")
        report.items.append(Freshness(f"{kind} backup", ok, detail,
                                      newest.backup_id if newest else None, due.isoformat(),
                                      rule=f"schedule '{backup_cron}', grace {_span(grace)}"))
    else:
        limit = max_age if max_age is not None else DEFAULT_MAX_AGE
        oldest_ok = now - limit
        ok = started is not None and started >= oldest_ok - SKEW
        detail = (f"newest complete {kind} backup {newest.backup_id} started "
                  f"{newest.started_at}" if newest else f"no complete {kind} backup") + (
            "" if ok or newest is None else f"; older than {_span(limit)}")
        rule = f"no backup schedule: at most {_span(limit)} old" + (
            "" if max_age is not None else " (the default; --max-age or --cron to change)")
        report.items.append(Freshness(f"{kind} backup", ok, detail,
                                      newest.backup_id if newest else None,
                                      oldest_ok.isoformat(), rule=rule))

    records = [(e.backup_id, e.verification) for e in entries if e.verification]
    latest = max(records, key=lambda r: str(r[1].get("finished_at", "")), default=None)
    if verify_cron or latest:
        finished = _time(str(latest[1].get("finished_at"))) if latest else None
        passed = bool(latest and latest[1].get("result") == Result.PASSED)
        due_v = due_since(verify_cron, grace, now) if verify_cron else None
        fresh = finished is not None and (due_v is None or finished >= due_v - SKEW)
        if latest is None:
            detail = f"no verification of a {kind} backup recorded"
        else:
            detail = (f"newest verification of {latest[0]} {latest[1].get('result')} at "
                      f"{latest[1].get('finished_at')}")
            if not passed:
                detail += f" ({latest[1].get('failed_check')})"
            if not fresh and due_v is not None:
                detail += f"; one scheduled at {due_v.isoformat()} is missing"
        report.items.append(Freshness(
            f"{kind} verification", fresh and passed, detail, latest[0] if latest else None,
            due_v.isoformat() if due_v else None,
            rule=(f"schedule '{verify_cron}', grace {_span(grace)}" if verify_cron
                  else "no verify schedule: the newest must have passed")))
    return report
