"""Scratch databases: uniquely named, recognisable, always dropped, leftovers cleaned.

A scratch database is named ``prefect_dr_scratch_<utc stamp>_<random>``. While a run uses it,
the run keeps a *holder* connection open to it; so a scratch database that nobody is connected
to belongs to a run that died (SIGKILL) and the next run drops it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from prefect_dr import retry
from prefect_dr.errors import DatabaseError
from prefect_dr.pg import connect as pgc

log = logging.getLogger(__name__)
PREFIX = "prefect_dr_scratch_"


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def drop_database(admin: psycopg.Connection, name: str, *, wait_s: float = 15.0) -> None:
    """DROP DATABASE ``name`` IF EXISTS.

    A plain DROP first: PostgreSQL itself stops autovacuum workers on the database, which a
    non-superuser may not terminate. Clients still connected are then forced off (FORCE), and
    the drop is retried every 0.5 s until ``wait_s`` has passed (retry.call). Raises
    psycopg.Error after that, or at once when the plain drop fails otherwise.
    """
    plain = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    forced = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    forcing = False  # only the forced drop's failures are retried; the plain one's are raised

    def drop() -> None:
        nonlocal forcing
        forcing = False
        try:
            admin.execute(plain)
            return
        except psycopg.errors.ObjectInUse:
            pass
        forcing = True
        admin.execute(forced)

    retry.call(drop, transient=lambda exc: forcing and isinstance(
        exc, psycopg.errors.ObjectInUse | psycopg.errors.InsufficientPrivilege),
        what=f"drop of {name}", deadline_s=wait_s, wait_s=lambda _n: 0.5,
        on_retry=lambda _n, _exc: None, interruptible=False)  # a clean-up: runs after a stop


def leftovers(admin: psycopg.Connection) -> list[str]:
    """Scratch databases nobody is connected to (their run died)."""
    rows = admin.execute(
        "SELECT d.datname FROM pg_database d WHERE d.datname LIKE %s AND NOT EXISTS "
        "(SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname "
        "AND a.usename IS NOT NULL) ORDER BY 1",  # autovacuum workers have no role
        (PREFIX.replace("_", r"\_") + "%",)).fetchall()
    return [str(r[0]) for r in rows]


class ScratchDatabase:
    """Creates a scratch database on enter (dropping dead runs' leftovers first), holds a
    connection to it, and drops it on exit unless ``keep``."""

    def __init__(self, admin_url: str, *, keep: bool = False) -> None:
        self.admin_url = admin_url
        self.keep = keep
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
        self.name = f"{PREFIX}{stamp}_{secrets.token_hex(3)}"
        self.url = with_database(admin_url, self.name)
        self._holder: psycopg.Connection | None = None
        self.dropped_leftovers: list[str] = []

    def __enter__(self) -> ScratchDatabase:
        with pgc.connect(self.admin_url) as admin:
            for name in leftovers(admin):
                log.warning("dropping leftover scratch database %s of a dead run", name)
                drop_database(admin, name)
                self.dropped_leftovers.append(name)
            try:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot create scratch database {self.name} on "
                                    f"{pgc.describe(self.admin_url)}: {pgc.first_line(exc)} "
                                    "(the role needs CREATEDB)") from None
        self._holder = pgc.connect(self.url, application_name="prefect-dr scratch holder")
        return self

    def connect(self) -> psycopg.Connection:
        """A new connection to the scratch database."""
        return pgc.connect(self.url)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        if self.keep:
            log.warning("keeping scratch database %s (--keep-scratch)", self.name)
            return
        try:
            with pgc.connect(self.admin_url) as admin:
                drop_database(admin, self.name)
        except (DatabaseError, psycopg.Error) as drop_exc:
            log.error("could not drop scratch database %s: %s; the next verify drops it",
                      self.name, drop_exc)
