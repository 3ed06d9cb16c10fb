"""Planning: compare the export with what the target holds and decide, object by object, what
importing it would do and which fields differ. Reads the target; writes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prefect_dr.config_import import model as m
from prefect_dr.config_import.bodies import (
    automation_body,
    deployment_body,
    limit_body,
    pool_body,
    queue_body,
    variable_body,
)
from prefect_dr.config_import.compare import (
    AUTOMATION_FIELDS,
    POOL_FIELDS,
    QUEUE_FIELDS,
    deployment_diff,
    deployment_missing,
    referenced,
)
from prefect_dr.config_import.source import Export, check_export, register_secrets, section_rows
from prefect_dr.config_import.target import Target, canonical_fields
from prefect_dr.errors import USAGE
from prefect_dr.prefect_api import server_version


def _differs(want: dict[str, Any], have: dict[str, Any] | None,
             body: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]],
             fields: Iterable[str]) -> list[str]:
    """The ``fields`` in which ``want`` differs from the target's object ``have`` made into a
    request body the same way (none when the target has no such object)."""
    if have is None:
        return []
    have_body = body(have, {})
    return [f for f in fields if f in want and want.get(f) != have_body.get(f)]


class Planner:
    """Decides each exported object's action and diff, filling ``result`` as it goes."""

    def __init__(self, ex: Export, target: Target, on_conflict: str,
                 result: m.ImportPlan) -> None:
        self.ex, self.t, self.on_conflict = ex, target, on_conflict
        self.plan = result
        self.id_map = result.id_map

    def add(self, section: str, kind: str, name: str, *, exists: dict[str, Any] | None,
            diff: list[str] | None = None, source_id: Any = None,
            note: str | None = None, action: str | None = None) -> m.PlanItem:
        diff = diff or []
        if action is None:
            if exists is None:
                action = m.CREATE
            elif self.on_conflict == "skip":
                action = m.SKIP
            else:
                action = m.OVERWRITE if diff else m.UNCHANGED
        target_id = str(exists["id"]) if exists and exists.get("id") else None
        if source_id is not None and target_id is not None:
            self.id_map[str(source_id)] = target_id
        item = m.PlanItem(section, kind, name, action, diff, note,
                          str(source_id) if source_id is not None else None, target_id)
        self.plan.items.append(item)
        return item

    def match_only(self) -> None:
        """Fill the id map for every exported object already on the target (all sections),
        so references resolve even when the referenced section is not imported."""
        ex, t, ids = self.ex, self.t, self.id_map
        for i, row in ex.block_types.items():
            if row.get("slug") in t.block_types:
                ids[i] = t.block_types[row["slug"]]["id"]
        for i, row in ex.block_schemas.items():
            slug = str((ex.block_types.get(str(row.get("block_type_id"))) or {}).get("slug"))
            same = t.block_schemas.get(ex.schema_key(row)) or t.block_schemas_by_fields.get(
                (slug, str(row.get("version") or ""), canonical_fields(row.get("fields"))))
            if same is not None:
                ids[i] = same["id"]

        def by_name(_: str, row: dict[str, Any]) -> Any:
            return row.get("name")

        # (exported rows, the key they are matched by, the target's objects by that key)
        matched_by: tuple[tuple[dict[str, Any], Callable[[str, dict[str, Any]], Any],
                                dict[Any, Any]], ...] = (
            (ex.block_documents, lambda _, row: ex.doc_key(row), t.block_documents),
            (ex.concurrency_limits, by_name, t.concurrency_limits),
            (ex.work_pools, by_name, t.work_pools),
            (ex.work_queues, lambda i, row: (ex.pool_of_queue(i) or "", str(row.get("name"))),
             t.work_queues),
            (ex.flows, by_name, t.flows),
            (ex.deployments, lambda _, row: ex.deployment_key(row), t.deployments),
            (ex.automations, by_name, t.automations))
        for rows, key_of, have in matched_by:
            for i, row in rows.items():
                key = key_of(i, row)
                if key in have:
                    ids[i] = have[key]["id"]
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
                self.add("blocks", m.BLOCK_TYPE, str(row["slug"]), exists=None, source_id=tid)
        for sid in needed_schemas:
            row = ex.block_schemas.get(sid)
            if row is not None and sid not in self.id_map:
                slug = (ex.block_types.get(str(row.get("block_type_id"))) or {}).get("slug")
                self.add("blocks", m.BLOCK_SCHEMA,
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
        kind = m.BLOCK_DOCUMENT_ANONYMOUS if d.get("is_anonymous") else m.BLOCK_DOCUMENT
        have = self.t.block_documents.get((slug, name))
        if not d.get("decrypted") or not isinstance(d.get("data"), dict):
            self.add("blocks", kind, label, exists=have, source_id=d["id"],
                     action=m.NOT_IMPORTABLE,
                     note="the export holds no decrypted data for this block (its key was "
                          "missing at backup time)")
            return
        register_secrets(d["data"], (self.ex.block_schemas.get(
            str(d.get("block_schema_id"))) or {}).get("fields"))
        diff: list[str] = []
        if have is not None:
            register_secrets(have.get("data"), (have.get("block_schema") or {}).get("fields"))
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
            want = variable_body(row)
            have = self.t.variables.get(str(row["name"]))
            diff: list[str] = []
            if have is not None:
                if have.get("value") != want["value"]:
                    diff.append("value")
                if sorted(have.get("tags") or []) != sorted(want["tags"]):
                    diff.append("tags")
            self.add("variables", m.VARIABLE, str(row["name"]), exists=have, diff=diff,
                     source_id=row.get("id"))

    def concurrency_limits(self) -> None:
        rows = [r for r in self.ex.concurrency_limits.values()
                if not str(r.get("name", "")).startswith(m.DEPLOYMENT_LIMIT_PREFIX)]
        names = {r.get("name") for r in rows}
        for r in section_rows(self.ex.doc, "task_concurrency_limits"):  # v1 (tag) limits
            name = f"tag:{r.get('tag')}"
            if r.get("tag") and name not in names:
                rows.append({"id": r.get("id"), "name": name,
                             "limit": r.get("concurrency_limit"), "active": True,
                             "slot_decay_per_second": 0.0})
                names.add(name)
        for row in sorted(rows, key=lambda r: str(r.get("name"))):
            want = limit_body(row)
            have = self.t.concurrency_limits.get(str(row["name"]))
            diff: list[str] = []
            if have is not None:
                diff = [f for f in ("limit", "active") if have.get(f) != want[f]]
                if float(have.get("slot_decay_per_second") or 0) != \
                        want["slot_decay_per_second"]:
                    diff.append("slot_decay_per_second")
            self.add("concurrency-limits", m.CONCURRENCY_LIMIT, str(row["name"]), exists=have,
                     diff=diff, source_id=row.get("id"))

    # work pools ----------------------------------------------------------------------------

    def work_pools(self) -> None:
        ex, t = self.ex, self.t
        for pool in sorted(ex.work_pools.values(), key=lambda p: str(p.get("name"))):
            name = str(pool["name"])
            have = t.work_pools.get(name)
            want = pool_body(pool, self.id_map)
            diff = _differs(want, have, pool_body, POOL_FIELDS)
            item = self.add("work-pools", m.WORK_POOL, name, exists=have, diff=diff,
                            source_id=pool["id"])
            if "type" in diff and item.action == m.OVERWRITE:
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
            want = queue_body(q)
            diff = [f for f in QUEUE_FIELDS if f in want and want[f] != have.get(f)]
        note = None
        if have is None and is_default and not pool_exists:
            note = "the pool's default queue: created with the pool, then set as exported"
        self.add("work-pools", m.WORK_QUEUE, f"{pool}/{q['name']}", exists=have, diff=diff,
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
            self.add("deployments", m.FLOW, str(row["name"]), exists=have, diff=diff,
                     source_id=fid)
        for d in deps:
            flow_name, dep_name = ex.deployment_key(d)
            have = t.deployments.get((flow_name, dep_name))
            want = deployment_body(ex, d, self.id_map)
            diff = deployment_diff(want, have) if have is not None else []
            available = set(self.id_map) | {i.source_id for i in self.plan.items
                                            if i.source_id and i.action == m.CREATE}
            missing = deployment_missing(ex, d, available)
            self.add("deployments", m.DEPLOYMENT, f"{flow_name}/{dep_name}", exists=have,
                     diff=diff, source_id=d["id"],
                     note=("needs " + ", ".join(missing) + ": neither on the target nor "
                           "imported") if missing else None)
        if section_rows(ex.doc, "deployment_versions"):
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
                                    if i.source_id and i.action == m.CREATE}
        for a in sorted(ex.automations.values(), key=lambda a: str(a.get("name"))):
            name = str(a["name"])
            if name in seen:
                continue
            seen.add(name)
            have = t.automations.get(name)
            want = automation_body(a, self.id_map)
            diff = _differs(want, have, automation_body, AUTOMATION_FIELDS)
            dangling = referenced(ex, a, known | {str(a["id"])})
            note = ("refers to " + ", ".join(dangling) + ": neither on the target nor "
                    "imported") if dangling else None
            self.add("automations", m.AUTOMATION, name, exists=have, diff=diff,
                     source_id=a["id"], note=note)


def plan(api_url: str, export_doc: dict[str, Any], *, only: Iterable[str] | str = m.SECTIONS,
         on_conflict: m.OnConflict | str = "skip") -> m.ImportPlan:
    """Compare ``export_doc`` with what the Prefect server at ``api_url`` holds.

    Reads every object of the target (pages of 200); writes nothing. Items come in the order
    :func:`apply` carries them out. Raises ConfigImportError (exit code 2) for an unknown
    section or conflict mode, ConfigImportError for an export this version cannot read, and
    PrefectAPIError when the target cannot be read.
    """
    selected = m.parse_only(only if isinstance(only, str) else list(only))
    if on_conflict not in m.ON_CONFLICT:
        raise m.ConfigImportError(f"on_conflict must be one of {', '.join(m.ON_CONFLICT)}",
                                  exit_code=USAGE)
    check_export(export_doc)
    ex = Export(export_doc)
    version = server_version(api_url)
    target = Target.read(api_url, [str(p.get("name")) for p in ex.work_pools.values()])
    result = m.ImportPlan(api_url=api_url, target_version=version,
                          backup_id=export_doc.get("backup_id"),
                          only=tuple(s for s in m.SECTIONS if s in selected),
                          on_conflict=str(on_conflict))
    planner = Planner(ex, target, str(on_conflict), result)
    planner.match_only()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("blocks", planner.blocks), ("variables", planner.variables),
        ("concurrency-limits", planner.concurrency_limits),
        ("work-pools", planner.work_pools), ("deployments", planner.deployments),
        ("automations", planner.automations)]
    for section, step in steps:
        if section in selected:
            step()
    if section_rows(export_doc, "saved_searches"):
        result.warnings.append("saved searches are not imported")
    return result
