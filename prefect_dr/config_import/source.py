"""The configuration export a backup holds: read and checked (:func:`read_export`,
:func:`check_export`), indexed by id with the relations restore-config follows
(:class:`Export`), and the secret values of its block data registered with redact."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect_dr import crypto, export, redact
from prefect_dr.checks import Checks, Report
from prefect_dr.config_import.model import ConfigImportError
from prefect_dr.errors import NotFoundError
from prefect_dr.manifest import ARTIFACT_CONFIG, Manifest
from prefect_dr.restore_stream import read_small_artifacts
from prefect_dr.storage.base import Storage

_SECRET_MIN_LEN = 4


def read_export(storage: Storage, manifest: Manifest,
                identities: list[crypto.Identity]) -> dict[str, Any]:
    """Download, check and decrypt the configuration export of a complete backup.

    Raises NotFoundError when the backup has no export, CryptoKeyError when no identity
    decrypts it, VerificationError/StorageError when it is damaged or unreadable, and
    ConfigImportError when it is not a configuration export this version understands.
    """
    if manifest.artifact(ARTIFACT_CONFIG) is None:
        raise NotFoundError(f"backup {manifest.backup_id} holds no configuration export")
    doc, _ = read_small_artifacts(storage, manifest, identities,
                                  Checks(Report(manifest.backup_id, "")))
    if doc is None:
        raise NotFoundError(f"backup {manifest.backup_id} holds no configuration export")
    check_export(doc)
    return doc


def check_export(export_doc: Any) -> None:
    """Raise ConfigImportError unless ``export_doc`` is a version-1 configuration export."""
    if not isinstance(export_doc, dict) or export_doc.get("format") != export.FORMAT:
        raise ConfigImportError("not a prefect-dr configuration export")
    if export_doc.get("format_version") != export.FORMAT_VERSION:
        raise ConfigImportError(f"configuration export format_version "
                                f"{export_doc.get('format_version')!r} is not supported "
                                f"(this version reads {export.FORMAT_VERSION})")


def section_rows(doc: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The rows of one section of the export (malformed entries left out)."""
    found = doc.get(section) or []
    return [r for r in found if isinstance(r, dict)]


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows keyed by their (export) id."""
    return {str(r["id"]): r for r in items if r.get("id")}


# --- the export, indexed -------------------------------------------------------------------


class Export:
    """The export's rows, indexed by id, with the relations restore-config follows."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.block_types = by_id(section_rows(doc, "block_types"))
        self.block_schemas = by_id(section_rows(doc, "block_schemas"))
        self.block_documents = by_id(section_rows(doc, "block_documents"))
        self.variables = section_rows(doc, "variables")
        self.work_pools = by_id(section_rows(doc, "work_pools"))
        self.work_queues = by_id(section_rows(doc, "work_queues"))
        self.flows = by_id(section_rows(doc, "flows"))
        self.deployments = by_id(section_rows(doc, "deployments"))
        self.automations = by_id(section_rows(doc, "automations"))
        self.concurrency_limits = by_id(section_rows(doc, "concurrency_limits"))
        self.schedules: dict[str, list[dict[str, Any]]] = {}
        for s in section_rows(doc, "deployment_schedules"):
            self.schedules.setdefault(str(s.get("deployment_id")), []).append(s)
        self.doc_refs: dict[str, list[dict[str, Any]]] = {}
        for r in section_rows(doc, "block_document_references"):
            self.doc_refs.setdefault(str(r.get("parent_block_document_id")), []).append(r)
        self.schema_refs: dict[str, list[str]] = {}
        for r in section_rows(doc, "block_schema_references"):
            self.schema_refs.setdefault(str(r.get("parent_block_schema_id")), []).append(
                str(r.get("reference_block_schema_id")))
        self.owner_resource: dict[str, str] = {}
        for r in section_rows(doc, "automation_related_resources"):
            if r.get("automation_owned_by_resource") and r.get("resource_id"):
                self.owner_resource[str(r.get("automation_id"))] = str(r["resource_id"])

    def doc_key(self, d: dict[str, Any]) -> tuple[str, str]:
        slug = d.get("block_type_slug") or (
            self.block_types.get(str(d.get("block_type_id"))) or {}).get("slug")
        return str(slug), str(d.get("name"))

    def schema_key(self, s: dict[str, Any]) -> tuple[str, str]:
        return str(s.get("checksum")), str(s.get("version") or "")

    def pool_of_queue(self, queue_id: Any) -> str | None:
        q = self.work_queues.get(str(queue_id))
        pool = self.work_pools.get(str(q.get("work_pool_id"))) if q else None
        return str(pool["name"]) if pool else None

    def deployment_key(self, d: dict[str, Any]) -> tuple[str, str]:
        flow = self.flows.get(str(d.get("flow_id"))) or {}
        return str(flow.get("name", "")), str(d.get("name"))


# --- block data secrets --------------------------------------------------------------------


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v, (*path, "*"))
    else:
        yield path, value


def _under(path: tuple[str, ...], secret: tuple[str, ...]) -> bool:
    return len(path) >= len(secret) and all(
        s in ("*", p) for s, p in zip(secret, path, strict=False))


def register_secrets(data: Any, schema_fields: Any) -> None:
    """Register the secret values of block ``data`` with redact, so no message shows them.

    Secret values are the fields the block schema lists in ``secret_fields`` (dotted paths,
    ``*`` for any key, as Prefect reads them); without a schema every string counts as secret.
    """
    secret_fields = schema_fields.get("secret_fields") if isinstance(schema_fields, dict) \
        else None
    paths = None if secret_fields is None else [tuple(str(f).split(".")) for f in secret_fields]
    for path, value in _leaves(data):
        if not isinstance(value, str) or len(value) < _SECRET_MIN_LEN:
            continue
        if paths is None or any(_under(path, p) for p in paths):
            redact.register(value)
