"""Whole tables as COPY text streams: read out of a backup's exported snapshot into an
artifact, and written back into a table. Format 2 backups keep the data of the deferred history
tables (:data:`prefect_dr.prefect_schema.DEFERRED_TABLES`) this way, beside the dump, so a
restore can load everything else first and these after (docs/format.md, "History artifacts").

COPY's text format is PostgreSQL's most portable one (the same on every version from 14 to 18
and readable by ``psql``'s ``\\copy``); the columns are named explicitly on both sides, so the
order of the table's columns never matters.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

#: Bytes gathered from COPY's rows before they are handed on (COPY yields one row at a time).
BLOCK = 1 << 20


def columns_of(conn: psycopg.Connection, table: str, schema: str = "public") -> tuple[str, ...]:
    """The columns COPY reads and writes for ``schema.table``, in table order: every live,
    non-generated column."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        (sql.Identifier(schema, table).as_string(conn),)).fetchall()
    return tuple(str(r[0]) for r in rows)


def copy_statement(table: str, columns: tuple[str, ...], direction: str,
                   schema: str = "public", *, freeze: bool = False) -> sql.Composed:
    """``COPY schema.table (columns) TO STDOUT`` or ``FROM STDIN`` (text format); ``freeze``
    loads the rows frozen (only into a table created or truncated in the same transaction)."""
    target = "TO STDOUT" if direction == "out" else "FROM STDIN"
    if freeze and direction == "in":
        target += " WITH (FREEZE)"
    return sql.SQL("COPY {} ({}) " + target).format(
        sql.Identifier(schema, table), sql.SQL(", ").join(map(sql.Identifier, columns)))


class CopyOutReader(io.RawIOBase):
    """A binary file reading ``COPY ... TO STDOUT`` of one table on ``conn`` (inside whatever
    transaction ``conn`` is in, e.g. one with an exported snapshot), or of ``statement`` (a
    ``COPY (SELECT ...) TO STDOUT`` of some of its rows). ``rows`` holds the row
    count PostgreSQL reported once the stream is exhausted."""

    def __init__(self, conn: psycopg.Connection, table: str, columns: tuple[str, ...],
                 statement: sql.Composable | None = None) -> None:
        super().__init__()
        self._cursor = conn.cursor()
        self._copy_cm = self._cursor.copy(statement or copy_statement(table, columns, "out"))
        self._copy = self._copy_cm.__enter__()
        self._rows: Iterator[Any] = iter(self._copy)
        self._pending = b""
        self._offset = 0
        self._finished = False
        self.rows: int | None = None

    def readable(self) -> bool:
        """Always."""
        return True

    def _fill(self, want: int) -> None:
        parts = [self._pending[self._offset:]]
        self._offset = 0
        have = len(parts[0])
        for row in self._rows:
            parts.append(bytes(row))
            have += len(parts[-1])
            if have >= want:
                break
        else:
            self._finish()
        self._pending = b"".join(parts)

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._copy_cm.__exit__(None, None, None)
            self.rows = max(self._cursor.rowcount, 0)
            self._cursor.close()

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the COPY stream; 0 at its end."""
        want = len(buffer)
        if len(self._pending) - self._offset < want and not self._finished:
            self._fill(max(want, BLOCK))
        n = min(want, len(self._pending) - self._offset)
        buffer[:n] = memoryview(self._pending)[self._offset:self._offset + n]
        self._offset += n
        return n


class CopyInWriter:
    """A sink for ``pipeline.decrypt_from`` that writes into ``COPY ... FROM STDIN``: the
    bytes are passed on as they come (text COPY accepts any split of its stream). ``check``,
    called before each write, may raise to stop the load."""

    def __init__(self, copy: Any, check: Callable[[], None] | None = None) -> None:
        self._copy = copy
        self._check = check
        self.size = 0

    def write(self, data: Any) -> int:
        """Send ``data`` to the server; returns its length. Raises what ``check`` raises."""
        if self._check is not None:
            self._check()
        self._copy.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: psycopg sends as it goes."""
