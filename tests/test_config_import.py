"""restore-config core: the parts that need no server."""

from __future__ import annotations

import json

import pytest

from prefect_dr import config_import as ci
from prefect_dr import errors
from prefect_dr.config_import import bodies, compare, source
from prefect_dr.prefect_api import error_detail


def _export(**sections: object) -> dict[str, object]:
    return {"format": "prefect-dr-config-export", "format_version": 1, "backup_id": "b",
            **sections}


def test_parse_only() -> None:
    assert ci.parse_only(None) == set(ci.SECTIONS)
    assert ci.parse_only("blocks, variables") == {"blocks", "variables"}
    assert ci.parse_only(["work-pools"]) == {"work-pools"}
    with pytest.raises(ci.ConfigImportError) as info:
        ci.parse_only("blocks,flows")
    assert info.value.exit_code == errors.USAGE and "flows" in info.value.message


def test_bad_arguments_and_exports_fail_before_any_request() -> None:
    nowhere = "http://127.0.0.1:9/api"  # never contacted
    with pytest.raises(ci.ConfigImportError) as info:
        ci.plan(nowhere, _export(), on_conflict="replace")
    assert info.value.exit_code == errors.USAGE
    with pytest.raises(ci.ConfigImportError, match="not a prefect-dr configuration export"):
        ci.plan(nowhere, {"format": "something-else"})
    with pytest.raises(ci.ConfigImportError, match="format_version 2"):
        ci.plan(nowhere, {**_export(), "format_version": 2})


def test_error_detail_never_echoes_the_request() -> None:
    body = {"detail": [{"loc": ["body", "data", "value"], "msg": "Input should be a string",
                        "input": {"value": "top-secret-value"}, "type": "string_type"}]}
    text = error_detail(json.dumps(body).encode())
    assert text == "data.value: Input should be a string"
    assert error_detail(json.dumps({"detail": 'Work pool "x" not found.'}).encode()) == \
        'Work pool "x" not found.'
    assert len(error_detail(json.dumps({"detail": "x" * 1000}).encode())) == 200
    assert error_detail(b"<html>") == ""


def test_deployment_body_translates_ids_limits_and_schedules() -> None:
    dep_id, flow_id, pool_id, queue_id, own, shared = (f"00000000-0000-0000-0000-00000000000{i}"
                                                       for i in range(6))
    doc = _export(
        flows=[{"id": flow_id, "name": "f"}],
        work_pools=[{"id": pool_id, "name": "p", "default_queue_id": queue_id}],
        work_queues=[{"id": queue_id, "name": "q", "work_pool_id": pool_id}],
        concurrency_limits=[{"id": own, "name": f"deployment:{dep_id}", "limit": 4},
                            {"id": shared, "name": "shared", "limit": 9}],
        deployment_schedules=[{"id": "s", "deployment_id": dep_id, "active": False,
                               "schedule": {"interval": 60.0}, "parameters": {"a": 1},
                               "slug": "every-minute", "created": "2026-01-01"}])
    ex = source.Export(doc)
    row = {"id": dep_id, "name": "d", "flow_id": flow_id, "work_queue_id": queue_id,
           "work_queue_name": "q", "infra_overrides": {"env": {"A": "1"}},
           "labels": {"prefect.flow.id": flow_id, "team": "data"}, "paused": True,
           "concurrency_limit_id": own, "status": "READY"}
    body = bodies.deployment_body(ex, row, {flow_id: "new-flow"})
    assert body["flow_id"] == "new-flow"
    assert (body["work_pool_name"], body["work_queue_name"]) == ("p", "q")
    assert body["job_variables"] == {"env": {"A": "1"}}
    assert body["labels"] == {"team": "data"}
    assert body["concurrency_limit"] == 4 and "global_concurrency_limit_id" not in body
    assert body["schedules"] == [{"schedule": {"interval": 60.0}, "active": False,
                                  "parameters": {"a": 1}, "slug": "every-minute"}]
    assert "status" not in body and "id" not in body

    shared_row = {**row, "concurrency_limit_id": shared}
    assert bodies.deployment_body(ex, shared_row, {shared: "new-gcl"})[
        "global_concurrency_limit_id"] == "new-gcl"
    assert "global_concurrency_limit_id" not in bodies.deployment_body(ex, shared_row, {})
    assert compare.deployment_missing(ex, shared_row, {pool_id}) == [
        "global concurrency limit 'shared' (left out)"]
    assert compare.deployment_missing(ex, row, set()) == ["work pool 'p'"]


def test_automation_ids_are_translated_and_trigger_ids_dropped() -> None:
    old, new = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    row = {"id": "a", "name": "n", "enabled": True,
           "trigger": {"id": "33333333-3333-3333-3333-333333333333", "type": "event",
                       "match_related": {"prefect.resource.id": f"prefect.deployment.{old}"}},
           "actions": [{"type": "pause-deployment", "source": "selected",
                        "deployment_id": old}]}
    body = bodies.automation_body(row, {old: new})
    assert body["actions"][0]["deployment_id"] == new
    assert body["trigger"] == {"type": "event",
                               "match_related": {"prefect.resource.id":
                                                 f"prefect.deployment.{new}"}}


def test_result_counts_and_json() -> None:
    result = ci.ImportResult([
        ci.ItemResult("variables", ci.VARIABLE, "a", ci.CREATE, ci.CREATED),
        ci.ItemResult("variables", ci.VARIABLE, "b", ci.SKIP, ci.SKIPPED),
        ci.ItemResult("blocks", ci.BLOCK_DOCUMENT, "secret/x", ci.CREATE, ci.FAILED,
                      "Prefect API POST /block_documents/: HTTP 409: Block already exists")])
    assert (result.created, result.skipped, result.failed, result.ok) == (1, 1, 1, False)
    out = result.to_dict()
    assert out["counts"] == {"created": 1, "overwritten": 0, "unchanged": 0, "skipped": 1,
                             "failed": 1}
    assert out["failures"] == [{"section": "blocks", "kind": ci.BLOCK_DOCUMENT,
                                "name": "secret/x", "error": result.items[2].error}]


def test_only_the_secret_fields_of_block_data_are_registered_as_secrets() -> None:
    from prefect_dr import redact

    fields = {"secret_fields": ["password", "extra.*"]}
    source.register_secrets({"username": "loader-unit", "password": "pa55-unit",
                             "extra": {"token": "tok-unit"},
                             "connection": {"host": "h-unit"}}, fields)
    shown = redact.redact("loader-unit pa55-unit tok-unit h-unit")
    assert shown == "loader-unit *** *** h-unit"
    source.register_secrets({"anything": "no-schema-unit"}, None)
    assert redact.redact("no-schema-unit") == "***"
