from __future__ import annotations

import dataclasses
import json

import pytest

from prefect_dr import catalog, signing
from prefect_dr.errors import NotFoundError, UsageError, VerificationError
from prefect_dr.layout import DUMP, MANIFEST, STATUS, Layout
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.storage.memory import MemoryStorage

LAY = Layout("p")
A, B = "20261101T000000Z-aaaaaa", "20261102T000000Z-bbbbbb"


def _manifest(bid: str, labels: dict[str, str] | None = None) -> Manifest:
    art = Artifact("dump", LAY.artifact(bid, DUMP), "pg_dump-custom", 1, "x", 1, "y", "zstd")
    return Manifest(bid, "full", "2026-11-01T00:00:00+00:00", "2026-11-01T00:01:00+00:00",
                    "0.1.0", None, "rev", "15", "15", "db", {}, (art,), {}, labels or {})


def _store() -> MemoryStorage:
    s = MemoryStorage()
    for bid in (A, B):
        s.put_bytes(LAY.artifact(bid, DUMP), b"x")
        s.put_bytes(LAY.artifact(bid, MANIFEST), _manifest(bid).to_json())
    return s


def test_statuses() -> None:
    s = _store()
    c = "20261103T000000Z-cccccc"
    s.put_bytes(LAY.artifact(c, STATUS), catalog.status_record(
        c, "full", "failed", started_at="2026-11-03T00:00:00+00:00", host="h", pid=1,
        run_id="r", labels={}, error="boom"))
    d = "20261104T000000Z-dddddd"
    s.put_bytes(LAY.artifact(d, DUMP), b"partial")
    got = {e.backup_id: e.status for e in catalog.list_backups(s, LAY)}
    assert got == {A: "complete", B: "complete", c: "failed", d: "incomplete"}
    assert catalog.resolve(s, LAY, None, latest=True).backup_id == B
    with pytest.raises(NotFoundError, match="is failed: boom"):
        catalog.require_complete(catalog.resolve(s, LAY, c), trust=None)
    with pytest.raises(NotFoundError, match="is not a backup id"):
        catalog.resolve(s, LAY, "../etc")


def test_manifest_replaced_by_another_backups_is_corrupt() -> None:
    s = _store()
    s.put_bytes(LAY.artifact(A, MANIFEST), _manifest(B).to_json())
    entry = catalog.resolve(s, LAY, A)
    assert entry.status == "corrupt" and "describes backup " + B in entry.error
    with pytest.raises(VerificationError):
        catalog.require_complete(entry, trust=None)
    assert catalog.resolve(s, LAY, None, latest=True).backup_id == B


def test_garbage_manifest_is_corrupt_not_complete() -> None:
    s = _store()
    s.put_bytes(LAY.artifact(B, MANIFEST), b"{not json")
    assert catalog.resolve(s, LAY, B).status == "corrupt"
    assert catalog.resolve(s, LAY, None, latest=True).backup_id == A


def test_forged_and_unsigned_verification_records() -> None:
    s = _store()
    pem, public = signing.generate()
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode(), password=None)
    good = signing.sign_record({"backup_id": A, "result": "passed"}, key)
    s.put_bytes(LAY.verification(A, "20261101T010000Z-000001"), json.dumps(good).encode())
    s.put_bytes(LAY.verification(B, "20261102T010000Z-000001"),
                json.dumps({"backup_id": B, "result": "passed"}).encode())
    vk = signing.load_public(public)
    got = {e.backup_id: e.verification["result"]
           for e in catalog.list_backups(s, LAY, verify_key=vk)}
    assert got == {A: "passed", B: "unsigned"}
    s.put_bytes(LAY.verification(B, "20261102T020000Z-000002"),
                json.dumps({"backup_id": A, "result": "passed"}).encode())
    assert catalog.resolve(s, LAY, B).verification["result"] == "forged"


def test_latest_passes_over_a_backup_taken_during_an_unfinished_backfill() -> None:
    s = _store()
    c = "20261103T000000Z-cccccc"
    s.put_bytes(LAY.artifact(c, DUMP), b"x")
    s.put_bytes(LAY.artifact(c, MANIFEST), _manifest(c, {"backfill": "unfinished"}).to_json())
    assert catalog.select_one(s, LAY, None, latest=True, kind=None).backup_id == B
    assert catalog.select_one(s, LAY, c, latest=False, kind=None).backup_id == c  # by id: yes
    for bid in (A, B):  # only such backups: none stands in for a whole one (I2) ...
        s.delete(LAY.artifact(bid, MANIFEST))
    with pytest.raises(NotFoundError, match=c):  # ... and the error names it, to be named
        catalog.select_one(s, LAY, None, latest=True, kind=None)


def test_the_word_latest_means_what_the_flag_means() -> None:
    """Finding 4: ``show latest`` picked a config-only backup although --latest means the
    newest full one; it also passes over partial and safety backups."""
    s = _store()
    c = "20261103T000000Z-cccccc"
    s.put_bytes(LAY.artifact(c, DUMP), b"x")
    s.put_bytes(LAY.artifact(c, MANIFEST), Manifest(
        c, "config-only", "2026-11-03T00:00:00+00:00", "2026-11-03T00:01:00+00:00", "0.1.0",
        None, "rev", "15", "15", "db", {}, (), {}, {}).to_json())
    d = "20261104T000000Z-dddddd"
    s.put_bytes(LAY.artifact(d, DUMP), b"x")
    s.put_bytes(LAY.artifact(d, MANIFEST), _manifest(d, {"safety": "pre-restore"}).to_json())
    assert catalog.select_one(s, LAY, "latest", latest=False, kind=None).backup_id == B
    assert catalog.select_one(s, LAY, "latest", latest=False, kind="config-only",
                              ).backup_id == c
    with pytest.raises(UsageError):
        catalog.select_one(s, LAY, A, latest=True, kind=None)


def test_runtime_counts_are_optional_and_checked() -> None:
    """A manifest without runtime counts (before issue 21) keeps its exact bytes; one with them
    round-trips; a malformed one is refused naming the field."""
    from prefect_dr.manifest import ManifestError, parse

    old = _manifest(A)
    assert "runtime" not in json.loads(old.to_json())
    assert parse(old.to_json()).runtime is None
    new = dataclasses.replace(old, runtime={"flow_runs": 2, "v2_slots": 1})
    assert parse(new.to_json()).runtime == {"flow_runs": 2, "v2_slots": 1}
    bad = json.loads(new.to_json())
    bad["runtime"] = {"flow_runs": -1}
    with pytest.raises(ManifestError, match="runtime must map names to counts"):
        parse(json.dumps(bad).encode())


def test_a_unique_prefix_or_the_suffix_names_a_backup() -> None:
    s = _store()
    a2 = "20261101T120000Z-abcdef"
    s.put_bytes(LAY.artifact(a2, MANIFEST), _manifest(a2).to_json())
    assert catalog.resolve(s, LAY, "20261102").backup_id == B  # the date alone: one backup
    assert catalog.resolve(s, LAY, "20261101T0").backup_id == A
    assert catalog.resolve(s, LAY, "aaaaaa").backup_id == A  # the random suffix alone
    assert catalog.resolve(s, LAY, "-abcdef").backup_id == a2
    assert catalog.select_one(s, LAY, "bbbbbb", latest=False, kind=None).backup_id == B
    with pytest.raises(UsageError, match=f"names 2 backups: {A}, {a2}") as ambiguous:
        catalog.resolve(s, LAY, "20261101")
    assert ambiguous.value.exit_code == 2
    with pytest.raises(NotFoundError, match="no backup id starting with 20261103"):
        catalog.resolve(s, LAY, "20261103")
    with pytest.raises(NotFoundError, match="no backup id ending in cccccc"):
        catalog.resolve(s, LAY, "cccccc")
    for short in ("2026110", "aaaaa", "20261101X", "AAAAAA"):  # too short, or no id's start
        with pytest.raises(NotFoundError, match="is not a backup id: give a whole id"):
            catalog.resolve(s, LAY, short)


def _runs(bid: str, table: str, part: str, rows: int) -> Artifact:
    from prefect_dr.layout import runs_object
    from prefect_dr.manifest import runs_artifact

    return Artifact(runs_artifact(table, part), LAY.artifact(bid, runs_object(table, part)),
                    "pg-copy-text", 1, "x", 1, "y", "zstd", table=table, columns=("id",),
                    rows=rows, part=part)


def test_split_run_tables_round_trip_in_format_4_and_only_there() -> None:
    """Format 4 (issue 25): a split run table's live and done parts round-trip with their
    ``part``; the run tables are phase 2's but not the history's; a format-4 manifest without
    its parts, a part outside format 4, a lone part and a part whose name disagrees are each
    refused; older manifests keep their bytes (no ``part`` key)."""
    from prefect_dr.manifest import RUNS_FORMAT_VERSION, ManifestError, parse

    old = _manifest(A)
    assert '"part"' not in old.to_json().decode()
    split = dataclasses.replace(old, format_version=RUNS_FORMAT_VERSION, artifacts=(
        *old.artifacts, _runs(A, "flow_run", "live", 2), _runs(A, "flow_run", "done", 5)))
    back = parse(split.to_json())
    assert back == split and back.run_tables == {"flow_run"} and not back.history
    assert back.needs_backfill and back.backfill_tables == {"flow_run"}
    assert [a.rows for a in back.runs("live")] == [2] and [a.rows for a in back.runs("done")] == [5]
    assert not old.needs_backfill

    def refused(data: dict[str, object], why: str) -> None:
        with pytest.raises(ManifestError, match=why):
            parse(json.dumps(data).encode())

    good = json.loads(split.to_json())
    refused({**good, "format_version": 2}, "split run tables .* go together")
    refused({**good, "artifacts": good["artifacts"][:1]}, "split run tables .* go together")
    refused({**good, "artifacts": good["artifacts"][:2]}, "one live and one done part")
    renamed = json.loads(split.to_json())
    renamed["artifacts"][1]["name"] = "runs-done-flow_run"
    refused(renamed, "the part of a split run table is malformed")
    odd = json.loads(split.to_json())
    odd["artifacts"][2]["part"] = "later"
    refused(odd, "the part of a split run table is malformed")
