"""Loading a chain's history (issue 26): the base's rows, then each increment's, merged.

A restore (or verify) of an increment loads each history table's rows from its chain: the
base's artifact into the shadow table (prefect_dr.backfill), then each increment's artifact,
oldest first, through a temporary table, replacing rows of the same primary key (the overlap
between links holds the same rows twice: the newer link's copy is kept; the rows being
insert-only, both are equal). Rows older than the increment's *floor* are dropped (Prefect had
deleted them at the source), and the table must then hold exactly the increment's row count.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from prefect_dr import crypto, pipeline, restore_stream, table_copy
from prefect_dr.chain import ChainError
from prefect_dr.errors import VerificationError
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.storage.base import Storage

STAGE = "prefect_dr_link"


def link_of(artifact: Artifact) -> str:
    """The id of the backup an artifact belongs to (its key's folder)."""
    parts = artifact.key.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else "?"


def copy_in(conn: psycopg.Connection, storage: Storage, manifest: Manifest,
            artifact: Artifact, schema: str, table: str,
            identities: list[crypto.Identity], progress: pipeline.Progress | None, *,
            freeze: bool = False, check: Callable[[], None] | None = None) -> int:
    """COPY ``artifact``'s rows into ``schema.table`` (``freeze``: frozen, into a table this
    transaction created; ``check`` is called before each write and may raise to stop it);
    returns how many. Raises VerificationError for a damaged artifact; ChainError naming the
    link when it belongs to another backup of ``manifest``'s chain."""
    assert artifact.columns is not None
    try:
        with conn.cursor() as cur:
            with cur.copy(table_copy.copy_statement(table, artifact.columns, "in",
                                                    schema=schema, freeze=freeze)) as copy, \
                    storage.open_reader(artifact.location) as reader:
                pipeline.decrypt_from(reader, table_copy.CopyInWriter(copy, check), identities,
                                      compressed=artifact.compression == "zstd",
                                      expect=restore_stream.expected_stats(artifact),
                                      progress=progress)
            return max(cur.rowcount, 0)
    except VerificationError as exc:
        bid = link_of(artifact)
        if not manifest.increment or isinstance(exc, ChainError):
            raise
        raise ChainError(f"the chain of backup {manifest.backup_id} is broken at link {bid}: "
                         f"{exc.message}") from None


def _primary_key(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (sql.Identifier(schema, table).as_string(conn),)).fetchall()
    return [str(r[0]) for r in rows]


def merge(conn: psycopg.Connection, storage: Storage, manifest: Manifest,
          segments: tuple[Artifact, ...], identities: list[crypto.Identity],
          progress: pipeline.Progress | None, schema: str) -> int:
    """Merge the increments among ``segments`` (all but the first, already loaded into
    ``schema.<table>``, which has its primary key) and apply ``manifest``'s floor; inside
    the caller's transaction. Returns the table's rows. Raises ChainError (a damaged link or a
    row count off), VerificationError."""
    table = str(segments[0].table)
    target = sql.Identifier(schema, table)
    for artifact in segments[1:]:
        assert artifact.columns is not None
        names = sql.SQL(", ").join(map(sql.Identifier, artifact.columns))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(STAGE)))
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
            sql.Identifier(STAGE), target))
        loaded = copy_in(conn, storage, manifest, artifact, "pg_temp", STAGE, identities,
                         progress)
        if loaded != artifact.rows:
            raise ChainError(f"the chain of backup {manifest.backup_id} is broken at link "
                             f"{link_of(artifact)}: {loaded} rows of {table}, its manifest "
                             f"says {artifact.rows}")
        # a row in both links: the newer link's copy wins (equal for insert-only rows)
        keys = _primary_key(conn, schema, table)
        if keys:
            conn.execute(sql.SQL("DELETE FROM {} t USING pg_temp.{} s WHERE {}").format(
                target, sql.Identifier(STAGE), sql.SQL(" AND ").join(
                    sql.SQL("t.{} = s.{}").format(sql.Identifier(k), sql.Identifier(k))
                    for k in keys)))
        conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM pg_temp.{} "
                             "ON CONFLICT DO NOTHING").format(
            target, names, names, sql.Identifier(STAGE)))
        conn.execute(sql.SQL("DROP TABLE pg_temp.{}").format(sql.Identifier(STAGE)))
    floor = ((manifest.increment or {}).get("floors") or {}).get(table)
    if isinstance(floor, dict) and floor.get("column"):
        column = sql.Identifier(str(floor["column"]))
        if floor.get("value") is None:  # empty at the source
            conn.execute(sql.SQL("DELETE FROM {}").format(target))
        else:
            conn.execute(sql.SQL("DELETE FROM {} WHERE {} < {}").format(
                target, column, sql.Literal(str(floor["value"]))))
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()
    have = int(row[0]) if row else 0
    entry = manifest.row_counts.get(table, {})
    if entry.get("exact") and have != int(entry.get("rows", -1)):
        raise ChainError(f"table {table}: {have} rows after merging the chain of backup "
                         f"{manifest.backup_id}, its manifest says {entry.get('rows')}")
    return have
