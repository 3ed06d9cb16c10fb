"""Database-level operations for restore and rollback: sessions, renames, the swap.

The swap makes sure nobody is connected (refuse, or terminate them with ``force_disconnect``),
then renames live aside and the replacement to the live name, with their comments, in one
transaction: PostgreSQL renames databases transactionally, so a crash leaves the old state or
the new one, and a client connecting in between makes the rename fail with nothing changed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from prefect_dr import retry
from prefect_dr.errors import DRError

DISCONNECT_WAIT_S = 10.0


class ConnectedClientsError(DRError):
    """Clients are connected to a database that must be renamed."""


@dataclass(frozen=True)
class Session:
    """One client connected to a database."""

    pid: int
    user: str
    application: str
    client: str

    def __str__(self) -> str:
        app = f" {self.application!r}" if self.application else ""
        return f"pid {self.pid} ({self.user}{app} from {self.client or 'local socket'})"


def exists(admin: psycopg.Connection, name: str) -> bool:
    """Whether database ``name`` exists."""
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
        is not None


def owner(admin: psycopg.Connection, name: str) -> str:
    """The role owning database ``name``."""
    row = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                        (name,)).fetchone()
    if not row:
        raise DRError(f"database {name} does not exist")
    return str(row[0])


def sessions(admin: psycopg.Connection, name: str) -> list[Session]:
    """Clients connected to ``name`` (other than this connection).

    Autovacuum workers are not clients: a non-superuser may not terminate them, and PostgreSQL
    stops them itself when a database is renamed or dropped. They are told by their missing
    role (``usename``): a non-superuser sees NULL as their ``backend_type``.
    """
    rows = admin.execute(
        "SELECT pid, usename, application_name, coalesce(client_addr::text, '') "
        "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
        "AND usename IS NOT NULL", (name,)
    ).fetchall()
    return [Session(int(r[0]), str(r[1] or ""), str(r[2] or ""), str(r[3])) for r in rows]


def rename(admin: psycopg.Connection, old: str, new: str) -> None:
    """ALTER DATABASE old RENAME TO new."""
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old),
                                                                   sql.Identifier(new)))


def comment(admin: psycopg.Connection, name: str, text: str) -> None:
    """COMMENT ON DATABASE (prefect-dr's bookkeeping of kept databases)."""
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name),
                                                                  sql.Literal(text)))


def comment_of(admin: psycopg.Connection, name: str) -> str:
    """The comment on database ``name`` ('' when none)."""
    row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                        "WHERE datname = %s", (name,)).fetchone()
    return str(row[0] or "") if row else ""


def describe_clients(name: str, others: list[Session]) -> str:
    """One line naming the clients connected to ``name`` and what to do about them."""
    shown = "; ".join(str(s) for s in others[:5])
    more = f" and {len(others) - 5} more" if len(others) > 5 else ""
    return (f"{len(others)} clients are connected to {name}: {shown}{more}; stop Prefect "
            "servers and workers first, or pass --force-disconnect")


def refuse_clients(admin: psycopg.Connection, name: str) -> None:
    """Raise ConnectedClientsError when clients are connected to ``name``."""
    others = settled(admin, name)
    if others:
        raise ConnectedClientsError(describe_clients(name, others))


#: How long a swap waits for the backends of prefect-dr's own closed connections to exit (the
#: server ends a backend a moment after its client closed; under load it is still listed).
OWN_SESSIONS_WAIT_S = 3.0


def settled(admin: psycopg.Connection, name: str, *, ours: bool = False) -> list[Session]:
    """Sessions of ``name``, after waiting (briefly) for those of prefect-dr's own closed
    connections to go; anyone else's are returned at once. ``ours``: ``name`` is a database
    only this run knows (the one it restored, pg_restore's sessions included): wait for any."""
    # a poll until the sessions are gone (no error to retry), not a retry.call
    deadline = time.monotonic() + OWN_SESSIONS_WAIT_S
    others = sessions(admin, name)
    while others and (ours or all(s.application.startswith("prefect-dr") for s in others)) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
        others = sessions(admin, name)
    return others


def _clear(admin: psycopg.Connection, name: str, force_disconnect: bool, *,
           ours: bool = False) -> None:
    others = settled(admin, name, ours=ours)
    if not others:
        return
    if not force_disconnect:
        raise ConnectedClientsError(describe_clients(name, others))
    for s in others:
        admin.execute("SELECT pg_terminate_backend(%s)", (s.pid,))
    deadline = time.monotonic() + DISCONNECT_WAIT_S  # a poll, as in settled(): not a retry
    while sessions(admin, name):
        if time.monotonic() > deadline:
            raise ConnectedClientsError(f"clients of {name} did not disconnect within "
                                        f"{DISCONNECT_WAIT_S:.0f}s")
        time.sleep(0.1)


def swap(admin: psycopg.Connection, live: str, replacement: str, aside: str, *,
         force_disconnect: bool, comments: Mapping[str, str] | None = None,
         attempts: int = 3) -> None:
    """Rename ``live`` to ``aside`` and ``replacement`` to ``live`` (and set ``comments``,
    keyed by the final names) in ONE transaction: a crash at any point leaves either the old
    state or the new one, never a missing or half-renamed database.

    Raises ConnectedClientsError when clients are connected (and not forced off), DRError or
    psycopg.Error on failure; in every failure case nothing changed.
    """
    def attempt() -> None:
        _clear(admin, live, force_disconnect)
        _clear(admin, replacement, force_disconnect, ours=True)
        with admin.transaction():
            rename(admin, live, aside)
            rename(admin, replacement, live)
            for name, text in (comments or {}).items():
                comment(admin, name, text)

    try:
        # a client connected between the check and the rename (nothing was renamed): forced
        # off again, at once, when --force-disconnect
        retry.call(attempt, transient=lambda exc: force_disconnect and isinstance(
            exc, psycopg.errors.ObjectInUse), what=f"swap of {live}", deadline_s=None,
            attempts=attempts, wait_s=lambda _n: 0.0, on_retry=lambda _n, _exc: None)
    except psycopg.errors.ObjectInUse:
        raise ConnectedClientsError(
            f"clients connected to {live} during the swap; nothing changed; stop "
            "Prefect servers and workers, or pass --force-disconnect") from None


#: The comment of a database while a restore fills it: one still so marked while no restore
#: holds the server's restore lock was left by a run that died (I5).
RESTORING_NOTE = "prefect-dr: being restored"


def half_restored(admin: psycopg.Connection, db: str | None = None) -> list[str]:
    """Databases a restore was filling: any marked so on this server, and ``db``'s
    ``<db>_restore_<stamp>`` (older runs did not mark them). Only those of dead runs when the
    caller holds the restore lock."""
    pattern = f"^{re.escape(db)}_restore_\\d{{14}}$" if db else "^$"
    rows = admin.execute(
        "SELECT datname FROM pg_database WHERE datname ~ %s OR (datname ~ '_restore_\\d{14}$' "
        "AND starts_with(coalesce(shobj_description(oid, 'pg_database'), ''), %s)) "
        "ORDER BY 1", (pattern, RESTORING_NOTE)).fetchall()
    return [str(r[0]) for r in rows]
