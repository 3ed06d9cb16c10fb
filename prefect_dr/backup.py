"""`backup`: one consistent, encrypted, streamed backup of the Prefect database to storage.

Order of events (docs/format.md, "Writing a backup"):
1. take the lock (advisory lock + lock object); write a *running* status record;
2. open a REPEATABLE READ transaction and export its snapshot; pg_dump uses that snapshot, and
   the block-key check, row counts and configuration export read inside the same transaction,
   so all of them describe one moment;
3. stream pg_dump -> zstd -> age -> multipart upload; check pg_dump's exit status before the
   upload is completed (a failed dump is aborted, never completed);
4. upload the configuration export (and the escrowed block key when it is not in the dump);
5. write the manifest **last**. Any failure before that leaves a *failed* status record, no
   manifest, and no open multipart upload; a SIGKILL leaves an *incomplete* backup.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import psycopg

from prefect_dr import (
    __version__,
    backfill_state,
    chain,
    crypto,
    export,
    interrupt,
    layout,
    pipeline,
    prefect_api,
    reconcile,
    runs_split,
    signing,
    table_copy,
    trust,
)
from prefect_dr import log as runlog
from prefect_dr import prefect_schema as ps
from prefect_dr.catalog import FAILED, status_record
from prefect_dr.config import Settings
from prefect_dr.errors import DatabaseError, DRError, LockHeldError
from prefect_dr.kinds import BACKFILL_UNFINISHED, LABEL_BACKFILL, Kind, holds_history, parse
from prefect_dr.layout import Layout, new_id
from prefect_dr.lock import BackupLock
from prefect_dr.manifest import (
    ARTIFACT_BLOCK_KEY,
    ARTIFACT_CONFIG,
    ARTIFACT_DUMP,
    DONE,
    FORMAT_VERSION,
    INCREMENT_FORMAT_VERSION,
    PARTS,
    RUNS_FORMAT_VERSION,
    Artifact,
    Manifest,
    history_artifact,
    runs_artifact,
)
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import dump, privileges, tools
from prefect_dr.storage.base import Storage
from prefect_dr.units import human_bytes

log = logging.getLogger(__name__)
#: The settings a backup cannot start without, all reported at once when missing.
NEEDS = ("repository", "database_url", "recipients")
EXACT_COUNT_MAX_BYTES = 2 * 1024**3  # larger tables get the planner's estimate, marked so


class UndecryptableBlocksError(DRError):
    """Block documents exist that no available key decrypts."""


@dataclass(frozen=True)
class Request:
    """What the operator asked for."""

    kind: str = Kind.FULL
    labels: dict[str, str] = field(default_factory=dict)
    allow_undecryptable_blocks: bool = False
    lock_wait: float = 0.0  # seconds to wait for a held lock before exit 11


#: How often a backup waiting for the lock (``--lock-wait``) tries again.
LOCK_POLL_SECONDS = 5.0


def take_lock(lock: BackupLock, wait: float, *, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """Acquire ``lock``, trying again every :data:`LOCK_POLL_SECONDS` for up to ``wait``
    seconds while another run holds it (a Helm hook waiting out a scheduled backup). Raises
    LockHeldError (exit 11) once the wait is over, Interrupted on a stop signal."""
    deadline = clock() + max(wait, 0.0)
    while True:
        try:
            lock.acquire()
            return
        except LockHeldError as exc:
            lock.release()
            interrupt.raise_if_noted()  # a stop while trying: no more waiting
            left = deadline - clock()
            if left <= 0:
                if wait > 0:
                    raise LockHeldError(f"{exc.message} (waited {wait:.0f}s, --lock-wait)"
                                        ) from None
                raise
            log.info("backup lock held; waiting up to %.0fs more: %s", left, exc.message)
            sleep(min(LOCK_POLL_SECONDS, left))
        except BaseException:
            lock.release()
            raise


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _database_fingerprint(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT system_identifier::text, current_database() "
                       "FROM pg_control_system()").fetchone()
    return hashlib.sha256(f"{row[0]}/{row[1]}".encode()).hexdigest()[:16] if row else "unknown"


def _row_counts(conn: psycopg.Connection, tables: list[str],
                dumped: set[str]) -> dict[str, dict[str, object]]:
    counts: dict[str, dict[str, object]] = {}
    for table in tables:
        if table not in dumped:
            counts[table] = {"rows": 0, "exact": True, "data": False}
            continue
        size_row = conn.execute("SELECT pg_relation_size(%s), reltuples::bigint FROM pg_class "
                                "WHERE oid = %s::regclass",
                                (f"public.{table}", f"public.{table}")).fetchone()
        if size_row and size_row[0] > EXACT_COUNT_MAX_BYTES:
            counts[table] = {"rows": max(int(size_row[1]), 0), "exact": False}
        else:
            counts[table] = {"rows": pgc.count_rows(conn, table), "exact": True}
    return counts


def _block_key(conn: psycopg.Connection, env: Mapping[str, str],
               allow_undecryptable: bool) -> tuple[ps.BlockKey | None, dict[str, object]]:
    """The key that decrypts the block documents and the manifest's block_key record.
    Raises UndecryptableBlocksError unless ``allow_undecryptable``."""
    verdict = ps.judge_block_key(conn, env)
    problem = verdict.problem()
    if problem and not allow_undecryptable:
        raise UndecryptableBlocksError(problem)
    key = verdict.key
    record: dict[str, object] = {
        "source": key.source if key else None,
        "escrowed": bool(key and not key.in_database),
        "blocks": verdict.blocks, "undecryptable": len(verdict.undecryptable),
    }
    return key, record


def _prefect_version(settings: Settings) -> str | None:
    if not settings.prefect_api_url:
        return None
    try:
        return prefect_api.server_version(settings.prefect_api_url)
    except DRError as exc:
        interrupt.raise_if_noted()
        log.warning("Prefect version unknown: %s", exc.message)
        return None


def run(settings: Settings, storage: Storage, request: Request, *,
        env: Mapping[str, str] | None = None, progress: pipeline.Progress | None = None,
        clock: Callable[[], dt.datetime] = _now,
        on_start: Callable[[str], None] | None = None) -> Manifest:
    """Take one backup and return its manifest. ``on_start`` is called with the backup id
    once it exists (for the run's notification).

    Raises ConfigError (settings), DatabaseError, StorageError, LockHeldError,
    UndecryptableBlocksError, Interrupted; after the lock is held every failure first leaves a
    failed status record.
    """
    env = os.environ if env is None else env
    settings.require(*NEEDS)
    try:
        parse(request.kind)
    except ValueError as exc:
        raise DRError(str(exc)) from None
    recipient_texts = settings.recipients
    recipients = [crypto.parse_recipient(r) for r in recipient_texts]
    fingerprints = tuple(crypto.fingerprint(r) for r in recipient_texts)
    repo = Layout(settings.layout_prefix)
    signer = trust.signer(settings.signing_key_file, settings.signing_required is not False)
    url = settings.database_url
    conn = pgc.connect(url)
    try:
        major, pg_version = pgc.server_version(conn)
        client = tools.pick_dump(settings.pg_bin_dir, major, pg_version)  # SetupError
        pg_dump, dump_version = client.path, client.text
        if pgc.alembic_revision(conn) is None:
            raise DRError(f"{pgc.describe(url)} is not a Prefect database (no alembic_version)")
        lock = BackupLock(conn, storage, repo.lock(f"backup-{_database_fingerprint(conn)}"),
                          runlog.RUN_ID,
                          stale_after=dt.timedelta(hours=settings.lock_stale_hours or 12))
        take_lock(lock, request.lock_wait)
        try:
            parent = None
            if request.kind == Kind.INCREMENTAL:  # before any record: refused, nothing written
                parent = chain.find_parent(storage, repo, database=pgc.describe(url),
                                           revision=pgc.alembic_revision(conn),
                                           identity=chain.database_id(conn),
                                           trust=_parent_trust(settings, storage, signer))
            return _run_locked(settings, storage, request, conn, repo, env, progress, clock,
                               recipients, fingerprints, pg_dump, dump_version, pg_version,
                               signer, on_start, parent)
        finally:
            lock.release()
    finally:
        conn.close()


def _parent_trust(settings: Settings, storage: Storage,
                  signer: signing.Ed25519PrivateKey | None) -> trust.Trust:
    """Whom an increment trusts its parent from: the verify keys when configured, else its
    own signing key (anything when it writes unsigned)."""
    if settings.verify_key:
        return trust.for_settings(settings, storage, allow_unsigned=signer is None)
    return trust.own_writes(settings, storage, signer)


def _run_locked(settings: Settings, storage: Storage, request: Request,
                conn: psycopg.Connection, repo: Layout, env: Mapping[str, str],
                progress: pipeline.Progress | None, clock: Callable[[], dt.datetime],
                recipients: list[crypto.Recipient], fingerprints: tuple[str, ...],
                pg_dump: str, dump_version: str, pg_version: str,
                signer: signing.Ed25519PrivateKey | None,
                on_start: Callable[[str], None] | None = None,
                parent: Manifest | None = None) -> Manifest:
    started = clock()
    backup_id = new_id(started)
    if on_start is not None:
        on_start(backup_id)
    status_key = repo.artifact(backup_id, layout.STATUS)
    common = {"started_at": started.isoformat(), "host": socket.gethostname(),
              "pid": os.getpid(), "run_id": runlog.RUN_ID, "labels": dict(request.labels)}
    storage.put_bytes(status_key, status_record(backup_id, request.kind, "running",
                                                signer=signer, **common), "application/json")
    log.info("backup %s started (%s)", backup_id, request.kind,
             extra={"backup_id": backup_id, "kind": request.kind})
    try:
        try:
            return _take(settings, storage, request, conn, repo, env, progress, clock,
                         recipients, fingerprints, pg_dump, dump_version, pg_version, signer,
                         backup_id, started, parent)
        except psycopg.Error as exc:
            raise DatabaseError(f"database error: {pgc.first_line(exc)}") from None
    except BaseException as exc:
        if isinstance(exc, DRError):
            message = exc.message
        elif isinstance(exc, KeyboardInterrupt):
            message = "interrupted"
        else:
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:
            storage.put_bytes(status_key, status_record(
                backup_id, request.kind, FAILED, error=message, signer=signer,
                finished_at=clock().isoformat(), **common), "application/json")
        except Exception as record_exc:
            log.error("could not write the failed status of %s: %s", backup_id, record_exc)
        log.error("backup %s failed: %s", backup_id, message, extra={"backup_id": backup_id})
        raise


def _take(settings: Settings, storage: Storage, request: Request, conn: psycopg.Connection,
          repo: Layout, env: Mapping[str, str], progress: pipeline.Progress | None,
          clock: Callable[[], dt.datetime], recipients: list[crypto.Recipient],
          fingerprints: tuple[str, ...], pg_dump: str, dump_version: str, pg_version: str,
          signer: signing.Ed25519PrivateKey | None, backup_id: str,
          started: dt.datetime, parent: Manifest | None = None) -> Manifest:
    level = settings.zstd_level or 2
    prefect_version = _prefect_version(settings)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    snapshot = str(row[0]) if row else None
    revision = pgc.alembic_revision(conn)
    size_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    key, key_record = _block_key(conn, env, request.allow_undecryptable_blocks
                                 or bool(settings.allow_undecryptable_blocks))
    tables = ps.user_tables(conn)
    dumped = set(tables) if holds_history(request.kind) else {t for t in tables
                                                          if t in ps.CONFIG_TABLES}
    watermark = chain.snapshot_watermark(conn) if holds_history(request.kind) else None
    start = chain.since(parent) if parent is not None else None  # an increment's history
    # Format 2: the deferred history tables' data goes into artifacts of its own (below).
    deferred = [t for t in ps.DEFERRED_TABLES if t in dumped]
    # Format 4: so do the run tables' rows, split into a live and a done part (flat serving)
    split = _split_runs(conn, request.kind, parent)
    exclude = sorted(set(tables) - dumped | set(deferred) | set(split))
    unfinished = backfill_state.pending_tables(conn)
    if unfinished:
        keys = sorted(set(unfinished) & set(runs_split.RUN_TABLES))
        log.warning("the history backfill of a tiered restore is unfinished in this database "
                    "(%s): this backup holds only the rows restored so far%s; run 'prefect-dr "
                    "restore --resume' to finish it", ", ".join(unfinished),
                    f", and {', '.join(keys)} without their foreign keys" if keys else "")
        request = dataclasses.replace(request, labels={**request.labels,
                                                       LABEL_BACKFILL: BACKFILL_UNFINISHED})

    artifacts: list[Artifact] = []
    clean_url, child_env = dump.child_env(settings.database_url, env)
    argv = dump.dump_argv(pg_dump, clean_url, snapshot=snapshot, exclude_data=exclude,
                          exclude_schemas=(backfill_state.SCHEMA,))
    dump_key = repo.artifact(backup_id, layout.DUMP)
    with dump.ClientProcess(argv, child_env, "pg_dump") as proc, \
            storage.open_writer(dump_key, tags=request.labels) as writer:
        stats = pipeline.encrypt_to(proc.stdout, writer, recipients, zstd_level=level,
                                    progress=progress)
        proc.wait()  # a failed dump raises here, and the upload is aborted, never completed
        writer.close()
    artifacts.append(_artifact(ARTIFACT_DUMP, dump_key, "pg_dump-custom", stats, "zstd",
                               fingerprints))
    log.info("dump uploaded: %s (from %s)", human_bytes(stats.size),
             human_bytes(stats.plaintext_size),
             extra={"backup_id": backup_id, "bytes": stats.size})

    history: list[Artifact] = []  # listed after dump, config and block key
    for table in deferred:
        history.append(_put_table(conn, storage, repo.artifact(
            backup_id, layout.history_object(table)), table, recipients, level, request.labels,
            fingerprints, progress, start))
    live = runs_split.closure(conn) if split else None
    for table in split:
        for part in PARTS:
            history.append(_put_table(conn, storage, repo.artifact(
                backup_id, layout.runs_object(table, part)), table, recipients, level,
                request.labels, fingerprints, progress, part=(part, live)))
    if start is None:
        counts = _row_counts(conn, tables, dumped - set(deferred) - set(split))
        for a in history:
            if a.table:
                had = counts.get(a.table, {}).get("rows", 0) if a.part == DONE else 0
                counts[a.table] = {"rows": had + (a.rows or 0), "exact": True}
    else:  # an increment's history tables: the whole table's count, what a chain restores
        counts = _row_counts(conn, tables, dumped)
    increment = (chain.link(parent, start, chain.floors(conn, deferred))
                 if parent is not None and start is not None else None)
    grants = privileges.record(conn)
    runtime = reconcile.count(conn, started.isoformat(),
                              runs=holds_history(request.kind)).to_dict()
    body = export.build(conn, backup_id=backup_id, key=key, prefect_version=prefect_version,
                        alembic_revision=revision)
    conn.execute("COMMIT")
    export_key = repo.artifact(backup_id, layout.CONFIG_EXPORT)
    stats = _put_small(storage, export_key, json.dumps(body, default=str).encode(), recipients,
                       level, request.labels)
    artifacts.append(_artifact(ARTIFACT_CONFIG, export_key, "prefect-config-export+json", stats,
                               "zstd", fingerprints))
    if key is not None and not key.in_database:
        key_key = repo.artifact(backup_id, layout.BLOCK_KEY)
        stats = _put_small(storage, key_key, json.dumps({"fernet_key": key.key}).encode(),
                           recipients, None, request.labels)
        artifacts.append(_artifact(ARTIFACT_BLOCK_KEY, key_key, "fernet-key+json", stats, "none",
                                   fingerprints))
    artifacts.extend(history)

    manifest = Manifest(
        backup_id=backup_id, kind=request.kind, started_at=started.isoformat(),
        finished_at=clock().isoformat(), tool_version=__version__,
        prefect_version=prefect_version, alembic_revision=revision,
        postgres_version=pg_version, pg_dump_version=dump_version,
        clients={"pg_dump": pg_dump},
        database=pgc.describe(settings.database_url), row_counts=counts,
        artifacts=tuple(artifacts), block_key=key_record, labels=dict(request.labels),
        database_size=int(size_row[0]) if size_row else None, runtime=runtime,
        privileges=grants, watermark=watermark, increment=increment,
        format_version=(INCREMENT_FORMAT_VERSION if increment else
                        RUNS_FORMAT_VERSION if split else FORMAT_VERSION),
    )
    # Bound to this repository and signed (trust.bind): readers refuse it anywhere else.
    manifest = trust.bind(manifest, trust.writer_repository(settings, storage), signer)
    storage.put_bytes(repo.artifact(backup_id, layout.MANIFEST), manifest.to_json(),
                      "application/json")
    log.info("backup %s complete", backup_id, extra={"backup_id": backup_id})
    return manifest


def _put_small(storage: Storage, key: str, data: bytes, recipients: list[crypto.Recipient],
               level: int | None, tags: dict[str, str]) -> pipeline.StreamStats:
    with storage.open_writer(key, tags=tags) as writer:
        stats = pipeline.encrypt_to(io.BytesIO(data), writer, recipients, zstd_level=level)
        writer.close()
    return stats


def _split_runs(conn: psycopg.Connection, kind: str, parent: Manifest | None
                ) -> tuple[str, ...]:
    """The run tables whose rows this backup splits (format 4): all of them in a full or
    safety backup of a database whose run tables have the known shape; none in an increment,
    a configuration-only backup, or (logged with the reason) another shape."""
    if not holds_history(kind) or parent is not None:
        return ()
    reason = runs_split.refusal(conn)
    if reason:
        log.warning("the run tables stay in the dump (a tiered restore loads every run before "
                    "Prefect serves): %s", reason)
        return ()
    return runs_split.RUN_TABLES


def _put_table(conn: psycopg.Connection, storage: Storage, key: str, table: str,
               recipients: list[crypto.Recipient], level: int, tags: dict[str, str],
               fingerprints: tuple[str, ...],
               progress: pipeline.Progress | None,
               start: dt.datetime | None = None,
               part: tuple[str, runs_split.Closure | None] | None = None) -> Artifact:
    """COPY one table out of the backup's snapshot (``conn``'s transaction) into ``key``:
    every row, (an increment) those created since ``start``, or one part of a split run
    table (``part``: which, and the snapshot's live runs; :mod:`prefect_dr.runs_split`)."""
    columns = table_copy.columns_of(conn, table)
    which, live = part if part else (None, None)
    statement = (runs_split.part_query(table, columns, which, live) if which and live else
                 chain.since_query(table, columns, start) if start else None)
    reader = table_copy.CopyOutReader(conn, table, columns, statement)
    with storage.open_writer(key, tags=tags) as writer:
        stats = pipeline.encrypt_to(reader, writer, recipients, zstd_level=level,
                                    progress=progress)
        writer.close()
    log.info("%s rows of %s%s uploaded: %s (from %s)", reader.rows, table,
             f" ({which})" if which else "", human_bytes(stats.size),
             human_bytes(stats.plaintext_size), extra={"bytes": stats.size})
    name = runs_artifact(table, which) if which else history_artifact(table)
    return dataclasses.replace(
        _artifact(name, key, "pg-copy-text", stats, "zstd", fingerprints),
        table=table, columns=columns, rows=reader.rows, part=which)


def _artifact(name: str, key: str, content: str, stats: pipeline.StreamStats,
              compression: str, fingerprints: tuple[str, ...]) -> Artifact:
    return Artifact(name=name, key=key, content=content, size=stats.size, sha256=stats.sha256,
                    plaintext_size=stats.plaintext_size,
                    plaintext_sha256=stats.plaintext_sha256, compression=compression,
                    recipients=fingerprints)
