"""restore-config core against a FRESH Prefect server: dry-run plan, import, idempotence, overwrite.

One real backup of the seeded stack and one fresh Prefect server (empty database, migrated on
start) for the whole module; the plan of the untouched server is taken before anything is
imported, so each test stands alone whatever the order.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import drop_db, run_cli

from prefect_dr import config, crypto
from prefect_dr import config_import as ci
from prefect_dr.catalog import require_complete, resolve
from prefect_dr.layout import Layout
from prefect_dr.prefect_api import paged, request
from prefect_dr.smoke import PrefectServer
from prefect_dr.storage import factory

pytestmark = pytest.mark.integration

SECRET_VALUE = "s3cr3t-dr-seed-value"  # scripts/seed.py


class Fresh:
    """The module's fresh server, the export, and the dry-run plan taken before any import."""

    def __init__(self, api: str, export_doc: dict[str, Any], dry_plan: ci.ImportPlan) -> None:
        self.api, self.export, self.dry_plan = api, export_doc, dry_plan
        self.applied: ci.ImportResult | None = None

    def apply_once(self) -> ci.ImportResult:
        if self.applied is None:
            self.applied = ci.apply(self.api, self.export, ci.plan(self.api, self.export))
        return self.applied


@pytest.fixture(scope="module")
def fresh(stack_env: dict[str, str], identity: tuple[Path, str]) -> Iterator[Fresh]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_"))}
    env.update(stack_env)
    env.update(PREFECT_DR_AGE_RECIPIENTS=identity[1],
               PREFECT_DR_AGE_IDENTITY_FILE=str(identity[0]),
               PREFECT_DR_S3_PREFIX=f"rc-{uuid.uuid4().hex[:10]}")
    backup = run_cli(["backup", "--json"], env)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["backup_id"]
    settings = config.load(env=env)
    with pytest.MonkeyPatch.context() as mp:  # boto3 reads its credentials from os.environ
        for key, value in stack_env.items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        storage = factory.from_settings(settings)
        manifest = require_complete(resolve(storage, Layout(settings.s3_prefix or ""),
                                            backup_id), trust=None)
        export_doc = ci.read_export(storage, manifest,
                                    crypto.load_identities(Path(settings.age_identity_file)))

    name = f"prefect_rc_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(stack_env["PREFECT_DR_DATABASE_URL"], password=stack_env["PGPASSWORD"],
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(stack_env["PREFECT_DR_DATABASE_URL"])
    url = (f"postgresql://{parts.username}:{stack_env['PGPASSWORD']}@{parts.hostname}:"
           f"{parts.port}/{name}")
    try:
        with PrefectServer(url) as server:
            yield Fresh(server.api, export_doc, ci.plan(server.api, export_doc))
    finally:
        drop_db(stack_env, name)


def _expected(export_doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every object of the export that restore-config imports."""
    types = {t["id"]: t["slug"] for t in export_doc["block_types"]}
    flows = {f["id"]: f["name"] for f in export_doc["flows"]}
    pools = {p["id"]: p["name"] for p in export_doc["work_pools"]}
    out = {(ci.BLOCK_DOCUMENT, f"{types[b['block_type_id']]}/{b['name']}")
           for b in export_doc["block_documents"] if not b["is_anonymous"]}
    out |= {(ci.VARIABLE, v["name"]) for v in export_doc["variables"]}
    out |= {(ci.WORK_POOL, p["name"]) for p in export_doc["work_pools"]}
    out |= {(ci.WORK_QUEUE, f"{pools[q['work_pool_id']]}/{q['name']}")
            for q in export_doc["work_queues"]}
    out |= {(ci.DEPLOYMENT, f"{flows[d['flow_id']]}/{d['name']}")
            for d in export_doc["deployments"]}
    out |= {(ci.FLOW, flows[d["flow_id"]]) for d in export_doc["deployments"]}
    out |= {(ci.AUTOMATION, a["name"]) for a in export_doc["automations"]}
    out |= {(ci.CONCURRENCY_LIMIT, c["name"]) for c in export_doc["concurrency_limits"]
            if not c["name"].startswith("deployment:")}
    return out


def _state(api: str) -> dict[str, Any]:
    """Everything restore-config writes, as the API shows it (with update stamps)."""
    def by(rows: list[dict[str, Any]], key: str = "name") -> dict[str, Any]:
        return {r[key]: r for r in rows}

    pools = by(paged(api, "/work_pools/filter"))
    return {
        "blocks": by(paged(api, "/block_documents/filter",
                           {"include_secrets": True, "block_documents": {"is_anonymous": None}})),
        "block_types": sorted(t["slug"] for t in paged(api, "/block_types/filter")),
        "block_schemas": sorted(s["id"] for s in paged(api, "/block_schemas/filter")),
        "variables": by(paged(api, "/variables/filter")),
        "pools": pools,
        "queues": {p: by(paged(api, f"/work_pools/{p}/queues/filter")) for p in pools},
        "flows": by(paged(api, "/flows/filter")),
        "deployments": by(paged(api, "/deployments/filter")),
        "automations": by(paged(api, "/automations/filter")),
        "limits": by(paged(api, "/v2/concurrency_limits/filter")),
    }


def test_dry_run_lists_every_exported_object_as_create(fresh: Fresh) -> None:
    plan = fresh.dry_plan
    listed = {(i.kind, i.name) for i in plan.items}
    expected = _expected(fresh.export)
    assert expected <= listed, expected - listed
    assert {(ci.BLOCK_DOCUMENT, "secret/dr-secret"), (ci.VARIABLE, "dr_object"),
            (ci.WORK_QUEUE, "dr-pool/dr-extra-queue"),
            (ci.DEPLOYMENT, "dr-flow/dr-deployment"), (ci.AUTOMATION, "dr-automation"),
            (ci.CONCURRENCY_LIMIT, "dr-gcl")} <= listed
    assert {i.action for i in plan.items} == {ci.CREATE}
    # The custom block type is missing on a fresh server; the core Secret type is not.
    assert (ci.BLOCK_TYPE, "dr-warehouse-config") in listed
    assert (ci.BLOCK_TYPE, "secret") not in listed
    assert set(plan.only) == set(ci.SECTIONS)
    assert plan.target_version == "3.9.1"
    rendered = json.dumps(plan.to_dict())
    assert SECRET_VALUE not in rendered and "warehouse-pa55" not in rendered


def test_apply_recreates_everything_with_secrets(fresh: Fresh) -> None:
    result = fresh.apply_once()
    assert result.ok, result.failures
    assert result.created == len(fresh.dry_plan.items)
    assert result.to_dict()["counts"]["created"] == result.created
    state = _state(fresh.api)

    exported_blocks = {b["name"]: b for b in fresh.export["block_documents"]}
    assert state["blocks"]["dr-secret"]["data"] == {"value": SECRET_VALUE}
    assert state["blocks"]["dr-warehouse"]["data"] == exported_blocks["dr-warehouse"]["data"]
    assert state["blocks"]["dr-warehouse"]["block_type"]["slug"] == "dr-warehouse-config"

    assert {n: v["value"] for n, v in state["variables"].items()} == {
        "dr_string": "hello", "dr_number": 42, "dr_object": {"a": [1, 2], "b": {"c": True}},
        "dr_list": [1, "two", 3.0]}
    assert state["variables"]["dr_string"]["tags"] == ["dr-seed"]

    pool = state["pools"]["dr-pool"]
    assert pool["type"] == "process" and pool["concurrency_limit"] == 10
    exported_pool = next(p for p in fresh.export["work_pools"] if p["name"] == "dr-pool")
    assert pool["base_job_template"] == exported_pool["base_job_template"]
    extra = state["queues"]["dr-pool"]["dr-extra-queue"]
    assert (extra["priority"], extra["concurrency_limit"], extra["description"]) == \
        (2, 3, "second queue")
    assert pool["default_queue_id"] == state["queues"]["dr-pool"]["default"]["id"]

    dep = state["deployments"]["dr-deployment"]
    assert dep["flow_id"] == state["flows"]["dr-flow"]["id"]
    assert (dep["work_pool_name"], dep["work_queue_name"]) == ("dr-pool", "default")
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 * * * *"]
    assert dep["schedules"][0]["active"] is True
    assert dep["parameters"] == {"size": 5}
    assert dep["job_variables"] == {"env": {"DR_SEEDED": "1"}}
    assert dep["entrypoint"] == "scripts/seed.py:dr_flow"
    assert dep["tags"] == ["dr-seed"]

    automation = state["automations"]["dr-automation"]
    # The deployment id the automation names is translated to the new server's deployment.
    assert automation["actions"][0]["deployment_id"] == dep["id"]
    assert automation["trigger"]["match_related"]["prefect.resource.id"] == \
        f"prefect.deployment.{dep['id']}"
    assert automation["trigger"]["expect"] == ["prefect.flow-run.Failed"]

    assert state["limits"]["dr-gcl"]["limit"] == 5


def test_second_run_with_skip_changes_nothing(fresh: Fresh) -> None:
    fresh.apply_once()
    before = _state(fresh.api)
    again = ci.plan(fresh.api, fresh.export, on_conflict="skip")
    assert again.items
    assert {i.action for i in again.items} == {ci.SKIP}, \
        [(i.kind, i.name, i.action) for i in again.items if i.action != ci.SKIP]
    assert all(i.diff == [] for i in again.items), [(i.name, i.diff) for i in again.items]
    result = ci.apply(fresh.api, fresh.export, again)
    assert (result.created, result.overwritten, result.failed) == (0, 0, 0)
    assert result.skipped == len(again.items)
    assert _state(fresh.api) == before


def test_overwrite_restores_changed_objects_and_hides_secrets(fresh: Fresh) -> None:
    fresh.apply_once()
    request(fresh.api, "PATCH", "/variables/name/dr_number", {"value": 43})
    secret = next(b for b in paged(fresh.api, "/block_documents/filter")
                  if b["name"] == "dr-secret")
    request(fresh.api, "PATCH", f"/block_documents/{secret['id']}",
            {"data": {"value": "changed-on-target"}, "merge_existing_data": False})

    plan = ci.plan(fresh.api, fresh.export, on_conflict="overwrite")
    changed = {i.name: i for i in plan.items if i.action != ci.UNCHANGED}
    assert set(changed) == {"dr_number", "secret/dr-secret"}, changed
    assert changed["dr_number"].action == ci.OVERWRITE
    assert changed["dr_number"].diff == ["value"]
    assert changed["secret/dr-secret"].diff == ["data differs (keys: value)"]
    rendered = json.dumps(plan.to_dict())
    assert SECRET_VALUE not in rendered and "changed-on-target" not in rendered

    result = ci.apply(fresh.api, fresh.export, plan)
    assert result.ok and result.overwritten == 2, result.to_dict()
    state = _state(fresh.api)
    assert state["variables"]["dr_number"]["value"] == 42
    assert state["blocks"]["dr-secret"]["data"] == {"value": SECRET_VALUE}
    after = ci.plan(fresh.api, fresh.export, on_conflict="overwrite")
    assert {i.action for i in after.items} == {ci.UNCHANGED}


def test_only_selects_sections(fresh: Fresh) -> None:
    plan = ci.plan(fresh.api, fresh.export, only={"variables", "concurrency-limits"})
    assert {i.section for i in plan.items} == {"variables", "concurrency-limits"}
    assert plan.only == ("variables", "concurrency-limits")


def test_block_references_are_recreated(fresh: Fresh) -> None:
    """A block that nests another (S3Bucket -> anonymous AwsCredentials) keeps its reference."""
    types = {t["slug"]: t for t in fresh.export["block_types"]}
    schemas = {s["block_type_id"]: s for s in fresh.export["block_schemas"]}
    if "s3-bucket" not in types or "aws-credentials" not in types:
        pytest.skip("the seeded server has no aws block types registered")
    aws, bucket = types["aws-credentials"], types["s3-bucket"]
    child_id, parent_id = str(uuid.uuid4()), str(uuid.uuid4())
    child_data = {"aws_access_key_id": "AKIADRTEST", "aws_secret_access_key": "ref-s3cr3t-9"}

    def document(doc_id: str, name: str, block_type: dict[str, Any], data: dict[str, Any],
                 anonymous: bool) -> dict[str, Any]:
        schema = schemas[block_type["id"]]
        return {"id": doc_id, "name": name, "is_anonymous": anonymous,
                "block_type_id": block_type["id"], "block_type_slug": block_type["slug"],
                "block_schema_id": schema["id"], "block_schema_checksum": schema["checksum"],
                "data": data, "decrypted": True}

    synthetic = {k: v for k, v in fresh.export.items() if not isinstance(v, list)}
    synthetic.update({k: fresh.export[k] for k in ("block_types", "block_schemas",
                                                     "block_schema_references")})
    synthetic["block_documents"] = [
        document(parent_id, "dr-ref-bucket", bucket, {"bucket_name": "dr-bucket"}, False),
        document(child_id, f"anonymous-{child_id}", aws, child_data, True)]
    synthetic["block_document_references"] = [
        {"id": str(uuid.uuid4()), "name": "credentials", "parent_block_document_id": parent_id,
         "reference_block_document_id": child_id}]

    plan = ci.plan(fresh.api, synthetic, only={"blocks"})
    docs = [i for i in plan.items if i.kind.startswith(ci.BLOCK_DOCUMENT)]
    assert [(i.name, i.action) for i in docs] == [
        (f"aws-credentials/anonymous-{child_id}", ci.CREATE),
        ("s3-bucket/dr-ref-bucket", ci.CREATE)]
    result = ci.apply(fresh.api, synthetic, plan)
    assert result.ok, result.to_dict()

    served = next(b for b in paged(fresh.api, "/block_documents/filter",
                                   {"include_secrets": True}) if b["name"] == "dr-ref-bucket")
    assert served["data"]["bucket_name"] == "dr-bucket"
    assert served["data"]["credentials"] == child_data
    ref = served["block_document_references"]["credentials"]["block_document"]
    assert (ref["name"], ref["is_anonymous"]) == (f"anonymous-{child_id}", True)
    again = ci.plan(fresh.api, synthetic, only={"blocks"}, on_conflict="overwrite")
    assert {i.action for i in again.items} == {ci.UNCHANGED}, [i.to_dict() for i in again.items]
