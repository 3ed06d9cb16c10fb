"""`restore-config`: import a backup's configuration export into a live Prefect server.

Through the server's REST API only (never its database), so the target may be a new server, a
new Prefect version, or the same server after an accident. Two steps, like retention:

* :func:`plan` reads what the target holds and decides, object by object, what importing the
  export would do (``create``, ``skip (exists)``, ``overwrite``, ``unchanged``) and which fields
  differ. It changes nothing (``--dry-run`` stops here).
* :func:`apply` carries a plan out in dependency order and counts what happened; one object's
  failure does not stop the others.

Objects are matched by name: block documents by block type slug + name, work queues by pool +
queue name, deployments by flow name + deployment name. Ids differ between servers, so every id
an object refers to (flow, work pool, block document, concurrency limit, deployment in an
automation) is translated to the target's id. Limitations are listed in docs/restore-config.md.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect_dr import crypto, export, interrupt, redact
from prefect_dr.errors import USAGE, DRError, Interrupted, NotFoundError
from prefect_dr.manifest import Manifest
from prefect_dr.prefect_api import PrefectAPIError, paged, request, server_version
from prefect_dr.storage.base import Storage

#: what ``--only`` accepts (the plan orders objects by dependency, not by this tuple).
SECTIONS = ("blocks", "variables", "work-pools", "deployments", "automations",
            "concurrency-limits")
ON_CONFLICT = ("skip", "overwrite")
OnConflict = Literal["skip", "overwrite"]

CREATE = "create"
SKIP = "skip (exists)"
OVERWRITE = "overwrite"
UNCHANGED = "unchanged"
#: the export holds the object but it cannot be imported (``note`` says why).
NOT_IMPORTABLE = "cannot import"
ACTIONS = (CREATE, SKIP, OVERWRITE, UNCHANGED, NOT_IMPORTABLE)

# Item kinds (what the "name" column names).
BLOCK_TYPE = "block type"
BLOCK_SCHEMA = "block schema"
BLOCK_DOCUMENT = "block document"
BLOCK_DOCUMENT_ANONYMOUS = "block document (anonymous)"
VARIABLE = "variable"
CONCURRENCY_LIMIT = "concurrency limit"
WORK_POOL = "work pool"
WORK_QUEUE = "work queue"
FLOW = "flow"
DEPLOYMENT = "deployment"
AUTOMATION = "automation"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DEPLOYMENT_LIMIT_PREFIX = "deployment:"
_SECRET_MIN_LEN = 4


class ConfigImportError(DRError):
    """The export cannot be imported at all (wrong format), or the arguments are invalid."""


# --- results -------------------------------------------------------------------------------


@dataclass
class PlanItem:
    """What importing one exported object would do to the target.

    ``diff`` names the fields that differ between the export and the target (never values:
    block data is summarized as ``data differs (keys: ...)``); it is filled for existing objects
    whatever the action, so a ``skip (exists)`` also shows what ``overwrite`` would change.
    ``note`` explains a ``cannot import`` or a caveat. ``source_id`` is the object's id in the
    export, ``target_id`` the matching object's id on the target (None when it is missing).
    """

    section: str
    kind: str
    name: str
    action: str
    diff: list[str] = field(default_factory=list)
    note: str | None = None
    source_id: str | None = None
    target_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``--json`` prints per object)."""
        return {"section": self.section, "kind": self.kind, "name": self.name,
                "action": self.action, "diff": list(self.diff), "note": self.note}


@dataclass
class ImportPlan:
    """Everything :func:`plan` decided; input of :func:`apply`."""

    api_url: str
    target_version: str
    backup_id: str | None
    only: tuple[str, ...]
    on_conflict: str
    items: list[PlanItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: export id -> target id of every exported object already on the target.
    id_map: dict[str, str] = field(default_factory=dict)
    #: work pool name -> id of its default queue on the target.
    default_queues: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Number of items per action (every action present, zero or not)."""
        out = dict.fromkeys(ACTIONS, 0)
        for item in self.items:
            out[item.action] = out.get(item.action, 0) + 1
        return out

    @property
    def changes(self) -> int:
        """How many items apply would write (create or overwrite)."""
        return sum(1 for i in self.items if i.action in (CREATE, OVERWRITE))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore-config --dry-run --json``); holds no secret."""
        return {"backup_id": self.backup_id,
                "target": redact.url_without_password(self.api_url),
                "target_version": self.target_version, "only": list(self.only),
                "on_conflict": self.on_conflict, "counts": self.counts,
                "items": [i.to_dict() for i in self.items], "warnings": list(self.warnings)}


CREATED, OVERWRITTEN, SKIPPED, FAILED = "created", "overwritten", "skipped", "failed"
OUTCOMES = (CREATED, OVERWRITTEN, UNCHANGED, SKIPPED, FAILED)


@dataclass
class ItemResult:
    """What :func:`apply` did with one plan item; ``error`` is the first line of a failure."""

    section: str
    kind: str
    name: str
    action: str
    outcome: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"section": self.section, "kind": self.kind, "name": self.name,
                "action": self.action, "outcome": self.outcome, "error": self.error}


@dataclass
class ImportResult:
    """The outcome of :func:`apply`: one entry per plan item, in the order they were applied."""

    items: list[ItemResult] = field(default_factory=list)

    def _count(self, outcome: str) -> int:
        return sum(1 for i in self.items if i.outcome == outcome)

    @property
    def created(self) -> int:
        """Objects created on the target."""
        return self._count(CREATED)

    @property
    def overwritten(self) -> int:
        """Existing objects updated to the export's state."""
        return self._count(OVERWRITTEN)

    @property
    def unchanged(self) -> int:
        """Existing objects already equal to the export (``overwrite`` had nothing to do)."""
        return self._count(UNCHANGED)

    @property
    def skipped(self) -> int:
        """Existing objects left untouched (``--on-conflict skip``)."""
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        """Objects that could not be imported."""
        return self._count(FAILED)

    @property
    def failures(self) -> list[ItemResult]:
        """The failed items, each with the first line of its error."""
        return [i for i in self.items if i.outcome == FAILED]

    @property
    def ok(self) -> bool:
        """True when nothing failed (the CLI exits 3, partial, otherwise)."""
        return self.failed == 0

    @property
    def counts(self) -> dict[str, int]:
        """Number of items per outcome."""
        return {o: self._count(o) for o in OUTCOMES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``restore-config --json``)."""
        return {"ok": self.ok, "counts": self.counts,
                "failures": [{"section": f.section, "kind": f.kind, "name": f.name,
                              "error": f.error} for f in self.failures],
                "items": [i.to_dict() for i in self.items]}


# --- reading the export ----------------------------------------------------------------------


def read_export(storage: Storage, manifest: Manifest,
                identities: list[crypto.Identity]) -> dict[str, Any]:
    """Download, check and decrypt the configuration export of a complete backup.

    Raises NotFoundError when the backup has no export, CryptoKeyError when no identity
    decrypts it, VerificationError/StorageError when it is damaged or unreadable, and
    ConfigImportError when it is not a configuration export this version understands.
    """
    from prefect_dr.verify import Checks, Report, read_small_artifacts

    if manifest.artifact("config") is None:
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


def parse_only(value: str | Iterable[str] | None) -> set[str]:
    """The sections a ``--only`` value names (comma-separated or a list); all when empty.

    Raises ConfigImportError (exit code 2) naming unknown sections.
    """
    if value is None:
        return set(SECTIONS)
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = {p.strip() for p in parts if p and p.strip()}
    unknown = sorted(names - set(SECTIONS))
    if unknown:
        raise ConfigImportError(f"unknown section(s) {', '.join(unknown)}; choose from "
                                f"{', '.join(SECTIONS)}", exit_code=USAGE)
    return names or set(SECTIONS)


# --- helpers -------------------------------------------------------------------------------


def _rows(doc: dict[str, Any], section: str) -> list[dict[str, Any]]:
    rows = doc.get(section) or []
    return [r for r in rows if isinstance(r, dict)]


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in rows if r.get("id")}


def _pick(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: row[k] for k in keys if k in row}


def _strip_ids(value: Any) -> Any:
    """A copy of an automation trigger without its (server-assigned) ``id`` keys."""
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


def _remap(value: Any, id_map: dict[str, str]) -> Any:
    """``value`` with every export id found in strings replaced by the target's id."""
    if not id_map:
        return copy.deepcopy(value)
    text = json.dumps(value)
    text = _UUID.sub(lambda m: id_map.get(m.group(0), m.group(0)), text)
    return json.loads(text)


def _ts(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.UTC)
        return parsed.isoformat()
    return value


def _norm_schedule(schedule: Any) -> Any:
    if not isinstance(schedule, dict):
        return schedule
    out = dict(schedule)
    if "anchor_date" in out:
        out["anchor_date"] = _ts(out["anchor_date"])
    if isinstance(out.get("interval"), int | float):
        out["interval"] = float(out["interval"])
    return out


def _user_labels(labels: Any) -> dict[str, Any]:
    """Labels without Prefect's system labels (``prefect.*``, set by the server)."""
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if not str(k).startswith("prefect.")}


def _sorted_list(value: Any) -> list[Any]:
    return sorted(value or [], key=lambda v: json.dumps(v, sort_keys=True))


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


def _register_secrets(data: Any, schema_fields: Any) -> None:
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


def _first_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, DRError) else f"{type(exc).__name__}: {exc}"
    lines = str(text).strip().splitlines() or [type(exc).__name__]
    return redact.redact(" ".join(lines[0].split()))[:300]


# --- the target server -----------------------------------------------------------------------


@dataclass
class _Target:
    """What the target server holds, keyed the way exported objects are matched."""

    block_types: dict[str, dict[str, Any]]              # slug ->
    block_schemas: dict[tuple[str, str], dict[str, Any]]  # (checksum, version) ->
    #: (type slug, version, canonical JSON of fields) -> schema: PostgreSQL's jsonb reorders
    #: keys, so a schema created from an export gets another checksum than the export's.
    block_schemas_by_fields: dict[tuple[str, str, str], dict[str, Any]]
    block_documents: dict[tuple[str, str], dict[str, Any]]  # (type slug, name) ->
    variables: dict[str, dict[str, Any]]
    concurrency_limits: dict[str, dict[str, Any]]
    work_pools: dict[str, dict[str, Any]]
    work_queues: dict[tuple[str, str], dict[str, Any]]  # (pool, queue) ->
    flows: dict[str, dict[str, Any]]
    deployments: dict[tuple[str, str], dict[str, Any]]  # (flow name, deployment name) ->
    automations: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, api: str, pools_of_interest: Iterable[str]) -> _Target:
        types = {t["slug"]: t for t in paged(api, "/block_types/filter")}
        schemas = {(s["checksum"], s.get("version") or ""): s
                   for s in paged(api, "/block_schemas/filter")}
        type_slug = {t["id"]: slug for slug, t in types.items()}
        by_fields = {(str(type_slug.get(s.get("block_type_id"))), s.get("version") or "",
                      _canonical_fields(s.get("fields"))): s for s in schemas.values()}
        docs = {}
        for d in paged(api, "/block_documents/filter",
                       {"block_documents": {"is_anonymous": None}, "include_secrets": True}):
            slug = (d.get("block_type") or {}).get("slug") or type_slug.get(d["block_type_id"])
            docs[(str(slug), str(d["name"]))] = d
        pools = {p["name"]: p for p in paged(api, "/work_pools/filter")}
        queues = {}
        for pool in sorted(set(pools_of_interest) & set(pools)):
            for q in paged(api, f"/work_pools/{_quote(pool)}/queues/filter"):
                queues[(pool, q["name"])] = q
        flows = {f["name"]: f for f in paged(api, "/flows/filter")}
        flow_names = {f["id"]: name for name, f in flows.items()}
        deployments = {}
        for d in paged(api, "/deployments/filter"):
            deployments[(flow_names.get(d["flow_id"], ""), d["name"])] = d
        automations: dict[str, dict[str, Any]] = {}
        for a in paged(api, "/automations/filter"):
            automations.setdefault(a["name"], a)
        return cls(
            block_types=types, block_schemas=schemas, block_schemas_by_fields=by_fields,
            block_documents=docs,
            variables={v["name"]: v for v in paged(api, "/variables/filter")},
            concurrency_limits={c["name"]: c
                                for c in paged(api, "/v2/concurrency_limits/filter")},
            work_pools=pools, work_queues=queues, flows=flows, deployments=deployments,
            automations=automations)


def _canonical_fields(fields: Any) -> str:
    """Block schema fields as comparable text (the server adds an empty
    ``block_schema_references`` to the fields of a schema created through the API)."""
    if isinstance(fields, dict) and not fields.get("block_schema_references"):
        fields = {k: v for k, v in fields.items() if k != "block_schema_references"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


# --- the export, indexed -------------------------------------------------------------------


class _Export:
    """The export's rows, indexed by id, with the relations restore-config follows."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.block_types = _by_id(_rows(doc, "block_types"))
        self.block_schemas = _by_id(_rows(doc, "block_schemas"))
        self.block_documents = _by_id(_rows(doc, "block_documents"))
        self.variables = _rows(doc, "variables")
        self.work_pools = _by_id(_rows(doc, "work_pools"))
        self.work_queues = _by_id(_rows(doc, "work_queues"))
        self.flows = _by_id(_rows(doc, "flows"))
        self.deployments = _by_id(_rows(doc, "deployments"))
        self.automations = _by_id(_rows(doc, "automations"))
        self.concurrency_limits = _by_id(_rows(doc, "concurrency_limits"))
        self.schedules: dict[str, list[dict[str, Any]]] = {}
        for s in _rows(doc, "deployment_schedules"):
            self.schedules.setdefault(str(s.get("deployment_id")), []).append(s)
        self.doc_refs: dict[str, list[dict[str, Any]]] = {}
        for r in _rows(doc, "block_document_references"):
            self.doc_refs.setdefault(str(r.get("parent_block_document_id")), []).append(r)
        self.schema_refs: dict[str, list[str]] = {}
        for r in _rows(doc, "block_schema_references"):
            self.schema_refs.setdefault(str(r.get("parent_block_schema_id")), []).append(
                str(r.get("reference_block_schema_id")))
        self.owner_resource: dict[str, str] = {}
        for r in _rows(doc, "automation_related_resources"):
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


# --- desired state (export row -> API body) ----------------------------------------------------


def _variable_body(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "value": row.get("value"), "tags": list(row.get("tags") or [])}


def _limit_body(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "limit": int(row.get("limit") or 0),
            "active": bool(row.get("active", True)),
            "slot_decay_per_second": float(row.get("slot_decay_per_second") or 0.0)}


def _pool_body(row: dict[str, Any], id_map: dict[str, str]) -> dict[str, Any]:
    body = _pick(row, "name", "description", "type", "base_job_template", "is_paused",
                 "concurrency_limit")
    storage = row.get("storage_configuration")
    if isinstance(storage, dict):
        body["storage_configuration"] = _remap(storage, id_map)
    return body


def _queue_body(row: dict[str, Any]) -> dict[str, Any]:
    return _pick(row, "name", "description", "is_paused", "concurrency_limit", "priority")


def _flow_body(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "tags": list(row.get("tags") or []),
            "labels": _user_labels(row.get("labels"))}


def _automation_body(row: dict[str, Any], id_map: dict[str, str]) -> dict[str, Any]:
    body = _pick(row, "name", "description", "enabled", "tags", "trigger", "actions",
                 "actions_on_trigger", "actions_on_resolve")
    body = _remap(body, id_map)
    if isinstance(body.get("trigger"), dict):
        body["trigger"] = _strip_ids(body["trigger"])
    return body


_AUTOMATION_FIELDS = ("description", "enabled", "tags", "trigger", "actions",
                      "actions_on_trigger", "actions_on_resolve")
_POOL_FIELDS = ("description", "type", "base_job_template", "is_paused", "concurrency_limit",
                "storage_configuration")
_QUEUE_FIELDS = ("description", "is_paused", "concurrency_limit", "priority")
_DEPLOYMENT_FIELDS = ("description", "version", "paused", "parameters", "tags", "labels",
                      "entrypoint", "path", "pull_steps", "job_variables",
                      "parameter_openapi_schema", "enforce_parameter_schema", "work_pool_name",
                      "work_queue_name", "concurrency_limit", "global_concurrency_limit",
                      "concurrency_options", "storage_document_id",
                      "infrastructure_document_id", "schedules")


# --- planning -------------------------------------------------------------------------------


class _Planner:
    def __init__(self, ex: _Export, target: _Target, only: set[str], on_conflict: str,
                 result: ImportPlan) -> None:
        self.ex, self.t, self.only, self.on_conflict = ex, target, only, on_conflict
        self.plan = result
        self.id_map = result.id_map

    def add(self, section: str, kind: str, name: str, *, exists: dict[str, Any] | None,
            diff: list[str] | None = None, source_id: Any = None,
            note: str | None = None, action: str | None = None) -> PlanItem:
        diff = diff or []
        if action is None:
            if exists is None:
                action = CREATE
            elif self.on_conflict == "skip":
                action = SKIP
            else:
                action = OVERWRITE if diff else UNCHANGED
        target_id = str(exists["id"]) if exists and exists.get("id") else None
        if source_id is not None and target_id is not None:
            self.id_map[str(source_id)] = target_id
        item = PlanItem(section, kind, name, action, diff, note,
                        str(source_id) if source_id is not None else None, target_id)
        self.plan.items.append(item)
        return item

    def match_only(self) -> None:
        """Fill the id map for every exported object already on the target (all sections),
        so references resolve even when the referenced section is not imported."""
        ex, t, m = self.ex, self.t, self.id_map
        for i, row in ex.block_types.items():
            if row.get("slug") in t.block_types:
                m[i] = t.block_types[row["slug"]]["id"]
        for i, row in ex.block_schemas.items():
            slug = str((ex.block_types.get(str(row.get("block_type_id"))) or {}).get("slug"))
            same = t.block_schemas.get(ex.schema_key(row)) or t.block_schemas_by_fields.get(
                (slug, str(row.get("version") or ""), _canonical_fields(row.get("fields"))))
            if same is not None:
                m[i] = same["id"]
        for i, row in ex.block_documents.items():
            if ex.doc_key(row) in t.block_documents:
                m[i] = t.block_documents[ex.doc_key(row)]["id"]
        for i, row in ex.concurrency_limits.items():
            if row.get("name") in t.concurrency_limits:
                m[i] = t.concurrency_limits[row["name"]]["id"]
        for i, row in ex.work_pools.items():
            if row.get("name") in t.work_pools:
                m[i] = t.work_pools[row["name"]]["id"]
        for i, row in ex.work_queues.items():
            key = (ex.pool_of_queue(i) or "", str(row.get("name")))
            if key in t.work_queues:
                m[i] = t.work_queues[key]["id"]
        for i, row in ex.flows.items():
            if row.get("name") in t.flows:
                m[i] = t.flows[row["name"]]["id"]
        for i, row in ex.deployments.items():
            if ex.deployment_key(row) in t.deployments:
                m[i] = t.deployments[ex.deployment_key(row)]["id"]
        for i, row in ex.automations.items():
            if row.get("name") in t.automations:
                m[i] = t.automations[row["name"]]["id"]
        for name, pool in t.work_pools.items():
            if pool.get("default_queue_id"):
                self.plan.default_queues[name] = str(pool["default_queue_id"])

    # blocks ---------------------------------------------------------------------------------

    def blocks(self) -> None:
        ex = self.ex
        docs = sorted(ex.block_documents.values(), key=lambda d: ex.doc_key(d))
        # The schemas the documents need, with the schemas they nest, children first.
        needed_schemas: list[str] = []

        def need(schema_id: str, depth: int = 0) -> None:
            if schema_id in needed_schemas or depth > 20:
                return
            for child in ex.schema_refs.get(schema_id, []):
                need(child, depth + 1)
            needed_schemas.append(schema_id)

        for d in docs:
            if d.get("block_schema_id"):
                need(str(d["block_schema_id"]))
        needed_types: list[str] = []
        for sid in needed_schemas:
            tid = str((ex.block_schemas.get(sid) or {}).get("block_type_id"))
            if tid not in needed_types:
                needed_types.append(tid)
        for tid in needed_types:
            row = ex.block_types.get(tid)
            if row is not None and tid not in self.id_map:
                self.add("blocks", BLOCK_TYPE, str(row["slug"]), exists=None, source_id=tid)
        for sid in needed_schemas:
            row = ex.block_schemas.get(sid)
            if row is not None and sid not in self.id_map:
                slug = (ex.block_types.get(str(row.get("block_type_id"))) or {}).get("slug")
                self.add("blocks", BLOCK_SCHEMA,
                         f"{slug} {str(row.get('checksum'))[:19]} ({row.get('version')})",
                         exists=None, source_id=sid)
        for d in self._documents_in_reference_order(docs):
            self._document(d)

    def _documents_in_reference_order(self, docs: list[dict[str, Any]]
                                      ) -> list[dict[str, Any]]:
        """Referenced documents before the documents that reference them."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()

        def visit(d: dict[str, Any], depth: int) -> None:
            did = str(d["id"])
            if did in seen or depth > 20:
                return
            seen.add(did)
            for ref in self.ex.doc_refs.get(did, []):
                child = self.ex.block_documents.get(str(ref.get("reference_block_document_id")))
                if child is not None:
                    visit(child, depth + 1)
            out.append(d)

        for d in docs:
            visit(d, 0)
        return out

    def _document(self, d: dict[str, Any]) -> None:
        slug, name = self.ex.doc_key(d)
        label = f"{slug}/{name}"
        kind = BLOCK_DOCUMENT_ANONYMOUS if d.get("is_anonymous") else BLOCK_DOCUMENT
        have = self.t.block_documents.get((slug, name))
        if not d.get("decrypted") or not isinstance(d.get("data"), dict):
            self.add("blocks", kind, label, exists=have, source_id=d["id"],
                     action=NOT_IMPORTABLE,
                     note="the export holds no decrypted data for this block (its key was "
                          "missing at backup time)")
            return
        _register_secrets(d["data"], (self.ex.block_schemas.get(
            str(d.get("block_schema_id"))) or {}).get("fields"))
        diff: list[str] = []
        if have is not None:
            _register_secrets(have.get("data"), (have.get("block_schema") or {}).get("fields"))
            refs = {str(r.get("name")): r for r in self.ex.doc_refs.get(str(d["id"]), [])}
            have_data = {k: v for k, v in (have.get("data") or {}).items() if k not in refs}
            want_data = {k: v for k, v in d["data"].items() if k not in refs}
            keys = sorted(k for k in set(have_data) | set(want_data)
                          if have_data.get(k) != want_data.get(k))
            if keys:
                diff.append(f"data differs (keys: {', '.join(keys)})")
            have_refs = {k: ((v or {}).get("block_document") or {}).get("name")
                         for k, v in (have.get("block_document_references") or {}).items()}
            want_refs = {k: (self.ex.block_documents.get(
                str(r.get("reference_block_document_id"))) or {}).get("name")
                for k, r in refs.items()}
            if have_refs != want_refs:
                diff.append("block references")
            if str(have.get("block_schema_id")) != self.id_map.get(str(d.get("block_schema_id"))):
                diff.append("block schema")
        self.add("blocks", kind, label, exists=have, diff=diff, source_id=d["id"])

    # variables, limits ------------------------------------------------------------------------

    def variables(self) -> None:
        for row in sorted(self.ex.variables, key=lambda r: str(r.get("name"))):
            want = _variable_body(row)
            have = self.t.variables.get(str(row["name"]))
            diff: list[str] = []
            if have is not None:
                if have.get("value") != want["value"]:
                    diff.append("value")
                if sorted(have.get("tags") or []) != sorted(want["tags"]):
                    diff.append("tags")
            self.add("variables", VARIABLE, str(row["name"]), exists=have, diff=diff,
                     source_id=row.get("id"))

    def concurrency_limits(self) -> None:
        rows = [r for r in self.ex.concurrency_limits.values()
                if not str(r.get("name", "")).startswith(_DEPLOYMENT_LIMIT_PREFIX)]
        names = {r.get("name") for r in rows}
        for r in _rows(self.ex.doc, "task_concurrency_limits"):  # v1 (tag) limits
            name = f"tag:{r.get('tag')}"
            if r.get("tag") and name not in names:
                rows.append({"id": r.get("id"), "name": name,
                             "limit": r.get("concurrency_limit"), "active": True,
                             "slot_decay_per_second": 0.0})
                names.add(name)
        for row in sorted(rows, key=lambda r: str(r.get("name"))):
            want = _limit_body(row)
            have = self.t.concurrency_limits.get(str(row["name"]))
            diff: list[str] = []
            if have is not None:
                diff = [f for f in ("limit", "active") if have.get(f) != want[f]]
                if float(have.get("slot_decay_per_second") or 0) != \
                        want["slot_decay_per_second"]:
                    diff.append("slot_decay_per_second")
            self.add("concurrency-limits", CONCURRENCY_LIMIT, str(row["name"]), exists=have,
                     diff=diff, source_id=row.get("id"))

    # work pools ----------------------------------------------------------------------------

    def work_pools(self) -> None:
        ex, t = self.ex, self.t
        for pool in sorted(ex.work_pools.values(), key=lambda p: str(p.get("name"))):
            name = str(pool["name"])
            have = t.work_pools.get(name)
            want = _pool_body(pool, self.id_map)
            diff: list[str] = []
            if have is not None:
                have_body = _pool_body(have, {})
                diff = [f for f in _POOL_FIELDS
                        if f in want and want.get(f) != have_body.get(f)]
            item = self.add("work-pools", WORK_POOL, name, exists=have, diff=diff,
                            source_id=pool["id"])
            if "type" in diff and item.action == OVERWRITE:
                item.note = "the type of an existing work pool cannot be changed; kept"
            queues = [q for q in ex.work_queues.values()
                      if str(q.get("work_pool_id")) == str(pool["id"])]
            default_id = str(pool.get("default_queue_id"))
            for q in sorted(queues, key=lambda q: (str(q["id"]) != default_id,
                                                   str(q.get("name")))):
                self._queue(name, q, is_default=str(q["id"]) == default_id,
                            pool_exists=have is not None)

    def _queue(self, pool: str, q: dict[str, Any], *, is_default: bool,
               pool_exists: bool) -> None:
        key = (pool, str(q["name"]))
        have = self.t.work_queues.get(key)
        diff: list[str] = []
        if have is not None:
            want = _queue_body(q)
            diff = [f for f in _QUEUE_FIELDS if f in want and want[f] != have.get(f)]
        note = None
        if have is None and is_default and not pool_exists:
            note = "the pool's default queue: created with the pool, then set as exported"
        self.add("work-pools", WORK_QUEUE, f"{pool}/{q['name']}", exists=have, diff=diff,
                 source_id=q["id"], note=note)

    # deployments ---------------------------------------------------------------------------

    def deployments(self) -> None:
        ex, t = self.ex, self.t
        deps = sorted(ex.deployments.values(), key=lambda d: ex.deployment_key(d))
        flow_ids = []
        for d in deps:
            if str(d.get("flow_id")) not in flow_ids:
                flow_ids.append(str(d.get("flow_id")))
        unused = [f for i, f in ex.flows.items() if i not in flow_ids]
        if unused:
            self.plan.warnings.append(
                f"{len(unused)} flow(s) without a deployment are not imported (a flow is "
                "recreated when it next runs)")
        for fid in flow_ids:
            row = ex.flows.get(fid)
            if row is None:
                continue
            have = t.flows.get(str(row["name"]))
            diff = []
            if have is not None and sorted(have.get("tags") or []) != \
                    sorted(row.get("tags") or []):
                diff.append("tags")
            self.add("deployments", FLOW, str(row["name"]), exists=have, diff=diff,
                     source_id=fid)
        for d in deps:
            flow_name, dep_name = ex.deployment_key(d)
            have = t.deployments.get((flow_name, dep_name))
            want = _deployment_body(ex, d, self.id_map)
            diff = _deployment_diff(want, have) if have is not None else []
            available = set(self.id_map) | {i.source_id for i in self.plan.items
                                            if i.source_id and i.action == CREATE}
            missing = _deployment_missing(ex, d, available)
            self.add("deployments", DEPLOYMENT, f"{flow_name}/{dep_name}", exists=have,
                     diff=diff, source_id=d["id"],
                     note=("needs " + ", ".join(missing) + ": neither on the target nor "
                           "imported") if missing else None)
        if _rows(ex.doc, "deployment_versions"):
            self.plan.warnings.append("deployment version history is not imported (each "
                                      "deployment gets its exported state as a new version)")

    # automations ---------------------------------------------------------------------------

    def automations(self) -> None:
        ex, t = self.ex, self.t
        names: dict[str, int] = {}
        for a in ex.automations.values():
            names[str(a.get("name"))] = names.get(str(a.get("name")), 0) + 1
        for name, n in sorted(names.items()):
            if n > 1:
                self.plan.warnings.append(f"{n} automations are named {name!r}: matched by "
                                          "name, only the first is imported")
        seen: set[str] = set()
        known = set(self.id_map) | {i.source_id for i in self.plan.items
                                    if i.source_id and i.action == CREATE}
        for a in sorted(ex.automations.values(), key=lambda a: str(a.get("name"))):
            name = str(a["name"])
            if name in seen:
                continue
            seen.add(name)
            have = t.automations.get(name)
            want = _automation_body(a, self.id_map)
            diff: list[str] = []
            if have is not None:
                have_body = _automation_body(have, {})
                diff = [f for f in _AUTOMATION_FIELDS
                        if f in want and want.get(f) != have_body.get(f)]
            dangling = _referenced(ex, a, known | {str(a["id"])})
            note = ("refers to " + ", ".join(dangling) + ": neither on the target nor "
                    "imported") if dangling else None
            self.add("automations", AUTOMATION, name, exists=have, diff=diff,
                     source_id=a["id"], note=note)


def _referenced(ex: _Export, row: dict[str, Any], available: set[str]) -> list[str]:
    """The exported objects automation ``row`` refers to that are not in ``available``,
    described by kind and name."""
    text = json.dumps([row.get(k) for k in ("trigger", "actions", "actions_on_trigger",
                                            "actions_on_resolve")])
    kinds = ((BLOCK_DOCUMENT, ex.block_documents), (WORK_POOL, ex.work_pools),
             (WORK_QUEUE, ex.work_queues), (FLOW, ex.flows), (DEPLOYMENT, ex.deployments),
             (CONCURRENCY_LIMIT, ex.concurrency_limits), (AUTOMATION, ex.automations))
    out = []
    for found in sorted(set(_UUID.findall(text))):
        for kind, rows in kinds:
            if found in rows and found not in available:
                name = ("/".join(ex.deployment_key(rows[found])) if kind == DEPLOYMENT
                        else str(rows[found].get("name")))
                out.append(f"{kind} {name!r}")
    return out


def _deployment_body(ex: _Export, d: dict[str, Any], id_map: dict[str, str]
                    ) -> dict[str, Any]:
    """The DeploymentCreate body (Prefect 3.9 API) for exported deployment ``d``.

    ``flow_id`` and block ids are the target's when ``id_map`` knows them (else the export's);
    a shared global concurrency limit the target does not have is left out.
    """
    body: dict[str, Any] = _pick(d, "name", "paused", "enforce_parameter_schema",
                                 "parameter_openapi_schema", "parameters", "tags",
                                 "pull_steps", "description", "path", "version",
                                 "entrypoint", "concurrency_options")
    body["flow_id"] = id_map.get(str(d.get("flow_id")), d.get("flow_id"))
    body["labels"] = _user_labels(d.get("labels"))
    body["job_variables"] = d.get("job_variables", d.get("infra_overrides")) or {}
    body["parameters"] = body.get("parameters") or {}
    body["tags"] = body.get("tags") or []
    pool = ex.pool_of_queue(d.get("work_queue_id"))
    if pool:
        body["work_pool_name"] = pool
    queue = ex.work_queues.get(str(d.get("work_queue_id")))
    queue_name = d.get("work_queue_name") or (queue or {}).get("name")
    if queue_name:
        body["work_queue_name"] = queue_name
    for key in ("storage_document_id", "infrastructure_document_id"):
        if d.get(key):
            body[key] = id_map.get(str(d[key]), d[key])
    limit_id = d.get("concurrency_limit_id")
    limit = ex.concurrency_limits.get(str(limit_id)) if limit_id else None
    if limit is not None and str(limit.get("name")) == f"{_DEPLOYMENT_LIMIT_PREFIX}{d['id']}":
        body["concurrency_limit"] = limit.get("limit")  # the deployment's own limit
    elif limit is not None:
        if str(limit_id) in id_map:
            body["global_concurrency_limit_id"] = id_map[str(limit_id)]
    elif d.get("concurrency_limit"):
        body["concurrency_limit"] = d["concurrency_limit"]
    schedules = []
    for s in sorted(ex.schedules.get(str(d["id"]), []),
                    key=lambda s: (str(s.get("created")), str(s.get("id")))):
        sched: dict[str, Any] = {"schedule": s.get("schedule"),
                                 "active": bool(s.get("active", True)),
                                 "parameters": s.get("parameters") or {}}
        if s.get("slug"):
            sched["slug"] = s["slug"]
        if s.get("max_scheduled_runs"):
            sched["max_scheduled_runs"] = s["max_scheduled_runs"]
        schedules.append(sched)
    body["schedules"] = schedules
    return body


def _deployment_missing(ex: _Export, d: dict[str, Any], available: set[str]) -> list[str]:
    """What deployment ``d`` refers to that is neither on the target nor being imported."""
    missing = []
    queue = ex.work_queues.get(str(d.get("work_queue_id")))
    pool_id = str((queue or {}).get("work_pool_id"))
    if queue is not None and pool_id not in available:
        missing.append(f"work pool {ex.pool_of_queue(queue['id'])!r}")
    limit_id = d.get("concurrency_limit_id")
    limit = ex.concurrency_limits.get(str(limit_id)) if limit_id else None
    if limit is not None and not str(limit.get("name")).startswith(_DEPLOYMENT_LIMIT_PREFIX) \
            and str(limit_id) not in available:
        missing.append(f"global concurrency limit {limit.get('name')!r} (left out)")
    for key in ("storage_document_id", "infrastructure_document_id"):
        if d.get(key) and str(d[key]) not in available:
            missing.append(f"block document {d[key]}")
    return missing


def _deployment_diff(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    got: dict[str, Any] = dict(have)
    got["labels"] = _user_labels(have.get("labels"))
    gcl = have.get("global_concurrency_limit") or {}
    own = str(gcl.get("name", "")).startswith(_DEPLOYMENT_LIMIT_PREFIX)
    got["concurrency_limit"] = gcl.get("limit") if own else have.get("concurrency_limit")
    if gcl and not own:
        got["concurrency_limit"] = None
    got["global_concurrency_limit"] = None if own else (gcl.get("id") or None)
    norm = dict(want)
    norm["global_concurrency_limit"] = want.get("global_concurrency_limit_id")
    norm.setdefault("concurrency_limit", None)
    for key in ("storage_document_id", "infrastructure_document_id", "work_pool_name",
                "work_queue_name", "version", "description", "path", "entrypoint",
                "concurrency_options", "pull_steps"):
        norm.setdefault(key, None)
    got["pull_steps"] = have.get("pull_steps") or None
    norm["pull_steps"] = norm.get("pull_steps") or None
    norm["tags"], got["tags"] = sorted(norm.get("tags") or []), sorted(have.get("tags") or [])

    def sched(rows: list[dict[str, Any]]) -> list[Any]:
        return _sorted_list([{"schedule": _norm_schedule(s.get("schedule")),
                              "active": bool(s.get("active", True)),
                              "parameters": s.get("parameters") or {},
                              "slug": s.get("slug"),
                              "max_scheduled_runs": s.get("max_scheduled_runs")}
                             for s in rows])

    norm["schedules"], got["schedules"] = sched(want["schedules"]), sched(
        have.get("schedules") or [])
    return [f for f in _DEPLOYMENT_FIELDS if norm.get(f) != got.get(f)]


def plan(api_url: str, export_doc: dict[str, Any], *, only: Iterable[str] | str = SECTIONS,
         on_conflict: OnConflict | str = "skip") -> ImportPlan:
    """Compare ``export_doc`` with what the Prefect server at ``api_url`` holds.

    Reads every object of the target (pages of 200); writes nothing. Items come in the order
    :func:`apply` carries them out. Raises ConfigImportError (exit code 2) for an unknown
    section or conflict mode, ConfigImportError for an export this version cannot read, and
    PrefectAPIError when the target cannot be read.
    """
    selected = parse_only(only if isinstance(only, str) else list(only))
    if on_conflict not in ON_CONFLICT:
        raise ConfigImportError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}",
                                exit_code=USAGE)
    check_export(export_doc)
    ex = _Export(export_doc)
    version = server_version(api_url)
    target = _Target.read(api_url, [str(p.get("name")) for p in ex.work_pools.values()])
    result = ImportPlan(api_url=api_url, target_version=version,
                        backup_id=export_doc.get("backup_id"),
                        only=tuple(s for s in SECTIONS if s in selected),
                        on_conflict=str(on_conflict))
    planner = _Planner(ex, target, selected, str(on_conflict), result)
    planner.match_only()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("blocks", planner.blocks), ("variables", planner.variables),
        ("concurrency-limits", planner.concurrency_limits),
        ("work-pools", planner.work_pools), ("deployments", planner.deployments),
        ("automations", planner.automations)]
    for section, step in steps:
        if section in selected:
            step()
    if _rows(export_doc, "saved_searches"):
        result.warnings.append("saved searches are not imported")
    return result


# --- applying ------------------------------------------------------------------------------


class _Applier:
    def __init__(self, api: str, ex: _Export, the_plan: ImportPlan) -> None:
        self.api, self.ex, self.plan = api, ex, the_plan
        self.id_map = dict(the_plan.id_map)
        self.default_queues = dict(the_plan.default_queues)

    def post(self, path: str, body: Any) -> Any:
        return request(self.api, "POST", path, body)

    def run(self, item: PlanItem) -> str:
        handler = {
            BLOCK_TYPE: self.block_type, BLOCK_SCHEMA: self.block_schema,
            BLOCK_DOCUMENT: self.block_document,
            BLOCK_DOCUMENT_ANONYMOUS: self.block_document,
            VARIABLE: self.variable, CONCURRENCY_LIMIT: self.concurrency_limit,
            WORK_POOL: self.work_pool, WORK_QUEUE: self.work_queue, FLOW: self.flow,
            DEPLOYMENT: self.deployment, AUTOMATION: self.automation,
        }[item.kind]
        handler(item)
        return CREATED if item.action == CREATE else OVERWRITTEN

    def _mapped(self, export_id: Any, what: str) -> str:
        if str(export_id) not in self.id_map:
            raise PrefectAPIError(f"{what} is not on the target (its import failed or was "
                                  "not selected)")
        return self.id_map[str(export_id)]

    def _created(self, item: PlanItem, obj: Any) -> None:
        if item.source_id and isinstance(obj, dict) and obj.get("id"):
            self.id_map[item.source_id] = str(obj["id"])

    # blocks
    def block_type(self, item: PlanItem) -> None:
        row = self.ex.block_types[str(item.source_id)]
        body = _pick(row, "name", "slug", "logo_url", "documentation_url", "description",
                     "code_example")
        self._created(item, self.post("/block_types/", body))

    def block_schema(self, item: PlanItem) -> None:
        row = self.ex.block_schemas[str(item.source_id)]
        body = {"fields": row.get("fields") or {},
                "block_type_id": self._mapped(row.get("block_type_id"), "its block type"),
                "capabilities": row.get("capabilities") or [],
                "version": row.get("version") or "non-versioned"}
        self._created(item, self.post("/block_schemas/", body))

    def block_document(self, item: PlanItem) -> None:
        row = self.ex.block_documents[str(item.source_id)]
        data = copy.deepcopy(row["data"])
        _register_secrets(data, (self.ex.block_schemas.get(str(row.get("block_schema_id")))
                                 or {}).get("fields"))
        for ref in self.ex.doc_refs.get(str(row["id"]), []):
            child = self._mapped(ref.get("reference_block_document_id"),
                                 f"referenced block {ref.get('name')!r}")
            data[str(ref.get("name"))] = {"$ref": {"block_document_id": child}}
        schema_id = self._mapped(row.get("block_schema_id"), "its block schema")
        if item.action == CREATE:
            body = {"name": row.get("name"), "data": data, "block_schema_id": schema_id,
                    "block_type_id": self._mapped(row.get("block_type_id"), "its block type"),
                    "is_anonymous": bool(row.get("is_anonymous"))}
            self._created(item, self.post("/block_documents/", body))
        else:
            request(self.api, "PATCH", f"/block_documents/{item.target_id}",
                    {"block_schema_id": schema_id, "data": data,
                     "merge_existing_data": False})

    # variables, limits
    def variable(self, item: PlanItem) -> None:
        row = next(r for r in self.ex.variables if str(r.get("id")) == item.source_id
                   or r.get("name") == item.name)
        body = _variable_body(row)
        if item.action == CREATE:
            self._created(item, self.post("/variables/", body))
        else:
            request(self.api, "PATCH", f"/variables/name/{_quote(item.name)}",
                    {"value": body["value"], "tags": body["tags"]})

    def concurrency_limit(self, item: PlanItem) -> None:
        row = self.ex.concurrency_limits.get(str(item.source_id))
        if row is None or row.get("name") != item.name:  # converted v1 (tag) limit
            v1 = next(r for r in _rows(self.ex.doc, "task_concurrency_limits")
                      if f"tag:{r.get('tag')}" == item.name)
            row = {"name": item.name, "limit": v1.get("concurrency_limit"), "active": True,
                   "slot_decay_per_second": 0.0}
        body = _limit_body(row)
        if item.action == CREATE:
            self._created(item, self.post("/v2/concurrency_limits/", body))
        else:
            body.pop("name")
            request(self.api, "PATCH", f"/v2/concurrency_limits/{item.target_id}", body)

    # work pools
    def work_pool(self, item: PlanItem) -> None:
        row = self.ex.work_pools[str(item.source_id)]
        body = _pool_body(row, self.id_map)
        if item.action == CREATE:
            created = self.post("/work_pools/", body)
            self._created(item, created)
            if isinstance(created, dict) and created.get("default_queue_id"):
                self.default_queues[item.name] = str(created["default_queue_id"])
        else:
            body.pop("name", None)
            body.pop("type", None)
            request(self.api, "PATCH", f"/work_pools/{_quote(item.name)}", body)

    def work_queue(self, item: PlanItem) -> None:
        row = self.ex.work_queues[str(item.source_id)]
        pool = self.ex.pool_of_queue(row["id"]) or item.name.rsplit("/", 1)[0]
        body = _queue_body(row)
        pool_row = next((p for p in self.ex.work_pools.values() if p.get("name") == pool), {})
        is_default = str(pool_row.get("default_queue_id")) == str(row["id"])
        if item.action == CREATE and is_default and pool in self.default_queues:
            queue_id = self.default_queues[pool]
            self.id_map[str(row["id"])] = queue_id
            request(self.api, "PATCH", f"/work_queues/{queue_id}", body)
        elif item.action == CREATE:
            self._created(item, self.post(f"/work_pools/{_quote(pool)}/queues", body))
        else:
            body.pop("name", None)
            request(self.api, "PATCH", f"/work_queues/{item.target_id}", body)

    # deployments
    def flow(self, item: PlanItem) -> None:
        row = self.ex.flows[str(item.source_id)]
        if item.action == CREATE:
            self._created(item, self.post("/flows/", _flow_body(row)))
        else:
            request(self.api, "PATCH", f"/flows/{item.target_id}",
                    {"tags": list(row.get("tags") or [])})

    def deployment(self, item: PlanItem) -> None:
        row = self.ex.deployments[str(item.source_id)]
        self._mapped(row.get("flow_id"), "its flow")
        body = _deployment_body(self.ex, row, self.id_map)
        if item.action == OVERWRITE and "concurrency_limit" not in body \
                and "global_concurrency_limit_id" not in body:
            # The export has no limit: clear the target's. Its own limit (a GCL named
            # "deployment:<id>") is deleted with concurrency_limit=None; a shared GCL is only
            # unlinked (concurrency_limit=None would delete the shared limit itself).
            have = request(self.api, "GET", f"/deployments/{item.target_id}") or {}
            gcl = have.get("global_concurrency_limit") or {}
            if str(gcl.get("name", "")).startswith(_DEPLOYMENT_LIMIT_PREFIX):
                body["concurrency_limit"] = None
            elif gcl:
                body["global_concurrency_limit_id"] = None
        # POST /deployments/ creates, or updates in place the deployment of that flow and name
        # (Prefect's upsert: it replaces the schedules and drops future auto-scheduled runs).
        served = self.post("/deployments/", body)
        self._created(item, served)
        if isinstance(served, dict) and any(s.get("max_scheduled_runs")
                                            for s in body["schedules"]):
            self._max_scheduled_runs(served, body["schedules"])

    def _max_scheduled_runs(self, served: dict[str, Any], wanted: list[dict[str, Any]]) -> None:
        """Set each schedule's max_scheduled_runs (Prefect's deployment upsert drops it)."""
        schedules = served.get("schedules")
        if schedules is None:
            schedules = (request(self.api, "GET", f"/deployments/{served['id']}") or {}).get(
                "schedules") or []
        used: set[str] = set()
        for want in wanted:
            if not want.get("max_scheduled_runs"):
                continue
            match = next((s for s in schedules if str(s.get("id")) not in used
                          and _norm_schedule(s.get("schedule")) == _norm_schedule(
                              want.get("schedule"))
                          and (s.get("parameters") or {}) == want.get("parameters")
                          and s.get("slug") == want.get("slug")), None)
            if match is None:
                raise ConfigImportError("a schedule was not recreated as exported")
            used.add(str(match["id"]))
            if match.get("max_scheduled_runs") != want["max_scheduled_runs"]:
                request(self.api, "PATCH",
                        f"/deployments/{served['id']}/schedules/{match['id']}",
                        {"max_scheduled_runs": want["max_scheduled_runs"]})

    # automations
    def automation(self, item: PlanItem) -> None:
        row = self.ex.automations[str(item.source_id)]
        dangling = _referenced(self.ex, row, set(self.id_map) | {str(row["id"])})
        if dangling:
            raise ConfigImportError("refers to " + ", ".join(dangling) + ", which is not on "
                                    "the target")
        body = _automation_body(row, self.id_map)
        if item.action == CREATE:
            owner = self.ex.owner_resource.get(str(row["id"]))
            if owner:
                body["owner_resource"] = _remap(owner, self.id_map)
            self._created(item, self.post("/automations/", body))
        else:
            request(self.api, "PUT", f"/automations/{item.target_id}", body)


def apply(api_url: str, export_doc: dict[str, Any], the_plan: ImportPlan, *,
          on_item: Callable[[ItemResult], None] | None = None) -> ImportResult:
    """Carry out ``the_plan`` (from :func:`plan` on the same export and server).

    Creates what is missing, overwrites what the plan says to overwrite, leaves the rest. One
    object's failure is recorded (first line of its error, secrets masked) and the others go
    on; objects that depend on a failed one fail too. ``on_item`` is called after each item
    (progress). Raises ConfigImportError for an export this version cannot read, and
    ConfigImportError when the plan was made for another server or export, and Interrupted
    when stopped by a signal; API errors never escape (they are failures).
    """
    check_export(export_doc)
    if the_plan.api_url.rstrip("/") != api_url.rstrip("/"):
        raise ConfigImportError("the plan was made for another Prefect server")
    if the_plan.backup_id != export_doc.get("backup_id"):
        raise ConfigImportError("the plan was made from another backup's export")
    ex = _Export(export_doc)
    applier = _Applier(api_url, ex, the_plan)
    result = ImportResult()
    for item in the_plan.items:
        if item.action in (SKIP, UNCHANGED, NOT_IMPORTABLE):
            outcome = {SKIP: SKIPPED, UNCHANGED: UNCHANGED, NOT_IMPORTABLE: FAILED}[item.action]
            done = ItemResult(item.section, item.kind, item.name, item.action, outcome,
                              item.note if outcome == FAILED else None)
        else:
            try:
                outcome = applier.run(item)
                done = ItemResult(item.section, item.kind, item.name, item.action, outcome)
            except Interrupted:
                raise
            except (DRError, KeyError, TypeError, ValueError, StopIteration) as exc:
                interrupt.raise_if_noted()
                done = ItemResult(item.section, item.kind, item.name, item.action, FAILED,
                                  _first_line(exc))
        result.items.append(done)
        if on_item is not None:
            on_item(done)
    return result
