"""Comparing the export with the target: which fields of an existing object differ from the
export's, and which objects an exported one refers to that the target will not have."""

from __future__ import annotations

import json
from typing import Any

from prefect_dr.config_import.bodies import UUID, norm_schedule, user_labels
from prefect_dr.config_import.model import (
    AUTOMATION,
    BLOCK_DOCUMENT,
    CONCURRENCY_LIMIT,
    DEPLOYMENT,
    DEPLOYMENT_LIMIT_PREFIX,
    FLOW,
    WORK_POOL,
    WORK_QUEUE,
)
from prefect_dr.config_import.source import Export

#: the fields compared per kind (what a plan item's ``diff`` can name).
AUTOMATION_FIELDS = ("description", "enabled", "tags", "trigger", "actions",
                     "actions_on_trigger", "actions_on_resolve")
POOL_FIELDS = ("description", "type", "base_job_template", "is_paused", "concurrency_limit",
               "storage_configuration")
QUEUE_FIELDS = ("description", "is_paused", "concurrency_limit", "priority")
DEPLOYMENT_FIELDS = ("description", "version", "paused", "parameters", "tags", "labels",
                     "entrypoint", "path", "pull_steps", "job_variables",
                     "parameter_openapi_schema", "enforce_parameter_schema", "work_pool_name",
                     "work_queue_name", "concurrency_limit", "global_concurrency_limit",
                     "concurrency_options", "storage_document_id",
                     "infrastructure_document_id", "schedules")


def referenced(ex: Export, row: dict[str, Any], available: set[str]) -> list[str]:
    """The exported objects automation ``row`` refers to that are not in ``available``,
    described by kind and name."""
    text = json.dumps([row.get(k) for k in ("trigger", "actions", "actions_on_trigger",
                                            "actions_on_resolve")])
    kinds = ((BLOCK_DOCUMENT, ex.block_documents), (WORK_POOL, ex.work_pools),
             (WORK_QUEUE, ex.work_queues), (FLOW, ex.flows), (DEPLOYMENT, ex.deployments),
             (CONCURRENCY_LIMIT, ex.concurrency_limits), (AUTOMATION, ex.automations))
    out = []
    for found in sorted(set(UUID.findall(text))):
        for kind, table in kinds:
            if found in table and found not in available:
                name = ("/".join(ex.deployment_key(table[found])) if kind == DEPLOYMENT
                        else str(table[found].get("name")))
                out.append(f"{kind} {name!r}")
    return out


def deployment_missing(ex: Export, d: dict[str, Any], available: set[str]) -> list[str]:
    """What deployment ``d`` refers to that is neither on the target nor being imported."""
    missing = []
    queue = ex.work_queues.get(str(d.get("work_queue_id")))
    pool_id = str((queue or {}).get("work_pool_id"))
    if queue is not None and pool_id not in available:
        missing.append(f"work pool {ex.pool_of_queue(queue['id'])!r}")
    limit_id = d.get("concurrency_limit_id")
    limit = ex.concurrency_limits.get(str(limit_id)) if limit_id else None
    if limit is not None and not str(limit.get("name")).startswith(DEPLOYMENT_LIMIT_PREFIX) \
            and str(limit_id) not in available:
        missing.append(f"global concurrency limit {limit.get('name')!r} (left out)")
    for key in ("storage_document_id", "infrastructure_document_id"):
        if d.get(key) and str(d[key]) not in available:
            missing.append(f"block document {d[key]}")
    return missing


def _sorted_list(value: Any) -> list[Any]:
    return sorted(value or [], key=lambda v: json.dumps(v, sort_keys=True))


def deployment_diff(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    got: dict[str, Any] = dict(have)
    got["labels"] = user_labels(have.get("labels"))
    gcl = have.get("global_concurrency_limit") or {}
    own = str(gcl.get("name", "")).startswith(DEPLOYMENT_LIMIT_PREFIX)
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
        return _sorted_list([{"schedule": norm_schedule(s.get("schedule")),
                              "active": bool(s.get("active", True)),
                              "parameters": s.get("parameters") or {},
                              "slug": s.get("slug"),
                              "max_scheduled_runs": s.get("max_scheduled_runs")}
                             for s in rows])

    norm["schedules"], got["schedules"] = sched(want["schedules"]), sched(
        have.get("schedules") or [])
    return [f for f in DEPLOYMENT_FIELDS if norm.get(f) != got.get(f)]
