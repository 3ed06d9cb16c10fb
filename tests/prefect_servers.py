"""Helpers for tests that talk to real Prefect servers: a secret block written and read back
through the REST API (any Prefect 3.x), and the cached venvs of older Prefect releases."""

from __future__ import annotations

from typing import Any

from prefect_dr import prefect_api


def _one(api: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    found = prefect_api.request(api, "POST", path, body)
    assert found, (path, body)
    return found[0]


def create_secret(api: str, name: str, value: str) -> None:
    """Save a Secret block ``name`` holding ``value`` (block types register on start)."""
    block_type = _one(api, "/block_types/filter", {"block_types": {"slug": {"any_": ["secret"]}}})
    schema = _one(api, "/block_schemas/filter",
                  {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}})
    prefect_api.request(api, "POST", "/block_documents/", {
        "name": name, "block_type_id": block_type["id"], "block_schema_id": schema["id"],
        "data": {"value": value}})


def read_secret(api: str, name: str) -> str:
    """The value of Secret block ``name``, decrypted by the server."""
    doc = _one(api, "/block_documents/filter", {
        "block_documents": {"name": {"any_": [name]}}, "include_secrets": True})
    return str(doc["data"]["value"])
