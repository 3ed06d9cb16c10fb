"""The restore's space check reads the room the staging folder really has: statvfs, and a
limit the file system does not show (an emptyDir's sizeLimit) minus what the folder holds."""

from __future__ import annotations

import os
from pathlib import Path

from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.restore_plan import staging_choice, staging_need, staging_room

MIB = 1024 * 1024


def _manifest(plaintext: int) -> Manifest:
    art = Artifact("dump", "k", "pg_dump-custom", 1, "x", plaintext, "y", "zstd")
    return Manifest("20261201T000000Z-aaaaaa", "full", "2026-12-01T00:00:00+00:00",
                    "2026-12-01T00:01:00+00:00", "0.1.0", None, "rev", "15", "15", "db", {},
                    (art,), {}, {})


def test_room_is_statvfs_free_without_a_limit(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    room, why = staging_room(str(tmp_path))
    assert why in ("free", "left in the memory limit (tmpfs)")
    assert room <= stats.f_bavail * stats.f_frsize


def test_a_limit_minus_what_the_folder_holds_bounds_the_room(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(os.urandom(3 * MIB))
    room, why = staging_room(str(tmp_path), 10 * MIB)
    assert 6 * MIB < room <= 7 * MIB and "limit" in why


def test_a_dump_larger_than_the_limit_is_streamed_not_staged(tmp_path: Path) -> None:
    manifest = _manifest(200 * MIB)
    need = staging_need(manifest)
    assert need is not None
    staged, how = staging_choice(manifest, 4, str(tmp_path), limit=need - 1)
    assert not staged and how.startswith("streaming with one job:") and "limit" in how
    staged, how = staging_choice(manifest, 4, str(tmp_path), limit=need + MIB)
    assert staged == (staging_room(str(tmp_path))[0] >= need), how
    assert staging_choice(manifest, 1, str(tmp_path), limit=1)[0] is False
