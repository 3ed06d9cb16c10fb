"""Applying: carry out a plan in dependency order, one object at a time; one object's failure
is recorded and the others go on."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from prefect_dr import interrupt, redact
from prefect_dr.config_import import model as m
from prefect_dr.config_import.bodies import (
    automation_body,
    deployment_body,
    flow_body,
    limit_body,
    norm_schedule,
    pick,
    pool_body,
    queue_body,
    remap,
    variable_body,
)
from prefect_dr.config_import.compare import referenced
from prefect_dr.config_import.source import Export, check_export, register_secrets, section_rows
from prefect_dr.config_import.target import quote
from prefect_dr.errors import DRError, Interrupted
from prefect_dr.prefect_api import PrefectAPIError, request


def _first_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, DRError) else f"{type(exc).__name__}: {exc}"
    lines = str(text).strip().splitlines() or [type(exc).__name__]
    return redact.redact(" ".join(lines[0].split()))[:300]


class Applier:
    """Carries out plan items one by one, translating ids as objects are created."""

    def __init__(self, api: str, ex: Export, the_plan: m.ImportPlan) -> None:
        self.api, self.ex = api, ex
        self.id_map = dict(the_plan.id_map)
        self.default_queues = dict(the_plan.default_queues)

    def post(self, path: str, body: Any) -> Any:
        return request(self.api, "POST", path, body)

    def run(self, item: m.PlanItem) -> str:
        handler = {
            m.BLOCK_TYPE: self.block_type, m.BLOCK_SCHEMA: self.block_schema,
            m.BLOCK_DOCUMENT: self.block_document,
            m.BLOCK_DOCUMENT_ANONYMOUS: self.block_document,
            m.VARIABLE: self.variable, m.CONCURRENCY_LIMIT: self.concurrency_limit,
            m.WORK_POOL: self.work_pool, m.WORK_QUEUE: self.work_queue, m.FLOW: self.flow,
            m.DEPLOYMENT: self.deployment, m.AUTOMATION: self.automation,
        }[item.kind]
        handler(item)
        return m.CREATED if item.action == m.CREATE else m.OVERWRITTEN

    def _mapped(self, export_id: Any, what: str) -> str:
        if str(export_id) not in self.id_map:
            raise PrefectAPIError(f"{what} is not on the target (its import failed or was "
                                  "not selected)")
        return self.id_map[str(export_id)]

    def _created(self, item: m.PlanItem, obj: Any) -> None:
        if item.source_id and isinstance(obj, dict) and obj.get("id"):
            self.id_map[item.source_id] = str(obj["id"])

    # blocks
    def block_type(self, item: m.PlanItem) -> None:
        row = self.ex.block_types[str(item.source_id)]
        body = pick(row, "name", "slug", "logo_url", "documentation_url", "description",
                    "code_example")
        self._created(item, self.post("/block_types/", body))

    def block_schema(self, item: m.PlanItem) -> None:
        row = self.ex.block_schemas[str(item.source_id)]
        body = {"fields": row.get("fields") or {},
                "block_type_id": self._mapped(row.get("block_type_id"), "its block type"),
                "capabilities": row.get("capabilities") or [],
                "version": row.get("version") or "non-versioned"}
        self._created(item, self.post("/block_schemas/", body))

    def block_document(self, item: m.PlanItem) -> None:
        row = self.ex.block_documents[str(item.source_id)]
        data = copy.deepcopy(row["data"])
        register_secrets(data, (self.ex.block_schemas.get(str(row.get("block_schema_id")))
                                or {}).get("fields"))
        for ref in self.ex.doc_refs.get(str(row["id"]), []):
            child = self._mapped(ref.get("reference_block_document_id"),
                                 f"referenced block {ref.get('name')!r}")
            data[str(ref.get("name"))] = {"$ref": {"block_document_id": child}}
        schema_id = self._mapped(row.get("block_schema_id"), "its block schema")
        if item.action == m.CREATE:
            body = {"name": row.get("name"), "data": data, "block_schema_id": schema_id,
                    "block_type_id": self._mapped(row.get("block_type_id"), "its block type"),
                    "is_anonymous": bool(row.get("is_anonymous"))}
            self._created(item, self.post("/block_documents/", body))
        else:
            request(self.api, "PATCH", f"/block_documents/{item.target_id}",
                    {"block_schema_id": schema_id, "data": data,
                     "merge_existing_data": False})

    # variables, limits
    def variable(self, item: m.PlanItem) -> None:
        row = next(r for r in self.ex.variables if str(r.get("id")) == item.source_id
                   or r.get("name") == item.name)
        body = variable_body(row)
        if item.action == m.CREATE:
            self._created(item, self.post("/variables/", body))
        else:
            request(self.api, "PATCH", f"/variables/name/{quote(item.name)}",
                    {"value": body["value"], "tags": body["tags"]})

    def concurrency_limit(self, item: m.PlanItem) -> None:
        row = self.ex.concurrency_limits.get(str(item.source_id))
        if row is None or row.get("name") != item.name:  # converted v1 (tag) limit
            v1 = next(r for r in section_rows(self.ex.doc, "task_concurrency_limits")
                      if f"tag:{r.get('tag')}" == item.name)
            row = {"name": item.name, "limit": v1.get("concurrency_limit"), "active": True,
                   "slot_decay_per_second": 0.0}
        body = limit_body(row)
        if item.action == m.CREATE:
            self._created(item, self.post("/v2/concurrency_limits/", body))
        else:
            body.pop("name")
            request(self.api, "PATCH", f"/v2/concurrency_limits/{item.target_id}", body)

    # work pools
    def work_pool(self, item: m.PlanItem) -> None:
        row = self.ex.work_pools[str(item.source_id)]
        body = pool_body(row, self.id_map)
        if item.action == m.CREATE:
            created = self.post("/work_pools/", body)
            self._created(item, created)
            if isinstance(created, dict) and created.get("default_queue_id"):
                self.default_queues[item.name] = str(created["default_queue_id"])
        else:
            body.pop("name", None)
            body.pop("type", None)
            request(self.api, "PATCH", f"/work_pools/{quote(item.name)}", body)

    def work_queue(self, item: m.PlanItem) -> None:
        row = self.ex.work_queues[str(item.source_id)]
        pool = self.ex.pool_of_queue(row["id"]) or item.name.rsplit("/", 1)[0]
        body = queue_body(row)
        pool_row = next((p for p in self.ex.work_pools.values() if p.get("name") == pool), {})
        is_default = str(pool_row.get("default_queue_id")) == str(row["id"])
        if item.action == m.CREATE and is_default and pool in self.default_queues:
            queue_id = self.default_queues[pool]
            self.id_map[str(row["id"])] = queue_id
            request(self.api, "PATCH", f"/work_queues/{queue_id}", body)
        elif item.action == m.CREATE:
            self._created(item, self.post(f"/work_pools/{quote(pool)}/queues", body))
        else:
            body.pop("name", None)
            request(self.api, "PATCH", f"/work_queues/{item.target_id}", body)

    # deployments
    def flow(self, item: m.PlanItem) -> None:
        row = self.ex.flows[str(item.source_id)]
        if item.action == m.CREATE:
            self._created(item, self.post("/flows/", flow_body(row)))
        else:
            request(self.api, "PATCH", f"/flows/{item.target_id}",
                    {"tags": list(row.get("tags") or [])})

    def deployment(self, item: m.PlanItem) -> None:
        row = self.ex.deployments[str(item.source_id)]
        self._mapped(row.get("flow_id"), "its flow")
        body = deployment_body(self.ex, row, self.id_map)
        if item.action == m.OVERWRITE and "concurrency_limit" not in body \
                and "global_concurrency_limit_id" not in body:
            # The export has no limit: clear the target's. Its own limit (a GCL named
            # "deployment:<id>") is deleted with concurrency_limit=None; a shared GCL is only
            # unlinked (concurrency_limit=None would delete the shared limit itself).
            have = request(self.api, "GET", f"/deployments/{item.target_id}") or {}
            gcl = have.get("global_concurrency_limit") or {}
            if str(gcl.get("name", "")).startswith(m.DEPLOYMENT_LIMIT_PREFIX):
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
                          and norm_schedule(s.get("schedule")) == norm_schedule(
                              want.get("schedule"))
                          and (s.get("parameters") or {}) == want.get("parameters")
                          and s.get("slug") == want.get("slug")), None)
            if match is None:
                raise m.ConfigImportError("a schedule was not recreated as exported")
            used.add(str(match["id"]))
            if match.get("max_scheduled_runs") != want["max_scheduled_runs"]:
                request(self.api, "PATCH",
                        f"/deployments/{served['id']}/schedules/{match['id']}",
                        {"max_scheduled_runs": want["max_scheduled_runs"]})

    # automations
    def automation(self, item: m.PlanItem) -> None:
        row = self.ex.automations[str(item.source_id)]
        dangling = referenced(self.ex, row, set(self.id_map) | {str(row["id"])})
        if dangling:
            raise m.ConfigImportError("refers to " + ", ".join(dangling) + ", which is not on "
                                      "the target")
        body = automation_body(row, self.id_map)
        if item.action == m.CREATE:
            owner = self.ex.owner_resource.get(str(row["id"]))
            if owner:
                body["owner_resource"] = remap(owner, self.id_map)
            self._created(item, self.post("/automations/", body))
        else:
            request(self.api, "PUT", f"/automations/{item.target_id}", body)


def apply(api_url: str, export_doc: dict[str, Any], the_plan: m.ImportPlan, *,
          on_item: Callable[[m.ItemResult], None] | None = None) -> m.ImportResult:
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
        raise m.ConfigImportError("the plan was made for another Prefect server")
    if the_plan.backup_id != export_doc.get("backup_id"):
        raise m.ConfigImportError("the plan was made from another backup's export")
    ex = Export(export_doc)
    applier = Applier(api_url, ex, the_plan)
    result = m.ImportResult()
    for item in the_plan.items:
        if item.action in (m.SKIP, m.UNCHANGED, m.NOT_IMPORTABLE):
            outcome = {m.SKIP: m.SKIPPED, m.UNCHANGED: m.UNCHANGED,
                       m.NOT_IMPORTABLE: m.FAILED}[item.action]
            done = m.ItemResult(item.section, item.kind, item.name, item.action, outcome,
                                item.note if outcome == m.FAILED else None)
        else:
            try:
                outcome = applier.run(item)
                done = m.ItemResult(item.section, item.kind, item.name, item.action, outcome)
            except Interrupted:
                raise
            except (DRError, KeyError, TypeError, ValueError, StopIteration) as exc:
                interrupt.raise_if_noted()
                done = m.ItemResult(item.section, item.kind, item.name, item.action, m.FAILED,
                                    _first_line(exc))
        result.items.append(done)
        if on_item is not None:
            on_item(done)
    return result
