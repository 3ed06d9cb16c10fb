"""``copy``: put complete backups into a second repository (the off-site copy of 3-2-1).

A backup is copied object by object, each streamed (bounded memory) and hashed on the way; an
object whose SHA-256 differs from its manifest is not kept and the backup is not copied. The
status record and the verification records come along (their signatures name the backup, not
the repository), and the manifest is written last and only if absent: until then the copy is
an incomplete backup in the target, never a complete one. A manifest the source's reader
trusts is re-bound to the target repository and signed by the copying job's key
(``trust.bind``); one accepted only by ``--allow-unsigned`` is copied byte for byte, so a copy
never turns an unauthenticated backup into a trusted one. Rerunning is safe: a backup whose
manifest is already in the target is skipped, and objects a killed run already put there are
read back and kept when they match. Failed and incomplete backups are never copied.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prefect_dr import catalog, chain, interrupt
from prefect_dr import layout as lay
from prefect_dr.catalog import BackupEntry
from prefect_dr.errors import (
    PARTIAL,
    DRError,
    NotFoundError,
    StorageError,
    UsageError,
    VerificationError,
)
from prefect_dr.kinds import Status
from prefect_dr.layout import Layout
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.pipeline import Progress
from prefect_dr.storage.base import Storage
from prefect_dr.trust import Trust, bind, repository_name
from prefect_dr.units import human_bytes

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
COPIED, SKIPPED, REFUSED = "copied", "skipped", "refused"


@dataclass(frozen=True)
class Repository:
    """One end of a copy: its storage and its layout."""

    storage: Storage
    layout: Layout

    @property
    def name(self) -> str:
        """How messages name it (the repository URL)."""
        return self.storage.url or self.storage.description


@dataclass
class CopiedBackup:
    """What happened to one backup."""

    backup_id: str
    result: str  # copied | skipped | refused
    kind: str | None = None
    bytes_copied: int = 0
    objects_copied: int = 0
    objects_kept: int = 0  # already in the target and matching (a resumed copy)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dict(vars(self))


@dataclass
class CopyResult:
    """The outcome of one ``copy`` run."""

    source: str
    target: str
    backups: list[CopiedBackup] = field(default_factory=list)

    @property
    def refused(self) -> list[CopiedBackup]:
        """The backups that could not be copied."""
        return [b for b in self.backups if b.result == REFUSED]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what ``--json`` prints)."""
        return {"ok": not self.refused, "source": self.source, "target": self.target,
                "backups": [b.to_dict() for b in self.backups]}


def select(source: Repository, backup_id: str | None, *, latest: bool, all_backups: bool,
           kind: str | None, verify_key: Any = None) -> list[BackupEntry]:
    """The backups ``copy`` acts on: one id, the newest complete one (``latest``, of ``kind``,
    full by default), or with ``all_backups`` every backup (of ``kind``) in key order.
    Raises UsageError for a wrong combination, NotFoundError as ``catalog.select_one``."""
    if all_backups:
        if backup_id or latest:
            raise UsageError("give a backup id, --latest or --all, only one of them")
        return [e for e in catalog.list_backups(source.storage, source.layout,
                                                verify_key=verify_key)
                if kind is None or e.kind == kind]
    entry = catalog.select_one(source.storage, source.layout, backup_id, latest=latest,
                               kind=kind, verify_key=verify_key)
    return with_chain(source, entry, verify_key)


def with_chain(source: Repository, entry: BackupEntry, verify_key: Any = None
               ) -> list[BackupEntry]:
    """``entry`` preceded, when it is an increment, by every link of its chain, base first
    (a chain is copied as a unit). Raises ChainError (exit 13) naming a broken link."""
    if entry.manifest is None or not entry.manifest.increment:
        return [entry]
    resolved = chain.resolve(source.storage, source.layout, entry.manifest, verify_key)
    return [catalog.resolve(source.storage, source.layout, bid, verify_key=verify_key)
            for bid in chain.chain_ids(resolved)[:-1]] + [entry]


def run(source: Repository, target: Repository, entries: Iterable[BackupEntry], *,
        trust: Trust | None = None, signer: Ed25519PrivateKey | None = None,
        progress: Progress | None = None) -> CopyResult:
    """Copy each complete backup of ``entries`` from ``source`` to ``target``: each manifest
    checked by ``trust`` (the source reader's; None only in tests) and re-signed by
    ``signer`` for the target.

    Failed, incomplete and corrupt backups are reported as refused (a single explicitly named
    one raises instead: see ``run_one``). Raises StorageError when a store fails (what was
    copied until then stays complete, the backup in progress incomplete) and Interrupted.
    """
    result = CopyResult(source=source.name, target=target.name)
    for entry in entries:
        try:
            result.backups.append(copy_backup(source, target, entry, trust=trust,
                                              signer=signer, progress=progress))
        except VerificationError as exc:
            log.error("backup %s not copied: %s", entry.backup_id, exc.message)
            result.backups.append(CopiedBackup(entry.backup_id, REFUSED, entry.kind,
                                               detail=exc.message))
    return result


def after_backup(source: Repository, target: Repository, backup_id: str, *,
                 trust: Trust | None = None,
                 signer: Ed25519PrivateKey | None = None) -> CopyResult:
    """Copy the backup just taken (``backup --copy-to``). A store failure of the copy is a
    refused copy in the result, not an error: the backup itself is complete. Raises
    Interrupted after a stop signal."""
    try:
        entry = catalog.resolve(source.storage, source.layout, backup_id, verify_key=trust)
        return run(source, target, with_chain(source, entry, trust), trust=trust,
                   signer=signer)
    except StorageError as exc:
        interrupt.raise_if_noted()
        return CopyResult(source.name, target.name, [CopiedBackup(
            backup_id, REFUSED, detail=exc.message)])


def copy_backup(source: Repository, target: Repository, entry: BackupEntry, *,
                trust: Trust | None = None, signer: Ed25519PrivateKey | None = None,
                progress: Progress | None = None) -> CopiedBackup:
    """Copy one backup. A failed or incomplete one is refused (not an error: ``--all`` meets
    them); raises VerificationError when the source does not match its manifest (a tampered
    or corrupt object, a wrong signature), StorageError when a store fails."""
    bid = entry.backup_id
    if entry.status != Status.COMPLETE or entry.manifest is None:
        if entry.status == Status.CORRUPT:
            raise VerificationError(f"backup {bid} is corrupt in {source.name}: {entry.error}")
        return CopiedBackup(bid, REFUSED, entry.kind,
                            detail=f"{entry.status}: only complete backups are copied")
    manifest = entry.manifest
    raw = source.storage.get_bytes(source.layout.artifact(bid, lay.MANIFEST))
    if trust is not None:
        trust.check_manifest(manifest)  # UntrustedError, ManifestError: not copied
        if trust.vouches_for(manifest):
            raw = bind(manifest, repository_name(target.storage.url
                                                 or target.storage.description),
                       signer).to_json()
    dst_manifest = target.layout.artifact(bid, lay.MANIFEST)
    if target.storage.stat(dst_manifest) is not None:
        return _already(target, dst_manifest, raw, bid, manifest)
    parent = manifest.parent  # an increment: never complete in the target without its chain
    if parent and target.storage.stat(target.layout.artifact(parent, lay.MANIFEST)) is None:
        return CopiedBackup(bid, REFUSED, entry.kind, detail=(
            f"its parent {parent} is not in {target.name} (copying the increment copies its "
            "chain: 'prefect-dr copy ID')"))
    done = CopiedBackup(bid, COPIED, manifest.kind)
    log.info("copying backup %s to %s", bid, target.name, extra={"backup_id": bid})
    for artifact in manifest.artifacts:
        _copy_artifact(source, target, bid, artifact, done, progress)
    # The records that are not the manifest: the status record, verification records.
    for info in source.storage.list(source.layout.backup_dir(bid)):
        rest = (source.layout.parse_backup_key(info.key) or ("", ""))[1]
        if rest == lay.STATUS or lay.is_verification(rest):
            data = source.storage.get_bytes(info.key)
            target.storage.put_bytes(target.layout.artifact(bid, lay.copied_name(rest)), data,
                                     "application/json")
            done.objects_copied += 1
    if not target.storage.put_if_absent(dst_manifest, raw, "application/json"):
        return _already(target, dst_manifest, raw, bid, manifest)  # a concurrent copy won
    done.objects_copied += 1
    log.info("backup %s copied to %s (%s)", bid, target.name, human_bytes(done.bytes_copied),
             extra={"backup_id": bid})
    return done


def _already(target: Repository, key: str, raw: bytes, bid: str,
             manifest: Manifest) -> CopiedBackup:
    if target.storage.get_bytes(key) != raw:
        raise VerificationError(f"{target.name} already holds a different manifest for backup "
                                f"{bid}; not overwritten")
    return CopiedBackup(bid, SKIPPED, manifest.kind, detail=f"already in {target.name}")


def _copy_artifact(source: Repository, target: Repository, bid: str, artifact: Artifact,
                   done: CopiedBackup, progress: Progress | None) -> None:
    name = artifact.location.rsplit("/", 1)[-1]
    dst = target.layout.artifact(bid, name)
    existing = target.storage.stat(dst)
    if (existing is not None and existing.size == artifact.size
            and _sha256_of(target.storage, dst) == artifact.sha256):
        done.objects_kept += 1  # put there by a run that was stopped: read back and matching
        return
    try:
        reader = source.storage.open_reader(artifact.location)
    except NotFoundError:
        raise VerificationError(f"backup {bid}: {artifact.location} is missing in "
                                f"{source.name}") from None
    digest = hashlib.sha256()
    size = 0
    with reader, target.storage.open_writer(dst) as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
            if progress is not None:
                progress.add("copied", len(chunk))
        if size != artifact.size or digest.hexdigest() != artifact.sha256:
            raise VerificationError(f"backup {bid}: {artifact.location} in {source.name} does "
                                    "not match its manifest (sha256/size); not copied")
        writer.close()
    done.bytes_copied += size
    done.objects_copied += 1


def _sha256_of(storage: Storage, key: str) -> str:
    digest = hashlib.sha256()
    with storage.open_reader(key) as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def after_backup_failed(backup_id: str, results: list[CopyResult]) -> DRError | None:
    """The error a backup with ``--copy-to`` ends with when a copy was refused: exit 3
    (partial: the backup itself is complete); None when every copy went well."""
    bad = [r for r in results if r.refused]
    if not bad:
        return None
    return DRError(f"backup {backup_id} is complete, but its copy to {bad[0].target} failed: "
                   f"{bad[0].refused[0].detail}", exit_code=PARTIAL)


def failed(result: CopyResult) -> DRError | None:
    """The error a run with refused backups ends with: exit 13 when the only backup asked for
    did not match its manifest, 3 (partial) when some of several were refused; None when all
    went well. Failed and incomplete backups met by ``--all`` are not failures."""
    bad = [b for b in result.refused if not b.detail.startswith(
        (Status.FAILED.value, Status.INCOMPLETE.value))]
    if not bad:
        return None
    if len(result.backups) == 1:
        return VerificationError(bad[0].detail)
    return DRError(f"{len(bad)} of {len(result.backups)} backups not copied to "
                   f"{result.target}: first: {bad[0].detail}", exit_code=PARTIAL)
