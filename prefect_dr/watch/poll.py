"""The configuration tables read directly: has any configuration changed since last time?

Cheap first: one query reads every configuration table's row count and newest ``updated``
(unchanged on a quiet server). Only a table whose pair moved is read in full, as a hash of its
rows without the columns Prefect's runtime rewrites (``updated`` itself, ``last_polled`` and
``status`` that every worker poll touches on deployments, pools and queues, concurrency slots
and their statistics),
so workers polling and runs taking slots are not configuration changes; a deleted row shows in
the count. The session is read-only.
"""

from __future__ import annotations

import contextlib
import logging

import psycopg
from psycopg import sql

from prefect_dr import prefect_schema as ps
from prefect_dr.errors import DatabaseError
from prefect_dr.pg import connect as pgc

log = logging.getLogger(__name__)

#: Columns Prefect rewrites while it runs, without any configuration change.
RUNTIME_COLUMNS: tuple[str, ...] = (
    "updated", "last_polled", "status", "last_transitioned_status_at", "last_status_event_id",
    "active_slots", "denied_slots", "avg_slot_occupancy_seconds",
)
#: The tables read: the configuration tables (alembic_version has no ``updated``; it is hashed).
TABLES: tuple[str, ...] = ps.CONFIG_TABLES

Fingerprint = dict[str, tuple[int, str | None, str | None]]  # table -> (rows, max updated, hash)


class ConfigPoller:
    """Reads the configuration tables' fingerprint over one read-only session (reopened after
    a failure). :meth:`changed` says whether it moved since the previous call."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._conn: psycopg.Connection | None = None
        self._tables: list[tuple[str, bool]] | None = None  # (table, has updated column)
        self._last: Fingerprint | None = None

    def _session(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = pgc.connect(self._url, application_name="prefect-dr watch")
            try:
                conn.execute("SET default_transaction_read_only = on")
                conn.execute("SET statement_timeout = '30s'")
                rows = conn.execute(
                    "SELECT c.relname, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid ="
                    " c.oid AND a.attname = 'updated' AND NOT a.attisdropped) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                    "AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s) ORDER BY c.relname",
                    (list(TABLES),)).fetchall()
            except psycopg.Error as exc:
                conn.close()
                raise DatabaseError(f"cannot read the configuration tables: "
                                    f"{pgc.first_line(exc)}") from None
            self._conn, self._tables = conn, [(str(r[0]), bool(r[1])) for r in rows]
        return self._conn

    def fingerprint(self) -> Fingerprint:
        """Every configuration table's (rows, newest updated, content hash); the hash is
        computed only for tables whose rows or newest update moved. Raises DatabaseError."""
        try:
            conn = self._session()
            assert self._tables is not None
            cheap = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {name}, count(*), {newest} FROM {table}").format(
                    name=sql.Literal(table), table=sql.Identifier(table),
                    newest=sql.SQL("max(updated)::text") if has_updated
                    else sql.SQL("NULL::text"))
                for table, has_updated in self._tables)
            now: Fingerprint = {}
            for table, rows, newest in conn.execute(cheap).fetchall():
                old = (self._last or {}).get(table)
                same = old is not None and old[0] == rows and old[1] == newest and newest
                now[table] = (int(rows), newest, old[2] if same and old else
                              self._content_hash(conn, table))
            return now
        except psycopg.Error as exc:
            self.close()
            raise DatabaseError(f"cannot read the configuration tables: {pgc.first_line(exc)}"
                                ) from None
        except DatabaseError:
            self.close()
            raise

    @staticmethod
    def _content_hash(conn: psycopg.Connection, table: str) -> str | None:
        query = sql.SQL("SELECT md5(coalesce(string_agg(r, ',' ORDER BY r), '')) FROM "
                        "(SELECT (to_jsonb(t) - {drop}::text[])::text AS r FROM {table} t) s"
                        ).format(drop=sql.Literal(list(RUNTIME_COLUMNS)),
                                 table=sql.Identifier(table))
        row = conn.execute(query).fetchone()
        return str(row[0]) if row else None

    def changed(self) -> bool:
        """Whether the configuration changed since the previous call (the first call only
        records it and returns False). Raises DatabaseError."""
        now = self.fingerprint()
        before, self._last = self._last, now
        if before is None:
            return False
        moved = sorted(t for t in set(now) | set(before)
                       if (now.get(t) or (0, None, None))[0::2]
                       != (before.get(t) or (0, None, None))[0::2])
        if moved:
            log.info("configuration changed in %s", ", ".join(moved))
        return bool(moved)

    def mark(self) -> None:
        """Take the current configuration as seen (a backup is about to read it), so the
        next :meth:`changed` reports only what changes after. Raises DatabaseError."""
        self._last = self.fingerprint()

    def close(self) -> None:
        """Close the session (reopened by the next read). Never raises."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
