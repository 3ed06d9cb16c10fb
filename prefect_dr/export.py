"""The portable configuration export: Prefect's configuration as versioned JSON.

Read from the same database snapshot as the dump (so export, dump and row counts describe one
moment), with block documents' data decrypted so the export can be imported into another
server whatever its key. Schema in docs/format.md.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from psycopg import sql

from prefect_dr import interrupt
from prefect_dr import prefect_schema as ps
from prefect_dr.errors import VerificationError
from prefect_dr.pg.connect import table_exists

FORMAT = "prefect-dr-config-export"
FORMAT_VERSION = 1

#: export section -> table; each row as PostgreSQL's row_to_json gives it.
SECTIONS: dict[str, str] = {
    "block_types": "block_type", "block_schemas": "block_schema",
    "block_schema_references": "block_schema_reference",
    "block_document_references": "block_document_reference",
    "variables": "variable", "work_pools": "work_pool", "work_queues": "work_queue",
    "flows": "flow", "deployments": "deployment", "deployment_schedules": "deployment_schedule",
    "deployment_versions": "deployment_version", "automations": "automation",
    "automation_related_resources": "automation_related_resource",
    "concurrency_limits": "concurrency_limit_v2", "task_concurrency_limits": "concurrency_limit",
    "saved_searches": "saved_search",
}


def _rows(conn: psycopg.Connection, table: str) -> list[dict[str, Any]]:
    if not table_exists(conn, table):
        return []
    query = sql.SQL("SELECT row_to_json(t) FROM {} t ORDER BY row_to_json(t)::text").format(
        sql.Identifier("public", table))
    return [r[0] if isinstance(r[0], dict) else json.loads(r[0])
            for r in conn.execute(query).fetchall()]


def build(conn: psycopg.Connection, *, backup_id: str, key: ps.BlockKey | None,
          prefect_version: str | None, alembic_revision: str | None) -> dict[str, Any]:
    """Read the export from ``conn`` (inside the backup's snapshot transaction)."""
    export: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "backup_id": backup_id,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(), "source": "database-snapshot",
        "prefect_version": prefect_version, "alembic_revision": alembic_revision,
    }
    for section, table in SECTIONS.items():
        export[section] = _rows(conn, table)
    slugs = {t["id"]: t.get("slug") for t in export["block_types"]}
    checksums = {s["id"]: s.get("checksum") for s in export["block_schemas"]}
    documents = []
    for row in _rows(conn, "block_document"):
        token = row.get("data")
        data: Any = None
        decrypted = False
        if key is not None and isinstance(token, str):
            try:
                data, decrypted = ps.decrypt_block(token, key.key), True
            except Exception:
                interrupt.raise_if_noted()
                data = None
        documents.append({
            "id": row["id"], "name": row.get("name"), "is_anonymous": row.get("is_anonymous"),
            "block_type_id": row.get("block_type_id"),
            "block_type_slug": slugs.get(row.get("block_type_id")),
            "block_schema_id": row.get("block_schema_id"),
            "block_schema_checksum": checksums.get(row.get("block_schema_id")),
            "created": row.get("created"), "updated": row.get("updated"),
            "data": data, "decrypted": decrypted,
        })
    export["block_documents"] = documents
    export["summary"] = summary(export)
    return export


class ExportError(VerificationError):
    """A configuration export is malformed or of an unknown version."""


def parse(raw: bytes, where: str = "configuration export") -> dict[str, Any]:
    """Parse and validate export bytes. Raises ExportError naming the problem."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ExportError(f"{where} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f"{where} is not a prefect-dr configuration export")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(f"{where} has format_version {version!r}; this prefect-dr reads "
                          f"{FORMAT_VERSION} (upgrade prefect-dr)")
    for section in (*SECTIONS, "block_documents"):
        rows = data.get(section, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ExportError(f"{where}: section {section!r} must be a list of objects")
    for section in ("block_documents", "variables", "work_pools", "deployments", "automations"):
        for row in data.get(section, []):
            if not isinstance(row.get("name"), str):
                raise ExportError(f"{where}: an entry of {section!r} has no name")
    if not isinstance(data.get("summary", {}), dict):
        raise ExportError(f"{where}: summary must be an object")
    return data


def summary(export: dict[str, Any]) -> dict[str, int]:
    """Object counts per section (what restore-config and verify compare)."""
    return {name: len(export.get(name) or []) for name in
            ("block_types", "block_schemas", "block_documents", "variables", "work_pools",
             "work_queues", "flows", "deployments", "deployment_schedules", "automations",
             "concurrency_limits")}
