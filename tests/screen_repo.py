"""A file:// repository with fixed backups (ids, times, labels, sizes), so that the CLI's screens
can be compared with committed captures (tests/golden/screens)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect_dr import config
from prefect_dr.layout import DUMP, MANIFEST, Layout
from prefect_dr.manifest import Artifact, Manifest
from prefect_dr.storage.file import FileStorage

BACKUPS = (
    ("20251101T020000Z-a1b2c3", "full",
     {"trigger": "nightly-schedule", "team": "data-platform", "ticket": "OPS-12345"}),
    ("20251102T020000Z-d4e5f6", "config-only", {}),
    ("20251102T140000Z-0a9b8c", "full", {"trigger": "pre-upgrade"}),
)


def make(root: Path) -> dict[str, str]:
    """Write the backups under ``root``; return the environment that points the CLI at it."""
    root.mkdir(parents=True, exist_ok=True)
    env = {"PREFECT_DR_REPOSITORY": f"file://{root}"}
    layout = Layout(config.load(env=env).layout_prefix)
    store = FileStorage(root)
    for bid, kind, labels in BACKUPS:
        day = f"{bid[:4]}-{bid[4:6]}-{bid[6:8]}T{bid[9:11]}:00:00+00:00"
        art = Artifact("dump", layout.artifact(bid, DUMP), "pg_dump-custom", 1234, "a" * 64,
                       2_345_678, "b" * 64, "zstd")
        manifest = Manifest(bid, kind, day, day.replace(":00:00+", ":01:05+"), "0.1.0", "3.6.4",
                            "3c841a1800a1", "15.10", "15.10", "prefect", {}, (art,), {}, labels)
        store.put_bytes(layout.artifact(bid, DUMP), b"x" * 1234)
        store.put_bytes(layout.artifact(bid, MANIFEST), manifest.to_json())
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_DR_", "AWS_", "PG", "PREFECT_", "COLUMNS", "LINES"))
            } | env
