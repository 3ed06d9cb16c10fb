"""Pins: objects in the repository saying that an operation in progress still needs a backup.

A tiered restore pins the backup it restores from before it creates anything, and unpins it
once the history backfill is complete (or when it fails before the swap): while the pin stands,
``restore --resume`` needs that backup, and ``prune`` keeps it whatever the retention policy
says, naming the pin (docs/reliability.md, invariant I1). A pin lives beside the backups, under
``<prefix>/v1/pins/<backup id>/<name>.json``, so that prune sees it wherever it runs, with no
database access. A pin outlives a killed run on purpose: keeping a backup too long is safe,
deleting it too early is not. The finished backfill
(``restore --resume``) or a restore of another backup into the same database removes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket

from prefect_dr import interrupt
from prefect_dr import log as runlog
from prefect_dr.errors import DRError, NotFoundError
from prefect_dr.layout import Layout
from prefect_dr.pg import connect as pgc
from prefect_dr.storage.base import Storage

log = logging.getLogger(__name__)


def backfill_name(url: str) -> str:
    """The pin name of the history backfill into the database at ``url``."""
    where = pgc.describe(url).split(" as ", 1)[0]
    return "backfill-" + hashlib.sha256(where.encode()).hexdigest()[:16]


def add(storage: Storage, layout: Layout, backup_id: str, name: str, reason: str) -> None:
    """Pin ``backup_id`` for ``reason`` (replacing a pin of the same name). Raises
    StorageError."""
    record = {"backup_id": backup_id, "reason": reason, "host": socket.gethostname(),
              "pid": os.getpid(), "run_id": runlog.RUN_ID,
              "created_at": dt.datetime.now(dt.UTC).isoformat()}
    storage.put_bytes(layout.pin(backup_id, name), (json.dumps(record) + "\n").encode(),
                      "application/json")


def remove(storage: Storage, layout: Layout, name: str, *, except_for: str | None = None
           ) -> list[str]:
    """Remove every pin called ``name`` (but the one of ``except_for``); returns the backup
    ids unpinned. A failure is a warning: a pin left behind only keeps a backup longer."""
    gone = []
    try:
        for backup_id, pin_name in _pins(storage, layout):
            if pin_name == name and backup_id != except_for:
                storage.delete(layout.pin(backup_id, name))
                gone.append(backup_id)
    except DRError as exc:
        interrupt.raise_if_noted()
        log.warning("could not remove the pin %s: %s (prune keeps the backup it names until "
                    "it is removed)", name, exc.message)
    return gone


def needed(storage: Storage, layout: Layout) -> dict[str, str]:
    """{backup id: why it is needed} for every pinned backup. Raises StorageError."""
    out: dict[str, str] = {}
    for backup_id, name in _pins(storage, layout):
        try:
            record = json.loads(storage.get_bytes(layout.pin(backup_id, name)))
            reason = str(record.get("reason") or name)
        except (NotFoundError, ValueError, AttributeError):
            reason = name  # unreadable: still a pin
        out[backup_id] = "; ".join(filter(None, (out.get(backup_id), reason)))
    return out


def _pins(storage: Storage, layout: Layout) -> list[tuple[str, str]]:
    return [parsed for info in storage.list(layout.pins_root)
            if (parsed := layout.parse_pin_key(info.key)) is not None]
