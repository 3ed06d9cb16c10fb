"""Chains of incremental backups (issue 26; docs/format.md, "Increments").

An *increment* holds every table but the history tables in full, plus the history rows
written since its *parent's* watermark minus :data:`prefect_dr.kinds.INCREMENT_OVERLAP_S`. Its
parent is a full backup (the chain's *base*) or the previous increment. A chain is read,
copied and pruned as a unit: this module finds an increment's parent when one is taken,
resolves (and checks) an increment's ancestors when one is read, and says which backups a
kept one depends on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import replace

import psycopg
from psycopg import sql

from prefect_dr import catalog
from prefect_dr.catalog import BackupEntry, VerifyKey
from prefect_dr.errors import NotFoundError, VerificationError
from prefect_dr.kinds import CHAIN_KINDS, INCREMENT_OVERLAP_S, Kind
from prefect_dr.layout import Layout
from prefect_dr.manifest import Manifest
from prefect_dr.storage.base import Storage
from prefect_dr.trust import Trust

#: The column an increment selects its history rows by: set by the database when Prefect
#: inserts (or would update) a row, and indexed in all three tables (docs/format.md).
WATERMARK_COLUMN = "updated"
#: The column Prefect deletes old history by (database vacuum, event persister): a restore of
#: a chain drops rows older than the increment's floor, which the source had deleted.
FLOOR_COLUMNS: Mapping[str, str] = {"events": "occurred", "event_resources": "occurred",
                                    "log": "timestamp"}
#: A chain longer than this is refused when read (a loop or a runaway schedule).
MAX_DEPTH = 10_000


class NoParentError(NotFoundError):
    """``backup --kind incremental`` found no backup it may chain on (exit 10)."""


class ChainError(VerificationError):
    """A link of an increment's chain is missing, incomplete, damaged or not trusted
    (exit 13); the message names the link."""


def resolve(storage: Storage, layout: Layout, manifest: Manifest,
            trust: Trust | VerifyKey | None) -> Manifest:
    """``manifest`` with its ancestors attached (``chain``, base first) when it is an
    increment; any other manifest as it is. Each ancestor must be complete, trusted by
    ``trust`` (None: not checked) and the link its child names.

    Raises ChainError naming the first broken link."""
    if not manifest.increment:
        return manifest
    links: list[Manifest] = []
    child = manifest
    while child.increment:
        parent_id = child.parent or ""
        where = (f"the chain of backup {manifest.backup_id} is broken at link {parent_id} "
                 f"(parent of {child.backup_id})")
        if len(links) >= MAX_DEPTH or parent_id in {m.backup_id for m in links}:
            raise ChainError(f"{where}: the chain loops or is longer than {MAX_DEPTH}")
        try:
            entry = catalog.resolve(storage, layout, parent_id, verify_key=trust)
            parent = catalog.require_complete(entry, trust=trust if isinstance(trust, Trust)
                                              else None)
        except (NotFoundError, VerificationError) as exc:
            raise ChainError(f"{where}: {exc.message}") from None
        except ValueError:
            raise ChainError(f"{where}: not a backup id") from None
        problem = link_problem(child, parent)
        if problem:
            raise ChainError(f"{where}: {problem}")
        links.append(parent)
        child = parent
    return replace(manifest, chain=tuple(reversed(links)))


def link_problem(child: Manifest, parent: Manifest) -> str | None:
    """Why ``parent`` is not the link ``child`` (an increment) names (None when it is)."""
    link = child.increment or {}
    if parent.kind not in CHAIN_KINDS:
        return f"it is a {parent.kind} backup"
    if not parent.history:
        return "it holds no history artifacts (format 1)"
    base = parent.increment["base"] if parent.increment else parent.backup_id
    depth = int(parent.increment["depth"]) + 1 if parent.increment else 1
    if link.get("base") != base or link.get("depth") != depth:
        return (f"the child names base {link.get('base')} at depth {link.get('depth')}, the "
                f"parent makes it base {base} at depth {depth}")
    if parent.database != child.database:
        return f"it is of database {parent.database}, not {child.database}"
    return None


def chain_ids(manifest: Manifest) -> list[str]:
    """Ids of the backups ``manifest`` (resolved) needs, base first, itself last."""
    return [m.backup_id for m in (*manifest.chain, manifest)]


def find_parent(storage: Storage, layout: Layout, *, database: str, revision: str | None,
                identity: str, trust: Trust | None) -> Manifest:
    """The backup an increment of ``database`` continues, resolved: the newest complete,
    whole full or incremental backup of that database, if it can be a parent (it has
    history artifacts and a watermark of the same database ``identity`` (not replaced by a
    restore since), the same alembic revision, an intact chain).

    Raises NoParentError (one line, the fix named) when there is none usable."""
    entries = catalog.whole(catalog.list_backups(storage, layout, with_verification=False,
                                                 verify_key=trust))
    mine = [e for e in entries if e.kind in CHAIN_KINDS and e.manifest is not None
            and e.manifest.database == database]
    fix = "take 'prefect-dr backup --kind full' first"
    if not mine:
        raise NoParentError(f"no complete full backup of {database} to chain an increment "
                            f"on in {storage.description}/{layout.root}: {fix}")
    parent = mine[-1].manifest
    assert parent is not None
    name = f"{parent.kind} backup {parent.backup_id}"
    if not parent.history or parent.watermark is None:
        lacks = "history artifacts" if not parent.history else "watermark"
        raise NoParentError(f"the newest {name} cannot be a parent (written before "
                            f"increments: no {lacks}): {fix}")
    if parent.watermark["database"] != identity:
        raise NoParentError(f"the database was replaced since the newest {name} (restored, or "
                            f"recreated): {fix}")
    if parent.alembic_revision != revision:
        raise NoParentError(f"Prefect's schema changed since the newest {name} (alembic "
                            f"{parent.alembic_revision} -> {revision}): {fix}")
    if trust is not None:
        try:
            trust.check_manifest(parent)
        except VerificationError as exc:
            raise NoParentError(f"the newest {name} is not trusted ({exc.message}): {fix}"
                                ) from None
    try:
        return resolve(storage, layout, parent, trust)
    except ChainError as exc:
        raise NoParentError(f"{exc.message}: {fix}") from None


def since(parent: Manifest) -> dt.datetime:
    """Where an increment of ``parent`` starts: its watermark minus the overlap."""
    assert parent.watermark is not None
    return dt.datetime.fromisoformat(parent.watermark["at"]) - dt.timedelta(
        seconds=INCREMENT_OVERLAP_S)


def link(parent: Manifest, start: dt.datetime, floors: Mapping[str, object]) -> dict[str, object]:
    """The ``increment`` field of a child of ``parent`` (resolved) starting at ``start``."""
    base = parent.increment["base"] if parent.increment else parent.backup_id
    depth = int(parent.increment["depth"]) + 1 if parent.increment else 1
    return {"parent": parent.backup_id, "base": base, "depth": depth,
            "since": start.isoformat(), "overlap_s": INCREMENT_OVERLAP_S,
            "column": WATERMARK_COLUMN, "floors": dict(floors)}


def snapshot_watermark(conn: psycopg.Connection) -> dict[str, str]:
    """The backup's watermark: its transaction's start on the database's clock (inside the
    snapshot's transaction: every row the snapshot cannot see was written after it, but for
    rows committed late, which the overlap covers), and which database it is of (a restore
    creates a new database: an increment never continues a backup of the one it replaced)."""
    row = conn.execute("SELECT now(), (SELECT system_identifier::text FROM "
                       "pg_control_system()) || '/' || (SELECT oid::text FROM pg_database "
                       "WHERE datname = current_database())").fetchone()
    assert row is not None
    return {"at": row[0].astimezone(dt.UTC).isoformat(), "database": str(row[1])}


def database_id(conn: psycopg.Connection) -> str:
    """This database's identity as watermarks record it (system identifier/database oid)."""
    row = conn.execute("SELECT (SELECT system_identifier::text FROM pg_control_system()) || "
                       "'/' || (SELECT oid::text FROM pg_database WHERE datname = "
                       "current_database())").fetchone()
    return str(row[0]) if row else ""


def floors(conn: psycopg.Connection, tables: Iterable[str]) -> dict[str, dict[str, object]]:
    """Per history table, its floor column and the oldest value in the snapshot (None for an
    empty table): a restore of the chain drops older rows, which Prefect had deleted."""
    out: dict[str, dict[str, object]] = {}
    for table in tables:
        column = FLOOR_COLUMNS.get(table)
        if column is None:
            continue
        row = conn.execute(sql.SQL("SELECT min({}) FROM {}").format(
            sql.Identifier(column), sql.Identifier("public", table))).fetchone()
        value = row[0] if row else None
        out[table] = {"column": column,
                      "value": value.astimezone(dt.UTC).isoformat() if value else None}
    return out


def since_query(table: str, columns: tuple[str, ...], start: dt.datetime) -> sql.Composed:
    """``COPY (SELECT columns FROM table WHERE updated >= start) TO STDOUT``."""
    return sql.SQL("COPY (SELECT {} FROM {} WHERE {} >= {}) TO STDOUT").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier("public", table),
        sql.Identifier(WATERMARK_COLUMN), sql.Literal(start))


def dependencies(entries: Iterable[BackupEntry]) -> dict[str, list[str]]:
    """For each complete increment among ``entries``: the ids of its ancestors, parent first,
    as far as they are listed (a missing one ends the list)."""
    parent_of = {e.backup_id: e.manifest.parent for e in entries
                 if e.manifest is not None and e.manifest.kind == Kind.INCREMENTAL}
    listed = {e.backup_id for e in entries}
    out: dict[str, list[str]] = {}
    for bid in parent_of:
        up: list[str] = []
        at = parent_of.get(bid)
        while at and at in listed and at not in up and len(up) < MAX_DEPTH:
            up.append(at)
            at = parent_of.get(at)
        out[bid] = up
    return out

