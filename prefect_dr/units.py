"""Sizes, durations and times for people: one unit family (IEC: KiB, MiB, GiB) everywhere,
times in UTC."""

from __future__ import annotations

import datetime as dt

MiB = 1024 * 1024


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> ''."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def clock(seconds: float) -> str:
    """75 -> '1:15'; 3725 -> '1:02:05'."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def utc_time(iso: str) -> dt.datetime | None:
    """``iso`` (ISO 8601) as a datetime, converted to UTC when it has a zone (a naive one is
    left as it is); None when it is not an ISO time."""
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return when.astimezone(dt.UTC) if when.tzinfo is not None else when
