"""Desired state: an exported row turned into the body of the Prefect API request that
recreates it, ids translated to the target's; and the normalization that makes a row comparable
with what the server returns."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from prefect_dr.config_import.model import DEPLOYMENT_LIMIT_PREFIX
from prefect_dr.config_import.source import Export
from prefect_dr.units import utc_time

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pick(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The entries of ``row`` named by ``keys`` (those it has)."""
    return {k: row[k] for k in keys if k in row}


def strip_ids(value: Any) -> Any:
    """A copy of an automation trigger without its (server-assigned) ``id`` keys."""
    if isinstance(value, dict):
        return {k: strip_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [strip_ids(v) for v in value]
    return value


def remap(value: Any, id_map: dict[str, str]) -> Any:
    """``value`` with every export id found in strings replaced by the target's id."""
    if not id_map:
        return copy.deepcopy(value)
    text = json.dumps(value)
    text = UUID.sub(lambda m: id_map.get(m.group(0), m.group(0)), text)
    return json.loads(text)


def _ts(value: Any) -> Any:
    if isinstance(value, str):
        parsed = utc_time(value)
        return value if parsed is None else parsed.isoformat()
    return value


def norm_schedule(schedule: Any) -> Any:
    """A schedule as comparable with the server's (UTC anchor date, float interval)."""
    if not isinstance(schedule, dict):
        return schedule
    out = dict(schedule)
    if "anchor_date" in out:
        out["anchor_date"] = _ts(out["anchor_date"])
    if isinstance(out.get("interval"), int | float):
        out["interval"] = float(out["interval"])
    return out


def user_labels(labels: Any) -> dict[str, Any]:
    """Labels without Prefect's system labels (``prefect.*``, set by the server)."""
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if not str(k).startswith("prefect.")}


def variable_body(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "value": row.get("value"), "tags": list(row.get("tags") or [])}


def limit_body(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "limit": int(row.get("limit") or 0),
            "active": bool(row.get("active", True)),
            "slot_decay_per_second": float(row.get("slot_decay_per_second") or 0.0)}


def pool_body(row: dict[str, Any], id_map: dict[str, str]) -> dict[str, Any]:
    body = pick(row, "name", "description", "type", "base_job_template", "is_paused",
                "concurrency_limit")
    storage = row.get("storage_configuration")
    if isinstance(storage, dict):
        body["storage_configuration"] = remap(storage, id_map)
    return body


def queue_body(row: dict[str, Any]) -> dict[str, Any]:
    return pick(row, "name", "description", "is_paused", "concurrency_limit", "priority")


def flow_body(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["name"], "tags": list(row.get("tags") or []),
            "labels": user_labels(row.get("labels"))}


def automation_body(row: dict[str, Any], id_map: dict[str, str]) -> dict[str, Any]:
    body = pick(row, "name", "description", "enabled", "tags", "trigger", "actions",
                "actions_on_trigger", "actions_on_resolve")
    body = remap(body, id_map)
    if isinstance(body.get("trigger"), dict):
        body["trigger"] = strip_ids(body["trigger"])
    return body


def deployment_body(ex: Export, d: dict[str, Any], id_map: dict[str, str]
                    ) -> dict[str, Any]:
    """The DeploymentCreate body (Prefect 3.9 API) for exported deployment ``d``.

    ``flow_id`` and block ids are the target's when ``id_map`` knows them (else the export's);
    a shared global concurrency limit the target does not have is left out.
    """
    body: dict[str, Any] = pick(d, "name", "paused", "enforce_parameter_schema",
                                "parameter_openapi_schema", "parameters", "tags",
                                "pull_steps", "description", "path", "version",
                                "entrypoint", "concurrency_options")
    body["flow_id"] = id_map.get(str(d.get("flow_id")), d.get("flow_id"))
    body["labels"] = user_labels(d.get("labels"))
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
    if limit is not None and str(limit.get("name")) == f"{DEPLOYMENT_LIMIT_PREFIX}{d['id']}":
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
