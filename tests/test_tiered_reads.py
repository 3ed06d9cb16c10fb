"""Regressions found by the chaos suite's tiered-restore scenarios (tests/chaos/test_tiered.py):
phase 1 must not download the history artifacts, and an S3 body cut short by a cleanly closed
connection is resumed like a reset one."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import botocore.exceptions as bce
import pytest

from prefect_dr import restore_stream
from prefect_dr.checks import Checks, Report
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.storage.base import ObjectInfo
from prefect_dr.storage.s3 import S3Storage, _RangeReader


def test_phase_1_reads_no_history_artifact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small artifacts are read before the swap; the history tables' data (gigabytes on a
    long-lived server) is streamed and checked as it loads, in phase 2 for --tiered: reading
    it here too downloaded it twice and held it whole in memory before Prefect could serve."""
    arts = (
        Artifact("dump", "b/db.dump", "pg_dump-custom", 1, "x", 1, "y", "zstd"),
        Artifact("block-key", "b/key", "fernet-key+json", 1, "x", 1, "y", "none"),
        Artifact("history-log", "b/history-log", "pg-copy-text", 1, "x", 1, "y", "zstd",
                 table="log", columns=("id",), rows=1),
    )
    manifest = Manifest("20261201T000000Z-aaaaaa", "full", "2026-12-01T00:00:00+00:00",
                        "2026-12-01T00:01:00+00:00", "0.1.0", None, "rev", "15", "15", "db",
                        {}, arts, {})
    read: list[str] = []

    def decrypt_small(storage: Any, artifact: Artifact, identities: Any) -> bytes:
        read.append(artifact.name)
        return b'{"fernet_key": "k"}'

    monkeypatch.setattr(restore_stream, "decrypt_small", decrypt_small)
    checks = Checks(Report(manifest.backup_id, "2026-12-01T00:00:00+00:00"))
    _, escrowed = restore_stream.read_small_artifacts(None, manifest, [], checks)  # type: ignore[arg-type]
    assert read == ["block-key"] and escrowed == "k"


class _Body:
    def __init__(self, data: bytes, cut: int | None) -> None:
        self._data, self._cut = io.BytesIO(data), cut

    def read(self, n: int) -> bytes:
        if self._cut is not None and self._data.tell() >= self._cut:
            raise bce.IncompleteReadError(actual_bytes=self._cut, expected_bytes=99)
        if self._cut is not None:
            n = min(n, self._cut - self._data.tell())
        return self._data.read(n)

    def close(self) -> None:
        pass


def test_a_body_cut_short_by_a_clean_close_is_resumed() -> None:
    data = bytes(range(256)) * 40
    ranges: list[str | None] = []

    class Client:
        def get_object(self, **kw: Any) -> dict[str, Any]:
            ranges.append(kw.get("Range"))
            start = int(kw["Range"][6:-1]) if "Range" in kw else 0
            return {"Body": _Body(data[start:], 3000 if len(ranges) == 1 else None)}

    s3 = S3Storage("b", client=Client(), retry_deadline_s=1)
    info = ObjectInfo("k", len(data), dt.datetime.now(dt.UTC))
    reader = io.BufferedReader(_RangeReader(s3, "k", info), buffer_size=1024)
    assert reader.read() == data
    assert ranges == [None, "bytes=3000-"]
