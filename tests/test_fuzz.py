"""Property tests: the manifest and export parsers accept what we write and refuse anything
else with their own error type, never another exception."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_dr import export, manifest
from prefect_dr.layout import DUMP, Layout

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _valid() -> manifest.Manifest:
    bid = "20261126T153000Z-a1b2c3"
    art = manifest.Artifact("dump", Layout("p").artifact(bid, DUMP), "pg_dump-custom", 10,
                            "a" * 64, 20, "b" * 64, "zstd", recipients=("f" * 16,))
    return manifest.Manifest(bid, "full", "2026-11-26T15:30:00+00:00",
                             "2026-11-26T15:31:00+00:00", "0.1.0", "3.9.1", "91e2b8f3d6a4",
                             "15.18", "15.18", "db:5432/prefect",
                             {"flow_run": {"rows": 3, "exact": True}}, (art,),
                             {"source": "database"}, {"env": "ci"}, database_size=123)


def test_manifest_round_trip() -> None:
    m = _valid()
    assert manifest.parse(m.to_json()) == m


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_manifest_parser_on_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(manifest.ManifestError):
        manifest.parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_manifest_parser_on_mutated_manifests(data: st.DataObject) -> None:
    doc = json.loads(_valid().to_json())
    path = data.draw(st.sampled_from([
        ("format_version",), ("kind",), ("row_counts",), ("artifacts",), ("labels",),
        ("backup_id",), ("block_key",), ("artifacts", 0, "size"), ("artifacts", 0, "key"),
        ("artifacts", 0, "recipients"), ("row_counts", "flow_run", "rows"), ("signature",),
        ("database_size",), ("prefect_version",),
    ]))
    target = doc
    for part in path[:-1]:
        target = target[part]
    if data.draw(st.booleans()):
        target.pop(path[-1], None) if isinstance(target, dict) else None
    else:
        target[path[-1]] = data.draw(JSON)
    try:
        parsed = manifest.parse(json.dumps(doc).encode())
    except manifest.ManifestError:
        return
    assert parsed.format_version in manifest.READABLE_VERSIONS  # whatever parses is usable


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_export_parser_on_arbitrary_json(value: object) -> None:
    raw = json.dumps(value).encode()
    with contextlib.suppress(export.ExportError):
        export.parse(raw)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["variables", "work_pools", "block_documents",
                                        "summary", "format_version"]), JSON, max_size=3))
def test_export_parser_on_mutated_exports(changes: dict[str, object]) -> None:
    doc = {"format": export.FORMAT, "format_version": 1, "variables": [{"name": "x"}]}
    doc.update(changes)
    try:
        parsed = export.parse(json.dumps(doc).encode())
    except export.ExportError:
        return
    assert all(isinstance(v["name"], str) for v in parsed.get("variables", []))
