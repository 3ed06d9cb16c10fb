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

Modules, one concept each (each imports only modules listed before it):

* ``model``: the vocabulary (sections, actions, item kinds, outcomes) and the result types;
* ``source``: the export document: read from a backup, checked, indexed (``Export``);
* ``bodies``: desired state: an exported row as the API request body that recreates it;
* ``target``: what the live server holds, read through its API (``Target``);
* ``compare``: which fields differ, which references dangle;
* ``planner``: :func:`plan`;
* ``applier``: :func:`apply`;
* ``undo``: the way back: a config-only safety backup of the target's database, taken first.

This package re-exports what callers use (``from prefect_dr import config_import as ci``).
"""

from __future__ import annotations

from prefect_dr.config_import.applier import apply
from prefect_dr.config_import.model import (
    ACTIONS,
    AUTOMATION,
    BLOCK_DOCUMENT,
    BLOCK_DOCUMENT_ANONYMOUS,
    BLOCK_SCHEMA,
    BLOCK_TYPE,
    CONCURRENCY_LIMIT,
    CREATE,
    CREATED,
    DEPLOYMENT,
    FAILED,
    FLOW,
    NOT_IMPORTABLE,
    ON_CONFLICT,
    OUTCOMES,
    OVERWRITE,
    OVERWRITTEN,
    SECTIONS,
    SKIP,
    SKIPPED,
    UNCHANGED,
    VARIABLE,
    WORK_POOL,
    WORK_QUEUE,
    ConfigImportError,
    ImportPlan,
    ImportResult,
    ItemResult,
    OnConflict,
    PlanItem,
    parse_only,
)
from prefect_dr.config_import.planner import plan
from prefect_dr.config_import.source import check_export, read_export

__all__ = [
    "ACTIONS",
    "AUTOMATION",
    "BLOCK_DOCUMENT",
    "BLOCK_DOCUMENT_ANONYMOUS",
    "BLOCK_SCHEMA",
    "BLOCK_TYPE",
    "CONCURRENCY_LIMIT",
    "CREATE",
    "CREATED",
    "DEPLOYMENT",
    "FAILED",
    "FLOW",
    "NOT_IMPORTABLE",
    "ON_CONFLICT",
    "OUTCOMES",
    "OVERWRITE",
    "OVERWRITTEN",
    "SECTIONS",
    "SKIP",
    "SKIPPED",
    "UNCHANGED",
    "VARIABLE",
    "WORK_POOL",
    "WORK_QUEUE",
    "ConfigImportError",
    "ImportPlan",
    "ImportResult",
    "ItemResult",
    "OnConflict",
    "PlanItem",
    "apply",
    "check_export",
    "parse_only",
    "plan",
    "read_export",
]
