"""Durations written the way operators write them: 90s, 30m, 12h, 7d, 2w (and combinations)."""

from __future__ import annotations

import datetime as dt
import re

_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse(text: str) -> dt.timedelta:
    """Parse '1d12h' style text. Raises ValueError with a usable message."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _PART.sub("", compact):
        raise ValueError(f"{text!r} is not a duration (use e.g. 30m, 12h, 7d, 2w, 1d12h)")
    total = dt.timedelta()
    for number, unit in _PART.findall(compact):
        total += dt.timedelta(**{_UNITS[unit]: int(number)})
    return total
