"""The one definition of backup kinds and backup statuses.

Manifest, catalog, retention, prune, status, the CLI and the Kubernetes renderer all import these;
none defines its own. Both are ``StrEnum``s, so a member equals its text (``Kind.FULL ==
"full"``) and JSON, manifests and status records keep plain strings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Kind(enum.StrEnum):
    """What a backup holds.

    - ``full``: the whole database (schema and every table's data, run history included);
    - ``config-only``: the schema of every table plus the data of the configuration tables;
    - ``incremental``: every table but the history tables in full, plus the history rows
      written since its parent's watermark (a link of a chain; docs/format.md, "Increments").
    """

    FULL = "full"
    CONFIG_ONLY = "config-only"
    INCREMENTAL = "incremental"


class Status(enum.StrEnum):
    """What the repository says of a backup (docs/format.md, "Status rules")."""

    COMPLETE = "complete"  # manifest present and valid
    FAILED = "failed"  # the run recorded its failure
    INCOMPLETE = "incomplete"  # still running, or killed before it could write anything final
    CORRUPT = "corrupt"  # a manifest is present but unreadable or not this backup's


KINDS: tuple[str, ...] = tuple(k.value for k in Kind)
#: The kind ``--latest`` means when a command restores or proves history (restore, verify,
#: show, status): a config-only backup must never stand in for a full one by accident.
DEFAULT_LATEST_KIND = Kind.FULL


def parse(text: str) -> Kind:
    """The kind named ``text``. Raises ValueError (one line) for an unknown one."""
    try:
        return Kind(text)
    except ValueError:
        raise ValueError(f"unknown backup kind {text!r} ({', '.join(KINDS)})") from None


# --- incremental backups and chains (issue 26) ---------------------------------------------
#: Kinds an increment can chain on: a full backup (the chain's base) or a previous increment.
CHAIN_KINDS: tuple[str, ...] = (Kind.FULL, Kind.INCREMENTAL)
#: Kinds holding the run tables' data (a restore reconciles their runtime state).
RUN_KINDS: tuple[str, ...] = (Kind.FULL, Kind.INCREMENTAL)
#: How far an increment reaches back before its parent's watermark, in seconds
#: (docs/format.md, "Increments"): rows committed late, clock skew between Prefect and the
#: database. Rows in both links are loaded once (de-duplicated by primary key).
INCREMENT_OVERLAP_S = 300
#: ``status --kind incremental``: a full backup is as fresh a point of the chain as an increment
#: (the hour a full backup runs, the increment's schedule is kept by it).
FRESH_FOR: dict[str, tuple[str, ...]] = {Kind.INCREMENTAL: (Kind.INCREMENTAL, Kind.FULL)}


#: Labels prefect-dr sets itself. ``safety=pre-restore``: a restore's backup of the database it
#: replaced. ``backfill=unfinished``: taken while a tiered restore's history backfill was
#: unfinished in the database (part of the history missing).
LABEL_SAFETY = "safety"
LABEL_BACKFILL = "backfill"
BACKFILL_UNFINISHED = "unfinished"


class Standing(enum.StrEnum):
    """What a complete backup stands for (docs/reliability.md, invariant I2).

    Only a *whole* backup counts for ``--latest``/``latest``, ``status`` and retention's keep
    rules; a partial or safety backup never displaces or stands in for one.
    """

    WHOLE = "whole"  # a backup of the live state, as scheduled or asked for
    PARTIAL = "partial"  # taken during an unfinished history backfill: part of the history
    SAFETY = "safety"  # a restore's backup of the database it replaced


def standing(labels: Mapping[str, str]) -> Standing:
    """The standing of a backup with ``labels`` (the labels prefect-dr itself sets decide)."""
    if LABEL_SAFETY in labels:
        return Standing.SAFETY
    if labels.get(LABEL_BACKFILL) == BACKFILL_UNFINISHED:
        return Standing.PARTIAL
    return Standing.WHOLE
