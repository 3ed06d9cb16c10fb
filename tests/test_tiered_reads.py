"""Regressions found by the chaos suite's tiered-restore scenarios (tests/chaos/test_tiered.py):
phase 1 must not download the history artifacts."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_dr import restore_stream
from prefect_dr.checks import Checks, Report
from prefect_dr.manifest import Artifact, Manifest


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
