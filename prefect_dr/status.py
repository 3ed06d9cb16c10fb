"""`status`: is the newest backup (and verification) as fresh as the schedule says it must be?

With a cron schedule, the backup that *must* exist by now is the one of the newest scheduled time
``t`` with ``t + grace <= now``: the newest complete backup must have started at ``t`` or later
(a minute of clock skew allowed). The same for verifications, whose newest record must also have
passed. Without a schedule only presence is checked.

Freshness is judged per kind: by default only *full* backups, and only verifications of full
backups, count, so hourly config-only backups can never keep the probe green while full
backups (the only ones holding run history) have stopped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prefect_dr import cron
from prefect_dr.catalog import BackupEntry, whole
from prefect_dr.kinds import DEFAULT_LATEST_KIND

SKEW = dt.timedelta(minutes=1)


@dataclass
class Freshness:
    """Verdict for one thing that runs on a schedule."""

    what: str
    ok: bool
    detail: str
    newest: str | None = None
    due_since: str | None = None


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


def evaluate(entries: list[BackupEntry], *, backup_cron: str | None, verify_cron: str | None,
             grace: dt.timedelta, now: dt.datetime, kind: str = DEFAULT_LATEST_KIND) -> Report:
    """Judge the freshness of backups of ``kind`` and of their verifications from the
    repository listing. Raises ValueError for a bad cron."""
    report = Report()
    complete = whole(entries, kind)  # partial and safety backups never count (I2)
    entries = complete
    newest = max(complete, key=lambda e: e.started_at or "", default=None)
    started = _time(newest.started_at) if newest else None
    if backup_cron:
        due = due_since(backup_cron, grace, now)
        ok = started is not None and started >= due - SKEW
        detail = (f"newest complete {kind} backup {newest.backup_id} started "
                  f"{newest.started_at}" if newest else f"no complete {kind} backup") + (
            "" if ok else f"; one scheduled at {due.isoformat()} is missing")
        report.items.append(Freshness(f"{kind} backup", ok, detail,
                                      newest.backup_id if newest else None, due.isoformat()))
    else:
        report.items.append(Freshness(
            f"{kind} backup", newest is not None,
            f"newest complete {kind} backup {newest.backup_id}" if newest
            else f"no complete {kind} backup", newest.backup_id if newest else None))

    records = [(e.backup_id, e.verification) for e in entries if e.verification]
    latest = max(records, key=lambda r: str(r[1].get("finished_at", "")), default=None)
    if verify_cron or latest:
        finished = _time(str(latest[1].get("finished_at"))) if latest else None
        passed = bool(latest and latest[1].get("result") == "passed")
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
        report.items.append(Freshness(f"{kind} verification", fresh and passed, detail,
                                      latest[0] if latest else None,
                                      due_v.isoformat() if due_v else None))
    return report
