"""Connections to the Prefect database and the facts a DR tool needs about it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from prefect_dr import redact
from prefect_dr.errors import DatabaseError

CONNECT_TIMEOUT_S = 10


def describe(url: str) -> str:
    """A password-free 'host:port/db as user' description of a libpq URL."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    db = parts.path.lstrip("/") or parts.username or "postgres"
    user = f" as {parts.username}" if parts.username else ""
    return f"{host}:{port}/{db}{user}"


def connect(url: str, *, autocommit: bool = True, dbname: str | None = None,
            application_name: str = "prefect-dr") -> psycopg.Connection:
    """Open a connection; raises DatabaseError with a one-line, password-free reason.

    ``dbname`` overrides the URL's database (to reach a scratch or maintenance database).
    """
    kwargs: dict[str, object] = {"autocommit": autocommit, "connect_timeout": CONNECT_TIMEOUT_S,
                                 "application_name": application_name}
    if dbname:
        kwargs["dbname"] = dbname
    try:
        return psycopg.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL {describe(url)}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first meaningful line of a database error, redacted."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # libpq prefixes 'connection to server at "...", port N failed:' - keep the reason.
    reason = lines[-1] if lines else type(exc).__name__
    for ln in lines:
        if ln.startswith("FATAL:") or "Connection refused" in ln or "timeout" in ln:
            reason = ln
            break
    reason = re.sub(r'^connection to server at "[^"]*" \([^)]*\), port \d+ failed: ', "", reason)
    return redact.redact(reason)


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """Return (major version, full version string) of the server."""
    num = conn.info.server_version  # e.g. 150018
    full = conn.execute("SHOW server_version").fetchone()
    return num // 10000, str(full[0]) if full else str(num)


def alembic_revision(conn: psycopg.Connection) -> str | None:
    """The Prefect schema revision, or None when this is not a Prefect database."""
    row = conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    rev = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(rev[0]) if rev else None


def unreadable_relations(conn: psycopg.Connection) -> list[str]:
    """Tables and sequences in user schemas this role may not SELECT (a dump would fail)."""
    rows = conn.execute(
        """
        SELECT format('%I.%I', n.nspname, c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'S', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%'
          AND NOT has_table_privilege(c.oid, 'SELECT')
        ORDER BY 1
        """
    ).fetchall()
    return [str(r[0]) for r in rows]


def table_exists(conn: psycopg.Connection, name: str) -> bool:
    """Whether ``public.<name>`` exists."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()
    return bool(row and row[0])


def count_rows(conn: psycopg.Connection, table: str) -> int:
    """Exact row count of ``public.<table>``."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
    return int(row[0]) if row else 0


def urlsplit_db(url: str) -> str:
    """The database name of a libpq URL (the user name when the URL names none)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise DatabaseError(f"{describe(url)}: the URL names no database")
    return name
