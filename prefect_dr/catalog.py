"""What is in the repository: backups with their status, manifests, verification records.

Status rules (docs/format.md): a backup is *complete* only when its manifest is present and
valid; *failed* when its status record says so; otherwise *incomplete* (still running, or
killed before it could write anything final). Nothing else makes a backup look complete.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prefect_dr import layout as lay
from prefect_dr import signing
from prefect_dr.errors import NotFoundError, UsageError, VerificationError
from prefect_dr.kinds import DEFAULT_LATEST_KIND, Result, Standing, Status, standing
from prefect_dr.layout import Layout
from prefect_dr.manifest import Manifest, ManifestError, parse
from prefect_dr.storage.base import ObjectInfo, Storage
from prefect_dr.trust import Trust

#: What ``verify_key`` parameters take: a reader's Trust, a keyring or one public key; None
#: (tests, in-memory use) takes records as they claim.
VerifyKey = Any

log = logging.getLogger(__name__)

STATUS_FORMAT = "prefect-dr-status"
COMPLETE, FAILED, INCOMPLETE, CORRUPT = (Status.COMPLETE, Status.FAILED, Status.INCOMPLETE,
                                       Status.CORRUPT)


@dataclass
class BackupEntry:
    """One backup as listed."""

    backup_id: str
    status: str
    kind: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    size: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    manifest: Manifest | None = None
    verification: dict[str, Any] | None = None  # the newest made in this repository
    #: the newest made in the repository this backup was copied from (never counts here: I6)
    source_verification: dict[str, Any] | None = None
    objects: list[ObjectInfo] = field(default_factory=list)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish, when both are known."""
        if not (self.started_at and self.finished_at):
            return None
        return (dt.datetime.fromisoformat(self.finished_at)
                - dt.datetime.fromisoformat(self.started_at)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no object list, no manifest body). ``backup_id`` as in every
        command; ``id`` is its deprecated name, kept for one release (docs/json.md)."""
        return {
            "backup_id": self.backup_id, "id": self.backup_id, "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "duration_s": self.duration_s, "size": self.size, "labels": self.labels,
            "error": self.error,
            "verification": _summary(self.verification),
            "source_verification": _summary(self.source_verification),
            "parent": self.manifest.parent if self.manifest else None,
        }


def _summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return ({k: record.get(k) for k in ("result", "finished_at", "failed_check", "repository")}
            if record else None)


def status_record(backup_id: str, kind: str, status: str, *, started_at: str, host: str,
                  pid: int, run_id: str, labels: dict[str, str], error: str | None = None,
                  finished_at: str | None = None,
                  signer: Ed25519PrivateKey | None = None) -> bytes:
    """The bytes of a status record (running or failed) of a backup, signed by ``signer``."""
    record: dict[str, Any] = {
        "format": STATUS_FORMAT, "format_version": 1, "backup_id": backup_id, "kind": kind,
        "status": status, "started_at": started_at, "finished_at": finished_at, "host": host,
        "pid": pid, "run_id": run_id, "labels": labels, "error": error}
    if signer is not None:
        record = signing.sign_record(record, signer)
    return (json.dumps(record, indent=2) + "\n").encode()


def _json(storage: Storage, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.get_bytes(key))
    except (NotFoundError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def list_backups(storage: Storage, layout: Layout, *, with_verification: bool = True,
                 verify_key: VerifyKey = None) -> list[BackupEntry]:
    """Every backup in the repository, oldest first. Raises StorageError if listing fails.

    With ``verify_key``, a verification record without a valid signature by it counts as
    ``unsigned``, not as its claimed result.
    """
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in storage.list(layout.backups_root):
        parsed = layout.parse_backup_key(info.key)
        if parsed:
            grouped[parsed[0]].append(info)
    entries = [_entry(storage, layout, bid, objs, with_verification, verify_key)
               for bid, objs in sorted(grouped.items())]
    return entries


def _belongs(manifest: Manifest, layout: Layout, backup_id: str) -> str | None:
    """Why ``manifest`` is not the manifest of ``backup_id`` (None when it is)."""
    if manifest.backup_id != backup_id:
        return f"manifest of {backup_id} describes backup {manifest.backup_id}"
    for artifact in manifest.artifacts:
        if layout.locate(backup_id, artifact.key) is None:
            return f"manifest of {backup_id} points outside its backup: {artifact.key}"
    return None


def _located(manifest: Manifest, layout: Layout) -> Manifest:
    """``manifest`` with each artifact's ``location`` in this repository (a copy taken under
    another prefix names the original keys; the manifest and its signature stay as written)."""
    moved = []
    for artifact in manifest.artifacts:
        here = layout.locate(manifest.backup_id, artifact.key) or artifact.key
        moved.append(replace(artifact, stored_at=here) if here != artifact.key else artifact)
    return replace(manifest, artifacts=tuple(moved))


def _checked_record(record: dict[str, Any] | None, backup_id: str,
                    verify_key: VerifyKey) -> dict[str, Any] | None:
    if record is None:
        return None
    if record.get("backup_id") != backup_id:
        return {**record, "claimed_result": record.get("result"), "result": Result.FORGED.value}
    if verify_key is not None and not _trusted(record, verify_key):
        return {**record, "claimed_result": record.get("result"), "result": Result.UNSIGNED.value}
    return record


def _trusted(record: dict[str, Any], verify_key: VerifyKey) -> bool:
    if isinstance(verify_key, Trust):
        return verify_key.check_record(record)
    return signing.check_record(record, verify_key)


def _entry(storage: Storage, layout: Layout, backup_id: str, objects: list[ObjectInfo],
           with_verification: bool, verify_key: VerifyKey = None
           ) -> BackupEntry:
    names = {layout.parse_backup_key(o.key)[1]: o for o in objects}  # type: ignore[index]
    entry = BackupEntry(backup_id, INCOMPLETE, size=sum(o.size for o in objects),
                        objects=objects)
    status = _json(storage, layout.artifact(backup_id, lay.STATUS)) if lay.STATUS in names \
        else None
    if status and status.get("backup_id") != backup_id:
        status = None  # a status record moved from another backup says nothing of this one
    if status and verify_key is not None and not _trusted(status, verify_key):
        entry.error = "its status record is not signed by a trusted key (ignored)"
        status = None
    if status:
        entry.kind, entry.started_at = status.get("kind"), status.get("started_at")
        entry.finished_at, entry.labels = status.get("finished_at"), status.get("labels") or {}
        if status.get("status") == FAILED:
            entry.status, entry.error = FAILED, status.get("error")
    if lay.MANIFEST in names:
        try:
            manifest = parse(storage.get_bytes(layout.artifact(backup_id, lay.MANIFEST)),
                             f"manifest of {backup_id}")
        except (ManifestError, NotFoundError) as exc:
            entry.status, entry.error = CORRUPT, exc.message
        else:
            wrong = _belongs(manifest, layout, backup_id)
            if wrong:
                entry.status, entry.error = CORRUPT, wrong
                return entry
            entry.status, entry.manifest = COMPLETE, _located(manifest, layout)
            entry.kind, entry.labels = manifest.kind, manifest.labels
            entry.started_at, entry.finished_at = manifest.started_at, manifest.finished_at
            entry.error = None
    if with_verification:
        records = sorted(k for k in names if lay.is_verification(k))
        here = [k for k in records if not lay.at_source(k)]
        there = [k for k in records if lay.at_source(k)]
        if here:
            entry.verification = _checked_record(
                _json(storage, layout.artifact(backup_id, here[-1])), backup_id, verify_key)
        if there:
            entry.source_verification = _checked_record(
                _json(storage, layout.artifact(backup_id, there[-1])), backup_id, verify_key)
    return entry


def last_verification(storage: Storage, layout: Layout, *, kind: str | None = None,
                      verify_key: VerifyKey = None) -> dict[str, Any] | None:
    """The newest verification record (by finish time) of any backup of ``kind``, or None."""
    records = [e.verification for e in list_backups(storage, layout, verify_key=verify_key)
               if e.verification and (kind is None or e.kind == kind)]
    return max(records, key=lambda r: str(r.get("finished_at") or ""), default=None)


def whole(entries: list[BackupEntry], kind: str | None = None) -> list[BackupEntry]:
    """The complete, *whole* backups of ``kind`` (any kind when None) among ``entries``, in
    their order: partial and safety backups never stand in for one (kinds.Standing)."""
    return [e for e in entries if e.status == COMPLETE and (kind is None or e.kind == kind)
            and standing(e.labels) == Standing.WHOLE]


def resolve(storage: Storage, layout: Layout, ref: str | None, *, latest: bool = False,
            kind: str | None = None, verify_key: VerifyKey = None
            ) -> BackupEntry:
    """Find one backup by id, or with ``latest`` the newest complete *whole* backup of
    ``kind`` (any kind when None).

    Raises NotFoundError when there is no such backup, or it is not complete.
    """
    if latest:
        entries = list_backups(storage, layout, verify_key=verify_key)
        found = whole(entries, kind)
        if not found:
            what = f"complete {kind} backup" if kind else "complete backup"
            others = [e.backup_id for e in entries if e.status == COMPLETE
                      and (kind is None or e.kind == kind)]
            hint = (f" (only partial or safety backups, which --latest never picks: "
                    f"{', '.join(others[-3:])}; name one to use it)" if others else "")
            raise NotFoundError(f"no {what} in {storage.description}/{layout.root}{hint}")
        found = _trusted_first(found, verify_key)  # a forgery cannot block --latest
        newest = found[-1]
        passed = [e.backup_id for e in entries[entries.index(newest) + 1:]
                  if e.status == COMPLETE and (kind is None or e.kind == kind)]
        if passed:
            log.warning("--latest passes over %s (%s: not whole); name it to use it anyway",
                        ", ".join(passed), "partial or safety backup" if len(passed) == 1
                        else "partial or safety backups")
        return newest
    if ref is None:
        raise UsageError("give a backup id or --latest")
    ref = expand(storage, layout, ref)
    objects = list(storage.list(layout.backup_dir(ref)))
    if not objects:
        raise NotFoundError(f"no backup {ref} in {storage.description}/{layout.root}")
    return _entry(storage, layout, ref, objects, True, verify_key)


def _trusted_first(complete: list[BackupEntry], verify_key: VerifyKey) -> list[BackupEntry]:
    """With a reader's Trust, the complete backups it accepts (``--latest`` passes over a
    forged or foreign newest backup, with a warning, instead of being stopped by it); all of
    them when it accepts none (the newest is then refused by name)."""
    if not isinstance(verify_key, Trust) or verify_key.allow_unsigned:
        return complete
    trusted = []
    for entry in complete:
        try:
            verify_key.check_manifest(entry.manifest)  # type: ignore[arg-type]
        except VerificationError:
            continue
        trusted.append(entry)
    if trusted and len(trusted) < len(complete):
        skipped = [e.backup_id for e in complete if e not in trusted]
        log.warning("--latest passes over %s: not signed by a verify key for this repository",
                    ", ".join(skipped[-5:]))
    return trusted or complete


#: The fewest characters of an id's start that name a backup (its date: ``20261126``).
MIN_PREFIX = 8
_PREFIX_RE = re.compile(r"^\d{8}(T(\d{0,5}|\d{6}(Z(-[0-9a-f]{0,5})?)?)?)?$")
_SUFFIX_RE = re.compile(r"^-?[0-9a-f]{6}$")
#: How an id may be shortened, for error messages.
SHORT_FORMS = ("a whole id (20261126T153000Z-a1b2c3), its first 8 or more characters "
               "(20261126T15) or its random suffix (a1b2c3)")


def expand(storage: Storage, layout: Layout, ref: str) -> str:
    """The whole backup id ``ref`` names: a whole id (returned as is), any unique start of an
    id of at least :data:`MIN_PREFIX` characters, or an id's 6-character random suffix (as
    restic takes a unique prefix of a short id).

    Raises NotFoundError when ``ref`` names no backup or is none of these forms, UsageError
    (exit 2) listing the candidates when it names more than one.
    """
    if lay.BACKUP_ID_RE.match(ref):
        return ref
    where = f"{storage.description}/{layout.root}"
    if _PREFIX_RE.match(ref) and len(ref) >= MIN_PREFIX:
        ids = _ids(storage, layout.backups_root + ref, layout)
        matches, how = [i for i in ids if i.startswith(ref)], "starting with"
    elif _SUFFIX_RE.match(ref):
        suffix = ref.lstrip("-")
        matches = [i for i in _ids(storage, layout.backups_root, layout)
                   if i.endswith("-" + suffix)]
        how = "ending in"
    else:
        raise NotFoundError(f"{ref!r} is not a backup id: give {SHORT_FORMS}")
    if not matches:
        raise NotFoundError(f"no backup id {how} {ref} in {where} ('prefect-dr list' shows "
                            "them)")
    if len(matches) > 1:
        raise UsageError(f"{ref} names {len(matches)} backups: {', '.join(matches)}; give "
                         "more characters")
    return matches[0]


def _ids(storage: Storage, prefix: str, layout: Layout) -> list[str]:
    """The backup ids with an object under ``prefix``, sorted (oldest first)."""
    found = set()
    for info in storage.list(prefix):
        parsed = layout.parse_backup_key(info.key)
        if parsed:
            found.add(parsed[0])
    return sorted(found)


def select_one(storage: Storage, layout: Layout, ref: str | None, *, latest: bool,
               kind: str | None, default_kind: str | None = DEFAULT_LATEST_KIND,
               verify_key: VerifyKey = None) -> BackupEntry:
    """The backup a command acts on: ``ref``, or with ``latest`` the newest complete backup of
    ``kind`` (``default_kind`` when no kind is given: ``--latest`` means the newest *full*
    backup unless the command says otherwise).

    Raises UsageError when both or neither of ``ref`` and ``latest`` are given, or ``ref`` is
    not of ``kind``; NotFoundError as ``resolve``.
    """
    if ref == "latest":  # the word means what the flag means, default kind included
        ref, latest = None, True
    if ref and latest:
        raise UsageError(f"give a backup id or --latest, not both ({ref} and --latest)")
    if not ref and not latest:
        raise UsageError("give a backup id or --latest")
    if latest:
        return resolve(storage, layout, None, latest=True, kind=kind or default_kind,
                       verify_key=verify_key)
    entry = resolve(storage, layout, ref, verify_key=verify_key)
    if kind and entry.kind and entry.kind != kind:
        raise UsageError(f"backup {entry.backup_id} is {entry.kind}, not {kind}")
    return entry


def require_complete(entry: BackupEntry, *, trust: Trust | None) -> Manifest:
    """The manifest of a complete backup, trusted by ``trust`` (every reader passes its own;
    None only where the caller checks the signature itself). Raises VerificationError for a
    corrupt one, UntrustedError (exit 13) for one ``trust`` refuses, NotFoundError naming the
    status of a failed or incomplete one."""
    if entry.status == CORRUPT:
        raise VerificationError(f"backup {entry.backup_id} is corrupt: {entry.error}")
    if entry.status != COMPLETE or entry.manifest is None:
        detail = f": {entry.error}" if entry.error else ""
        raise NotFoundError(f"backup {entry.backup_id} is {entry.status}{detail}")
    if trust is not None:
        trust.check_manifest(entry.manifest)
    return entry.manifest

