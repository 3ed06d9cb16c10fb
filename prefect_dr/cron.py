"""The one definition of a valid schedule: a 5-field cron expression (or an ``@daily``-style
macro) that Kubernetes CronJobs and croniter both accept and that fires at least once. Used by
the settings (``schedule.*``), ``status`` and ``k8s render``."""

from __future__ import annotations

import datetime as dt
import re

from croniter import CroniterError, croniter

MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                    "@hourly"})
_NAMES = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT"
_TOKEN = re.compile(rf"^(\*|\?|(\d+|{_NAMES})(-(\d+|{_NAMES}))?)(/\d+)?$", re.IGNORECASE)
EXAMPLE = "expected 5 fields (minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"


def validate(expression: str, what: str = "schedule") -> str:
    """Return ``expression`` normalized (whitespace folded, macros lower-case) if valid.

    Raises ValueError with a one-line message otherwise (6-field, ``L``/``#``/``H``
    extensions, ``TZ=`` prefixes, out-of-range values, or a date that never occurs).
    """
    text = " ".join(str(expression).split())
    if text.lower() in MACROS:
        return text.lower()
    fields = text.split(" ")
    ok = (len(fields) == 5
          and all(_TOKEN.match(tok) for f in fields for tok in f.split(","))
          and croniter.is_valid(text))
    if not ok:
        raise ValueError(f"invalid cron {what} {expression!r}: {EXAMPLE}")
    try:
        croniter(text, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), max_years_between_matches=8
                 ).get_next(dt.datetime)
    except CroniterError:  # CroniterBadDateError: e.g. '0 2 31 2 *', no 31 February
        raise ValueError(f"invalid cron {what} {expression!r}: it never fires") from None
    return text


def is_valid(expression: str) -> bool:
    """Whether :func:`validate` accepts ``expression``."""
    try:
        validate(expression)
    except ValueError:
        return False
    return True


def newest_due(expression: str, grace: dt.timedelta, now: dt.datetime) -> dt.datetime:
    """The newest scheduled time whose run, plus ``grace``, must have finished by ``now``.
    Raises ValueError for an invalid expression."""
    return croniter(validate(expression), now - grace).get_prev(dt.datetime)
