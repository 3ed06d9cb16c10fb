"""What a restore must carry beyond rows and definitions: table comments, storage parameters,
ownership and grants of the ``public`` schema's relations (and the schema's own grants).

``pg_restore --no-owner --no-privileges`` (prefect-dr restores as the live database's owner,
onto servers whose roles may differ) drops every GRANT; the history tables a restore rebuilds
(``CREATE TABLE ... LIKE``, :mod:`prefect_dr.backfill`) lose their comment and storage
parameters too. So a backup records them in its snapshot (:func:`record`, the manifest's
optional ``privileges`` field, only what differs from a fresh table's defaults), a restore
grants them again where the roles exist on the target (:func:`apply`, naming the missing ones),
the backfill copies them from the table it replaces (:func:`copy_table`), and verify compares
(:func:`compare`).

The record::

    {"tables": {"log": {"comment": "...", "options": ["autovacuum_vacuum_scale_factor=0.01"],
                        "grants": [["reporting", "SELECT", false]]}},
     "schema_grants": [["reporting", "USAGE", false]]}

A grant is ``[grantee, privilege, grantable]``; ``PUBLIC`` is the grantee of grants to all.
Grants to a relation's owner (its implicit rights) are not recorded.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from prefect_dr.errors import DRError

PUBLIC = "PUBLIC"
#: Relations whose grants and properties are recorded: tables, partitioned tables, views,
#: materialized views, sequences.
RELKINDS = ("r", "p", "v", "m", "S")

def record(conn: psycopg.Connection) -> dict[str, Any]:
    """Comments, storage parameters and grants (to roles other than the owner) of the public
    schema's relations that have any, and the public schema's grants. Changes nothing."""
    tables: dict[str, Any] = {}
    rows = conn.execute(
        "SELECT c.oid, c.relname, obj_description(c.oid, 'pg_class'), c.reloptions, "
        "c.relacl IS NOT NULL FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = ANY(%s) ORDER BY c.relname",
        (list(RELKINDS),)).fetchall()
    for oid, name, comment, options, has_acl in rows:
        grants = _grants_of(conn, "pg_class", oid) if has_acl else []
        entry = {k: v for k, v in (("comment", comment), ("options", list(options or [])),
                                   ("grants", grants)) if v}
        if entry:
            tables[str(name)] = entry
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = 'public'").fetchone()
    schema = _grants_of(conn, "pg_namespace", row[0]) if row else []
    return {"tables": tables, "schema_grants": schema}


def _grants_of(conn: psycopg.Connection, catalog: str, oid: int) -> list[list[Any]]:
    acl, owner = (("relacl", "relowner") if catalog == "pg_class" else ("nspacl", "nspowner"))
    query = sql.SQL("SELECT coalesce(g.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable "
                    "FROM {} c, aclexplode(c.{}) a LEFT JOIN pg_roles g ON g.oid = a.grantee "
                    "WHERE c.oid = %s AND a.grantee <> c.{} ORDER BY 1, 2").format(
        sql.Identifier(catalog), sql.Identifier(acl), sql.Identifier(owner))
    return [[str(g), str(p), bool(o)] for g, p, o in conn.execute(query, (oid,))]


def roles_named(meta: dict[str, Any]) -> set[str]:
    """Every role a record grants to (PUBLIC excepted)."""
    out = {g[0] for g in meta.get("schema_grants", [])}
    for entry in meta.get("tables", {}).values():
        out |= {g[0] for g in entry.get("grants", [])}
    return out - {PUBLIC}


def missing_roles(conn: psycopg.Connection, meta: dict[str, Any]) -> list[str]:
    """The roles ``meta`` grants to that do not exist on ``conn``'s server, sorted."""
    wanted = sorted(roles_named(meta))
    if not wanted:
        return []
    have = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                       (wanted,))}
    return [r for r in wanted if r not in have]


def _grant(target: sql.Composable, grant: list[Any]) -> sql.Composable:
    grantee, privilege, grantable = grant
    who = sql.SQL(PUBLIC) if grantee == PUBLIC else sql.Identifier(grantee)
    return sql.SQL("GRANT {} ON {} TO {}{}").format(
        sql.SQL(privilege), target, who, sql.SQL(" WITH GRANT OPTION" if grantable else ""))


def apply(conn: psycopg.Connection, meta: dict[str, Any]) -> tuple[int, list[str]]:
    """Grant again what ``meta`` records, to the roles that exist on the server, and set the
    recorded comments and storage parameters where they differ (in one transaction). Returns
    (grants made, roles missing). Raises psycopg.Error."""
    missing = set(missing_roles(conn, meta))
    made = 0
    with conn.transaction():
        for grant in meta.get("schema_grants", []):
            if grant[0] not in missing:
                conn.execute(_grant(sql.SQL("SCHEMA public"), grant))
                made += 1
        for name, entry in sorted(meta.get("tables", {}).items()):
            kind = _kind(conn, name)
            if kind is None:
                continue  # a relation the restored schema lacks: compare() reports it
            target = sql.SQL("{} {}").format(sql.SQL("SEQUENCE" if kind == "S" else "TABLE"),
                                             sql.Identifier("public", name))
            for grant in entry.get("grants", []):
                if grant[0] not in missing:
                    conn.execute(_grant(target, grant))
                    made += 1
            have = properties(conn, name)
            if entry.get("comment") and have.get("comment") != entry["comment"]:
                conn.execute(sql.SQL("COMMENT ON {} IS {}").format(
                    target, sql.Literal(entry["comment"])))
            if entry.get("options") and kind in ("r", "m") and \
                    sorted(have.get("options", [])) != sorted(entry["options"]):
                conn.execute(sql.SQL("ALTER {} {} SET ({})").format(
                    sql.SQL("MATERIALIZED VIEW" if kind == "m" else "TABLE"),
                    sql.Identifier("public", name),
                    sql.SQL(", ").join(sql.SQL(o) for o in _options(entry["options"]))))
    return made, sorted(missing)


def _options(options: list[str]) -> list[str]:
    """Storage parameters as ``name=value`` SQL (names and values are PostgreSQL's own words
    and numbers; anything else is refused rather than spliced in)."""
    out = []
    for option in options:
        name, _, value = option.partition("=")
        if not name.replace("_", "").replace(".", "").isalnum() or not all(
                ch.isalnum() or ch in "._-" for ch in value):
            raise DRError(f"unexpected storage parameter {option!r}: set it by hand")
        out.append(f"{name}={value}" if value.replace(".", "").isdigit()
                   else f"{name}='{value}'")
    return out


def _kind(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON "
                       "n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = %s",
                       (name,)).fetchone()
    return str(row[0]) if row else None


def properties(conn: psycopg.Connection, name: str, schema: str = "public") -> dict[str, Any]:
    """One relation's comment, storage parameters, owner and grants (as :func:`record`)."""
    row = conn.execute(
        "SELECT c.oid, obj_description(c.oid, 'pg_class'), c.reloptions, "
        "pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, name)).fetchone()
    if row is None:
        return {}
    return {"comment": row[1], "options": list(row[2] or []), "owner": str(row[3]),
            "grants": _grants_of(conn, "pg_class", row[0])}


def copy_table(conn: psycopg.Connection, table: str, schema: str) -> None:
    """Give ``schema.table`` (a rebuilt copy) the comment, storage parameters, owner and grants
    of ``public.table``, which it is about to replace. Raises psycopg.Error."""
    live, copy = properties(conn, table), properties(conn, table, schema)
    target = sql.Identifier(schema, table)
    if live.get("comment") is not None and copy.get("comment") != live["comment"]:
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            target, sql.Literal(live["comment"])))
    if live.get("options"):
        conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(
            target, sql.SQL(", ").join(sql.SQL(o) for o in _options(live["options"]))))
    if live.get("owner") and live["owner"] != copy.get("owner"):
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            target, sql.Identifier(live["owner"])))
    for grant in live.get("grants", []):
        conn.execute(_grant(sql.SQL("TABLE {}").format(target), grant))


def compare(conn: psycopg.Connection, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """How ``conn``'s database differs from the record: (differences, roles missing on this
    server, whose grants are not expected)."""
    missing = set(missing_roles(conn, meta))
    problems: list[str] = []
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = 'public'").fetchone()
    have_schema = _grants_of(conn, "pg_namespace", row[0]) if row else []
    for grant in meta.get("schema_grants", []):
        if grant[0] not in missing and grant not in have_schema:
            problems.append(f"schema public lacks GRANT {grant[1]} TO {grant[0]}")
    for name, entry in sorted(meta.get("tables", {}).items()):
        have = properties(conn, name)
        if not have:
            problems.append(f"{name} is missing")
            continue
        if entry.get("comment") and have["comment"] != entry["comment"]:
            problems.append(f"{name} lost its comment")
        if sorted(entry.get("options", [])) != sorted(have["options"]) and entry.get("options"):
            problems.append(f"{name} has storage parameters {have['options']}, the backup "
                            f"{entry['options']}")
        for grant in entry.get("grants", []):
            if grant[0] not in missing and grant not in have["grants"]:
                problems.append(f"{name} lacks GRANT {grant[1]} TO {grant[0]}")
    return problems, sorted(missing)
