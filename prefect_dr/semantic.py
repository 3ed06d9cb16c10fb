"""Semantic checks of a restored database, run by verify (on its scratch database) and by
restore (before the swap): schema revision, row counts, block documents decrypting, the
configuration export agreeing with the database, required extensions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from prefect_dr import interrupt
from prefect_dr import prefect_schema as ps
from prefect_dr.checks import Checks
from prefect_dr.errors import DRError, VerificationError
from prefect_dr.manifest import Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import privileges

REQUIRED_EXTENSIONS = ("pg_trgm",)


def semantic_checks(conn: psycopg.Connection, manifest: Manifest,
                    export_doc: dict[str, Any] | None, escrowed: str | None,
                    env: Mapping[str, str], checks: Checks,
                    deferred: frozenset[str] = frozenset()) -> None:
    """Run every semantic check on the restored database ``conn``, each recorded in
    ``checks``; a failed one does not stop the others. The row counts of ``deferred`` tables
    (loaded later, by a tiered restore's phase 2) are not checked here. Raises
    VerificationError naming how many failed (Interrupted when stopped by a signal)."""
    failures = 0

    def soft(name: str, fn: Callable[[dict[str, str]], None]) -> None:
        nonlocal failures
        try:
            with checks.run(name) as out:
                fn(out)
        except DRError:
            interrupt.raise_if_noted()
            failures += 1

    def revision(out: dict[str, str]) -> None:
        got = pgc.alembic_revision(conn)
        if got != manifest.alembic_revision:
            raise VerificationError(f"alembic revision {got} != manifest's "
                                    f"{manifest.alembic_revision}")
        out["detail"] = f"alembic revision {got}"

    def row_counts(out: dict[str, str]) -> None:
        exact = 0
        for table, entry in sorted(manifest.row_counts.items()):
            if not entry.get("exact") or table in deferred:
                continue
            got = pgc.count_rows(conn, table) if pgc.table_exists(conn, table) else None
            if got != entry["rows"]:
                raise VerificationError(f"table {table}: {got} rows restored, manifest says "
                                        f"{entry['rows']}")
            exact += 1
        out["detail"] = f"{exact} tables match exactly" + (
            f", {len(deferred)} follow in phase 2" if deferred else "")

    def blocks(out: dict[str, str]) -> None:
        docs = ps.encrypted_blocks(conn)
        stored, given = ps.database_key(conn), ps.configured_key(env)
        key = escrowed or (stored.key if stored else None) or (given.key if given else None)
        if not docs:
            out["detail"] = "no block documents"
            return
        if key is None:
            raise VerificationError(f"{len(docs)} block documents and no key to decrypt them")
        bad = ps.undecryptable(docs, key)
        allowed = int(manifest.block_key.get("undecryptable") or 0)
        if len(bad) > allowed:
            raise VerificationError(f"{len(bad)} block documents do not decrypt "
                                    f"(first: {bad[0]!r})")
        out["detail"] = f"{len(docs) - len(bad)} of {len(docs)} block documents decrypt"

    def agreement(out: dict[str, str]) -> None:
        if export_doc is None:
            raise VerificationError("no configuration export to compare")
        _compare_export(conn, export_doc)
        out["detail"] = ", ".join(f"{k} {v}" for k, v in export_doc.get("summary", {}).items()
                                  if v)

    def extensions(out: dict[str, str]) -> None:
        have = {r[0] for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}
        missing = [e for e in REQUIRED_EXTENSIONS if e not in have]
        if missing:
            raise VerificationError(f"missing extensions: {', '.join(missing)}")
        out["detail"] = ", ".join(sorted(have))

    for name, fn in (("schema revision", revision), ("row counts", row_counts),
                     ("block decryption", blocks), ("config export", agreement),
                     ("extensions", extensions)):
        soft(name, fn)
    if failures:
        raise VerificationError(f"{failures} semantic checks failed")


def _names(conn: psycopg.Connection, table: str, where: str = "") -> set[str]:
    if not pgc.table_exists(conn, table):
        return set()
    return {str(r[0]) for r in conn.execute(f"SELECT name FROM {table} {where}").fetchall()}


def _compare_export(conn: psycopg.Connection, export_doc: dict[str, Any]) -> None:
    """Raise VerificationError unless the export names what the restored database holds."""
    pairs = [
        ("block documents", {b["name"] for b in export_doc.get("block_documents", [])},
         _names(conn, "block_document")),
        ("variables", {v["name"] for v in export_doc.get("variables", [])},
         _names(conn, "variable")),
        ("work pools", {p["name"] for p in export_doc.get("work_pools", [])},
         _names(conn, "work_pool")),
        ("deployments", {d["name"] for d in export_doc.get("deployments", [])},
         _names(conn, "deployment")),
        ("automations", {a["name"] for a in export_doc.get("automations", [])},
         _names(conn, "automation")),
    ]
    for what, exported, restored in pairs:
        if exported != restored:
            diff = sorted(exported ^ restored)[:3]
            raise VerificationError(f"{what} differ between export and database: {diff}")
    values = {v["name"]: v.get("value") for v in export_doc.get("variables", [])}
    if pgc.table_exists(conn, "variable"):
        for name, value in conn.execute("SELECT name, value FROM variable").fetchall():
            if values.get(name) != value:
                raise VerificationError(f"variable {name!r} differs between export and database")


def restore_privileges(conn: psycopg.Connection, manifest: Manifest, checks: Checks,
                       role: str | None = None) -> list[str]:
    """Grant again, in a restored database, what the backup recorded (pg_restore ran with
    --no-privileges): to the roles that exist on this server, as ``role`` (the owner) when
    given; then compare comments, storage parameters and grants with the record, as the check
    ``privileges``. Returns the roles missing on this server (their grants are not restored).
    Raises VerificationError on a difference."""
    meta = manifest.privileges
    with checks.run("privileges") as out:
        if meta is None:
            out["detail"] = ("the backup predates privilege records: grants to other roles "
                             "are not restored")
            return []
        with conn.transaction():
            if role:
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            made, missing = privileges.apply(conn, meta)
        problems, _ = privileges.compare(conn, meta)
        owners = {r[0] for r in conn.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')")}
        if len(owners) > 1:
            problems.append(f"the restored tables have {len(owners)} owners "
                            f"({', '.join(sorted(owners))}), not one")
        if problems:
            raise VerificationError("privileges: " + "; ".join(problems[:5]))
        out["detail"] = (f"{made} grants restored, "
                         f"{len(meta.get('tables', {}))} relations' comments, storage "
                         "parameters and grants as recorded" + (
                             f"; roles missing on this server (their grants are not "
                             f"restored): {', '.join(missing)}" if missing else ""))
        return missing
