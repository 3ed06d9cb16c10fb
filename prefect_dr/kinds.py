"""The one definition of backup kinds and backup statuses.

Manifest, catalog, retention, prune, status, the CLI and the Kubernetes renderer all import these;
none defines its own. Both are ``StrEnum``s, so a member equals its text (``Kind.FULL ==
"full"``) and JSON, manifests and status records keep plain strings.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


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


class Result(enum.StrEnum):
    """What a verification record says of its backup (docs/format.md, "Verification records").

    ``passed``/``failed`` are what verify writes; ``forged``/``unsigned`` are what a reader
    (catalog) puts in place of a claimed result whose signature does not check out.
    """

    PASSED = "passed"
    FAILED = "failed"
    FORGED = "forged"  # signed, but not by a trusted verify key (or not this backup's)
    UNSIGNED = "unsigned"  # no signature where the reader requires one


@dataclass(frozen=True)
class KindInfo:
    """Everything the package knows of one backup kind: the one row each module asks.

    A new kind is a ``Kind`` member and one row of ``KIND_TABLE`` (and, for ``k8s render``, a
    ``RenderOptions`` field named after its retention setting).
    """

    kind: Kind
    #: what ``--kind`` help and the docs say it holds
    help: str
    #: it holds every table's rows, run history included (an increment: with its chain), so
    #: backup dumps every table and records the runs' runtime state; False: the schema of
    #: every table and the data of the configuration tables only
    history: bool
    #: the setting (config.SPECS) holding its retention policy for ``prune``; None: the kind
    #: has no policy of its own (an increment is kept or removed with its chain's base)
    retention_setting: str | None
    #: an example policy, for that setting's help
    retention_example: str = ""

    @property
    def loses_history(self) -> bool:
        """Restoring it over a database that holds run history deletes that history: restore's
        history-loss guard refuses it without ``--allow-history-loss``."""
        return not self.history

    @property
    def retention_env(self) -> str:
        """The environment variable of its retention setting (a kind that has one)."""
        return f"PREFECT_DR_{(self.retention_setting or '').upper()}"

    @property
    def retention_toml(self) -> str:
        """The TOML key of its retention setting (a kind that has one)."""
        return "retention." + (self.retention_setting or "").removeprefix("retention_")


KIND_TABLE: Mapping[str, KindInfo] = {info.kind: info for info in (
    KindInfo(Kind.FULL, "the whole database (schema and every table's data, run history "
             "included)", history=True, retention_setting="retention_full",
             retention_example="keep-daily=7,keep-weekly=4,keep-monthly=12,min-verified=1"),
    KindInfo(Kind.CONFIG_ONLY, "the schema of every table plus the data of the configuration "
             "tables", history=False, retention_setting="retention_config_only",
             retention_example="keep-last=48"),
    KindInfo(Kind.INCREMENTAL, "the history written since the newest full or incremental "
             "backup, the rest in full (a link of a chain on a full backup; docs/format.md)",
             history=True, retention_setting=None),
)}
#: The rows of the kinds with a retention policy of their own (``prune --kind``), in order.
POLICY_ROWS: tuple[KindInfo, ...] = tuple(row for row in KIND_TABLE.values()
                                          if row.retention_setting)
POLICY_KINDS: tuple[str, ...] = tuple(row.kind for row in POLICY_ROWS)

KINDS: tuple[str, ...] = tuple(k.value for k in Kind)
#: The kinds as a reader names them: "full, config-only or incremental".
KINDS_TEXT = (", ".join(KINDS[:-1]) + " or " + KINDS[-1]) if len(KINDS) > 1 else KINDS[0]
#: The kind ``--latest`` means when a command restores or proves history (restore, verify,
#: show, status): a config-only backup must never stand in for a full one by accident.
DEFAULT_LATEST_KIND = Kind.FULL


def parse(text: str) -> Kind:
    """The kind named ``text``. Raises ValueError (one line) for an unknown one."""
    try:
        return Kind(text)
    except ValueError:
        raise ValueError(f"unknown backup kind {text!r} ({KINDS_TEXT})") from None


def holds_history(kind: str | None) -> bool:
    """Whether a backup of ``kind`` holds the run history's rows (False for an unknown kind,
    e.g. one a newer prefect-dr wrote)."""
    row = KIND_TABLE.get(kind or "")
    return row is not None and row.history


def loses_history(kind: str | None) -> bool:
    """Whether restoring a backup of ``kind`` over a database holding run history deletes
    that history (False for an unknown kind, which the manifest check refuses anyway)."""
    row = KIND_TABLE.get(kind or "")
    return row is not None and row.loses_history


# --- incremental backups and chains (issue 26) ---------------------------------------------
#: Kinds an increment can chain on: a full backup (the chain's base) or a previous increment.
CHAIN_KINDS: tuple[str, ...] = (Kind.FULL, Kind.INCREMENTAL)
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
