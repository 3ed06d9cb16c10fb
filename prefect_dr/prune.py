"""`prune`: apply the retention policies: list, plan, check Object Lock, delete in a safe order.

Everything is decided before anything is deleted: the listing (backups and open multipart
uploads), every plan, and the Object Lock state of every object to delete. An error in any of
these raises before the first delete.

Delete order of one backup (docs/operations.md, "Retention"):

1. ``manifest.json`` first. A backup is complete exactly when its manifest parses, so from this
   moment on ``list`` shows it as incomplete (or failed), never as complete.
2. The artifacts (dump, configuration export, escrowed block key, anything else).
3. The verification records.
4. ``status.json`` last, so that whatever an interruption leaves behind still carries its kind
   and start time and is removed by the next prune as an old incomplete backup.

An error or outage part-way therefore never leaves a backup that ``list`` reports complete but
whose artifacts are gone; at worst it leaves an incomplete leftover.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from prefect_dr import catalog, chain, pins, retention
from prefect_dr import layout as lay
from prefect_dr.catalog import BackupEntry
from prefect_dr.errors import DRError, StorageError
from prefect_dr.kinds import Kind, Standing, parse, standing
from prefect_dr.layout import Layout
from prefect_dr.retention import Candidate, Decision, Plan, Policy, PolicyError
from prefect_dr.storage.base import IncompleteUpload, ObjectInfo, ObjectRetention, Storage
from prefect_dr.units import human_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removal:
    """One backup the plan removes: its objects in delete order, and how many are gone."""

    decision: Decision
    objects: tuple[ObjectInfo, ...]
    deleted: int = 0  # objects deleted so far (0 in a dry run)

    @property
    def size(self) -> int:
        """Bytes of all its objects."""
        return sum(o.size for o in self.objects)

    @property
    def freed(self) -> int:
        """Bytes of the objects deleted so far."""
        return sum(o.size for o in self.objects[:self.deleted])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.decision.to_dict(), "objects": len(self.objects),
                "deleted": self.deleted, "bytes": self.size}


@dataclass(frozen=True)
class LockedBackup:
    """A backup the plan removes but Object Lock protects; skipped, left whole."""

    decision: Decision
    key: str  # the first locked object found
    retention: ObjectRetention

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.decision.to_dict(), "locked_key": self.key,
                "lock": self.retention.describe()}


@dataclass
class PruneResult:
    """What a prune decided and did (in a dry run: would do)."""

    dry_run: bool
    now: dt.datetime
    plans: dict[str, Plan]
    removed: list[Removal] = field(default_factory=list)
    locked: list[LockedBackup] = field(default_factory=list)
    uploads: list[IncompleteUpload] = field(default_factory=list)  # aborted / to abort
    finished: bool = False  # False when an error stopped the prune part-way

    @property
    def counts(self) -> dict[str, int]:
        """Numbers for metrics and the summary line (dry run: what would be done)."""
        done = [r for r in self.removed if self.dry_run or r.deleted == len(r.objects)]
        return {
            "kept": sum(len(p.keep) for p in self.plans.values()),
            "removed": len(done),
            "skipped_locked": len(self.locked),
            "uploads_aborted": len(self.uploads),
            "objects_deleted": sum(len(r.objects) if self.dry_run else r.deleted
                                   for r in self.removed),
            "bytes_freed": sum(r.size if self.dry_run else r.freed for r in self.removed),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per backup, oldest first (as `list`), for the table: kind, id, status,
        started_at, verified, labels, size, action (keep | remove | locked) and reasons."""
        locked = {x.decision.id: x for x in self.locked}
        out = []
        for kind, plan in self.plans.items():
            for decision in plan.decisions:
                row = {**decision.to_dict(), "policy_kind": kind}
                if decision.id in locked:
                    row["action"] = "locked"
                    row["reasons"] = [*decision.reasons,
                                      f"Object Lock: {locked[decision.id].retention.describe()}"]
                out.append(row)
        return sorted(out, key=lambda r: (r["started_at"], r["id"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for --json."""
        return {
            "dry_run": self.dry_run, "finished": self.finished, "now": self.now.isoformat(),
            "counts": self.counts,
            "policies": {k: p.policy.to_text() for k, p in self.plans.items()},
            "backups": self.rows(),
            "removed": [r.to_dict() for r in self.removed],
            "locked": [x.to_dict() for x in self.locked],
            "uploads_aborted": [{"key": u.key, "upload_id": u.upload_id,
                                 "initiated": u.initiated.isoformat()} for u in self.uploads],
        }


class PruneError(StorageError):
    """The store failed part-way through deleting; ``result`` tells what was done."""

    def __init__(self, message: str, result: PruneResult) -> None:
        super().__init__(message)
        self.result = result


def delete_order(layout: Layout, entry: BackupEntry) -> list[ObjectInfo]:
    """The objects of a backup in the order they are deleted: manifest, artifacts,
    verification records, status record (module docstring: why)."""
    def rank(info: ObjectInfo) -> tuple[int, str]:
        parsed = layout.parse_backup_key(info.key)
        name = parsed[1] if parsed else info.key
        if name == lay.MANIFEST:
            return 0, name
        if name == lay.STATUS:
            return 3, name
        if lay.is_verification(name):
            return 2, name
        return 1, name
    return sorted(entry.objects, key=rank)


def _chains(entries: list[BackupEntry]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Each complete increment's ancestors (parent first, as far as listed) and, when every
    link up to a complete full backup is listed complete, its base."""
    ancestors = chain.dependencies(entries)
    status = {e.backup_id: (e.status, e.kind) for e in entries}
    bases = {}
    for bid, up in ancestors.items():
        links_ok = all(status.get(u, ("", ""))[0] == retention.COMPLETE for u in up)
        if up and links_ok and status[up[-1]][1] == Kind.FULL:
            bases[bid] = up[-1]
    return ancestors, bases


def _check_chains(plan: Plan, ancestors: Mapping[str, list[str]]) -> None:
    """Refuse a plan that keeps an increment and removes a link it needs (a planner bug)."""
    removed = {d.id for d in plan.remove}
    for d in plan.keep:
        broken = removed.intersection(ancestors.get(d.id, []))
        if broken:
            raise DRError(f"internal error: the retention plan keeps {d.id} and removes "
                          f"{broken.pop()} of its chain; nothing was deleted")


def _check(plan: Plan, needed: Mapping[str, str]) -> None:
    """Refuse a plan that breaks a safety rule (a bug in the planner, never expected)."""
    complete = [d.candidate for d in plan.decisions if d.candidate.status == retention.COMPLETE
                and standing(d.candidate.labels) == Standing.WHOLE
                and d.candidate.kind != Kind.INCREMENTAL]  # chains: _check_chains
    protected = set(needed)
    if complete:
        protected.add(complete[0].id)
        protected |= {c.id for c in [c for c in complete if c.verified is True]
                      [:plan.policy.min_verified]}
    for d in plan.remove:
        c = d.candidate
        young = (c.status != retention.COMPLETE
                 and plan.now - (c.last_activity or c.started_at) < plan.policy.grace)
        if c.id in protected or c.status == retention.CORRUPT or young:
            raise DRError(f"internal error: the retention plan would remove {c.id} "
                          f"({c.status}); nothing was deleted")


def _lock_of(storage: Storage, objects: tuple[ObjectInfo, ...], now: dt.datetime
             ) -> tuple[str, ObjectRetention] | None:
    for info in objects:
        state = storage.retention(info.key)
        if state is not None and state.blocks_delete(now):
            return info.key, state
    return None


def run(storage: Storage, layout: Layout, policies: Mapping[str, Policy], *,
        now: dt.datetime | None = None, dry_run: bool = False,
        verify_key: Ed25519PublicKey | None = None) -> PruneResult:
    """Prune the backups of each kind in ``policies`` ({"full": Policy, ...}) by its policy.

    Lists, plans and reads the Object Lock state of every object to remove first (a backup
    with a locked object is skipped whole); then deletes, oldest backup first, each in
    ``delete_order``; then aborts multipart uploads left open longer than the grace period.
    Leftovers of unknown kind (no status record) are planned with the kind whose grace is
    longest. ``dry_run`` reads everything (Object Lock included) but deletes and aborts
    nothing, so it reports exactly what a real run would do. A pinned backup (prefect_dr.pins:
    an unfinished backfill needs it) is kept whatever the policy. With ``verify_key`` only
    verification records signed by it count as verified (for ``min-verified``).

    Raises PolicyError for an unknown kind or an empty ``policies``; StorageError when listing
    or reading Object Lock states fails (nothing deleted); PruneError (a StorageError carrying
    the partial result) when the store fails part-way through deleting.
    """
    if not policies:
        raise PolicyError("no retention policy given")
    for name in policies:
        try:
            parse(name)
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)

    entries = catalog.list_backups(storage, layout, verify_key=verify_key)
    uploads = storage.list_incomplete_uploads(layout.backups_root)
    needed = pins.needed(storage, layout)  # what operations in progress still need (I1)
    # A chain is a unit (I9): increments go with their base, by the full policy; a needed or
    # labelled increment keeps every link it needs.
    ancestors, bases = _chains(entries)
    increments = [Candidate.from_entry(e) for e in entries
                  if e.kind == Kind.INCREMENTAL and e.status == retention.COMPLETE]
    full_labels = policies[Kind.FULL].keep_labels if Kind.FULL in policies else ()
    needed = retention.chain_needs(ancestors, needed, [
        c.id for c in increments if any(retention.has_label(c.labels, r) for r in full_labels)])

    # a passed verification of an increment proves its chain: it counts for its base
    # (min-verified keeps the chain)
    proven = {bases[c.id] for c in increments if c.verified is True and c.id in bases}

    orphan_kind = max(policies, key=lambda k: policies[k].grace)
    plans: dict[str, Plan] = {}
    for kind, policy in policies.items():
        mine = [_proven(Candidate.from_entry(e), proven) for e in entries
                if e.kind == kind or (kind == orphan_kind and e.kind not in retention.KINDS
                                      and e.kind != Kind.INCREMENTAL)
                or (kind == Kind.FULL and e.kind == Kind.INCREMENTAL
                    and e.status != retention.COMPLETE)]
        plans[kind] = retention.plan(mine, policy, now, needed)
        if kind == Kind.FULL:
            plans[kind] = retention.with_chains(plans[kind], increments, ancestors, bases,
                                                needed)
            _check_chains(plans[kind], ancestors)
        _check(plans[kind], needed)

    by_id = {e.backup_id: e for e in entries}
    result = PruneResult(dry_run=dry_run, now=now, plans=plans)
    removals = []
    # increments first, newest first: an interrupted prune never leaves a link missing from
    # a chain it has not finished removing
    for decision in sorted((d for p in plans.values() for d in p.remove),
                           key=lambda d: (d.candidate.kind != Kind.INCREMENTAL,
                                          _order(d.candidate))):
        objects = tuple(delete_order(layout, by_id[decision.id]))
        lock = _lock_of(storage, objects, now)  # read before any delete: errors delete nothing
        if lock is None:
            removals.append((decision, objects))
        else:
            log.warning("backup %s is under Object Lock (%s: %s); skipped", decision.id,
                        lock[0], lock[1].describe(), extra={"backup_id": decision.id})
            result.locked.append(LockedBackup(decision, *lock))
    try:
        for decision, objects in removals:
            deleted = 0
            try:
                if not dry_run:
                    for info in objects:
                        storage.delete(info.key)
                        deleted += 1
            finally:
                result.removed.append(Removal(decision, objects, deleted))
            if not dry_run:
                log.info("removed backup %s (%s, %d objects, %s): %s", decision.id,
                         decision.candidate.status, len(objects),
                         human_bytes(result.removed[-1].size),
                         "; ".join(decision.reasons), extra={"backup_id": decision.id})
        for upload in _stale_uploads(layout, uploads, plans, by_id, policies, orphan_kind, now):
            if not dry_run:
                storage.abort_incomplete_upload(upload)
                log.info("aborted multipart upload of %s started %s", upload.key,
                         upload.initiated.isoformat())
            result.uploads.append(upload)
    except StorageError as exc:
        done = result.counts
        raise PruneError(f"prune stopped part-way: {exc.message} ({done['removed']} backups "
                         f"removed before; no backup listed as complete lost an artifact; run "
                         "prune again)", result) from exc
    result.finished = True
    return result


def _proven(cand: Candidate, proven: set[str]) -> Candidate:
    """``cand``, verified when a verification of an increment of its chain passed."""
    return replace(cand, verified=True) if cand.id in proven else cand


def _order(cand: Candidate) -> float:
    """Increments newest first, every other backup oldest first."""
    stamp = cand.started_at.timestamp()
    return -stamp if cand.kind == Kind.INCREMENTAL else stamp


def _stale_uploads(layout: Layout, uploads: list[IncompleteUpload], plans: dict[str, Plan],
                   by_id: dict[str, BackupEntry], policies: Mapping[str, Policy],
                   orphan_kind: str, now: dt.datetime) -> list[IncompleteUpload]:
    """Open uploads to abort: of a managed kind (or of no known backup), initiated longer ago
    than that kind's grace, and not of a backup kept as possibly still running."""
    young = {d.id for p in plans.values() for d in p.keep
             if d.candidate.status in (retention.FAILED, retention.INCOMPLETE)}
    out = []
    for upload in uploads:
        parsed = layout.parse_backup_key(upload.key)
        entry = by_id.get(parsed[0]) if parsed else None
        kind = entry.kind if entry and entry.kind in retention.KINDS else orphan_kind
        if entry and entry.kind == Kind.INCREMENTAL:
            kind = Kind.FULL
        if kind not in policies or (parsed and parsed[0] in young):
            continue
        initiated = upload.initiated.astimezone(dt.UTC) if upload.initiated.tzinfo \
            else upload.initiated.replace(tzinfo=dt.UTC)
        if now - initiated >= policies[kind].grace:
            out.append(upload)
    return out
