"""restore-config's vocabulary and result types: sections, actions, item kinds, outcomes, the
plan (:class:`ImportPlan` of :class:`PlanItem`) and the result (:class:`ImportResult` of
:class:`ItemResult`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect_dr import redact
from prefect_dr.errors import USAGE, DRError

#: what ``--only`` accepts (the plan orders objects by dependency, not by this tuple).
SECTIONS = ("blocks", "variables", "work-pools", "deployments", "automations",
            "concurrency-limits")
ON_CONFLICT = ("skip", "overwrite")
OnConflict = Literal["skip", "overwrite"]

CREATE = "create"
SKIP = "skip (exists)"
OVERWRITE = "overwrite"
UNCHANGED = "unchanged"
#: the export holds the object but it cannot be imported (``note`` says why).
NOT_IMPORTABLE = "cannot import"
ACTIONS = (CREATE, SKIP, OVERWRITE, UNCHANGED, NOT_IMPORTABLE)

# Item kinds (what the "name" column names).
BLOCK_TYPE = "block type"
BLOCK_SCHEMA = "block schema"
BLOCK_DOCUMENT = "block document"
BLOCK_DOCUMENT_ANONYMOUS = "block document (anonymous)"
VARIABLE = "variable"
CONCURRENCY_LIMIT = "concurrency limit"
WORK_POOL = "work pool"
WORK_QUEUE = "work queue"
FLOW = "flow"
DEPLOYMENT = "deployment"
AUTOMATION = "automation"

#: the name prefix of the global concurrency limit that holds a deployment's own limit.
DEPLOYMENT_LIMIT_PREFIX = "deployment:"


class ConfigImportError(DRError):
    """The export cannot be imported at all (wrong format), or the arguments are invalid."""


# --- results -------------------------------------------------------------------------------


@dataclass
class PlanItem:
    """What importing one exported object would do to the target.

    ``diff`` names the fields that differ between the export and the target (never values:
    block data is summarized as ``data differs (keys: ...)``); it is filled for existing objects
    whatever the action, so a ``skip (exists)`` also shows what ``overwrite`` would change.
    ``note`` explains a ``cannot import`` or a caveat. ``source_id`` is the object's id in the
    export, ``target_id`` the matching object's id on the target (None when it is missing).
    """

    section: str
    kind: str
    name: str
    action: str
    diff: list[str] = field(default_factory=list)
    note: str | None = None
    source_id: str | None = None
    target_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``--json`` prints per object)."""
        return {"section": self.section, "kind": self.kind, "name": self.name,
                "action": self.action, "diff": list(self.diff), "note": self.note}


@dataclass
class ImportPlan:
    """Everything :func:`plan` decided; input of :func:`apply`."""

    api_url: str
    target_version: str
    backup_id: str | None
    only: tuple[str, ...]
    on_conflict: str
    items: list[PlanItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: export id -> target id of every exported object already on the target.
    id_map: dict[str, str] = field(default_factory=dict)
    #: work pool name -> id of its default queue on the target.
    default_queues: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Number of items per action (every action present, zero or not)."""
        out = dict.fromkeys(ACTIONS, 0)
        for item in self.items:
            out[item.action] = out.get(item.action, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore-config --dry-run --json``); holds no secret."""
        return {"backup_id": self.backup_id,
                "target": redact.url_without_password(self.api_url),
                "target_version": self.target_version, "only": list(self.only),
                "on_conflict": self.on_conflict, "counts": self.counts,
                "items": [i.to_dict() for i in self.items], "warnings": list(self.warnings)}


CREATED, OVERWRITTEN, SKIPPED, FAILED = "created", "overwritten", "skipped", "failed"
OUTCOMES = (CREATED, OVERWRITTEN, UNCHANGED, SKIPPED, FAILED)


@dataclass
class ItemResult:
    """What :func:`apply` did with one plan item; ``error`` is the first line of a failure."""

    section: str
    kind: str
    name: str
    action: str
    outcome: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"section": self.section, "kind": self.kind, "name": self.name,
                "action": self.action, "outcome": self.outcome, "error": self.error}


@dataclass
class ImportResult:
    """The outcome of :func:`apply`: one entry per plan item, in the order they were applied."""

    items: list[ItemResult] = field(default_factory=list)

    def _count(self, outcome: str) -> int:
        return sum(1 for i in self.items if i.outcome == outcome)

    @property
    def created(self) -> int:
        """Objects created on the target."""
        return self._count(CREATED)

    @property
    def overwritten(self) -> int:
        """Existing objects updated to the export's state."""
        return self._count(OVERWRITTEN)

    @property
    def unchanged(self) -> int:
        """Existing objects already equal to the export (``overwrite`` had nothing to do)."""
        return self._count(UNCHANGED)

    @property
    def skipped(self) -> int:
        """Existing objects left untouched (``--on-conflict skip``)."""
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        """Objects that could not be imported."""
        return self._count(FAILED)

    @property
    def failures(self) -> list[ItemResult]:
        """The failed items, each with the first line of its error."""
        return [i for i in self.items if i.outcome == FAILED]

    @property
    def ok(self) -> bool:
        """True when nothing failed (the CLI exits 3, partial, otherwise)."""
        return self.failed == 0

    @property
    def counts(self) -> dict[str, int]:
        """Number of items per outcome."""
        return {o: self._count(o) for o in OUTCOMES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore-config --json``)."""
        return {"ok": self.ok, "counts": self.counts,
                "failures": [{"section": f.section, "kind": f.kind, "name": f.name,
                              "error": f.error} for f in self.failures],
                "items": [i.to_dict() for i in self.items]}


def parse_only(value: str | Iterable[str] | None) -> set[str]:
    """The sections a ``--only`` value names (comma-separated or a list); all when empty.

    Raises ConfigImportError (exit code 2) naming unknown sections.
    """
    if value is None:
        return set(SECTIONS)
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = {p.strip() for p in parts if p and p.strip()}
    unknown = sorted(names - set(SECTIONS))
    if unknown:
        raise ConfigImportError(f"unknown section(s) {', '.join(unknown)}; choose from "
                                f"{', '.join(SECTIONS)}", exit_code=USAGE)
    return names or set(SECTIONS)
