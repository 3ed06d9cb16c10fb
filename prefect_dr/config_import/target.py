"""The target: what the live Prefect server holds, read through its REST API and keyed the
way exported objects are matched (block documents by type slug + name, work queues by pool +
queue name, deployments by flow name + deployment name, the rest by name)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote as _url_quote

from prefect_dr.prefect_api import paged


@dataclass
class Target:
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
    def read(cls, api: str, pools_of_interest: Iterable[str]) -> Target:
        types = {t["slug"]: t for t in paged(api, "/block_types/filter")}
        schemas = {(s["checksum"], s.get("version") or ""): s
                   for s in paged(api, "/block_schemas/filter")}
        type_slug = {t["id"]: slug for slug, t in types.items()}
        by_fields = {(str(type_slug.get(s.get("block_type_id"))), s.get("version") or "",
                      canonical_fields(s.get("fields"))): s for s in schemas.values()}
        docs = {}
        for d in paged(api, "/block_documents/filter",
                       {"block_documents": {"is_anonymous": None}, "include_secrets": True}):
            slug = (d.get("block_type") or {}).get("slug") or type_slug.get(d["block_type_id"])
            docs[(str(slug), str(d["name"]))] = d
        pools = {p["name"]: p for p in paged(api, "/work_pools/filter")}
        queues = {}
        for pool in sorted(set(pools_of_interest) & set(pools)):
            for q in paged(api, f"/work_pools/{quote(pool)}/queues/filter"):
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


def canonical_fields(fields: Any) -> str:
    """Block schema fields as comparable text (the server adds an empty
    ``block_schema_references`` to the fields of a schema created through the API)."""
    if isinstance(fields, dict) and not fields.get("block_schema_references"):
        fields = {k: v for k, v in fields.items() if k != "block_schema_references"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def quote(name: str) -> str:
    """``name`` quoted for one path segment of an API URL."""
    return _url_quote(name, safe="")
