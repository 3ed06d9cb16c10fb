"""`rehearse-upgrade`: run a Prefect upgrade's migrations on a restored copy of a backup first.

Prefect migrates its database when a newer server starts; on large databases (millions of
events) that can take 30 minutes or more and fail with timeouts (Prefect issues 17844, 18263).
A rehearsal restores the backup, history included, into a scratch database, runs
``prefect server database upgrade -y`` of the Prefect installed at the interpreter given, and
reports each migration's time (Prefect commits one transaction per migration; the rehearsal
watches the ``alembic_version`` row), the total, the database size before and after, and
whether it succeeded. The scratch database is always dropped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from prefect_dr import backfill, crypto, pipeline, restore_stream, schema_gate, smoke
from prefect_dr.checks import Checks, Report
from prefect_dr.config import Settings
from prefect_dr.errors import DRError, VerificationError
from prefect_dr.manifest import ARTIFACT_DUMP, Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg.scratch import ScratchDatabase
from prefect_dr.storage.base import Storage

POLL_S = 0.05
#: How the per-migration times are found: one upgrade run, ``alembic_version`` polled every
#: POLL_S; migrations that finish between two looks share the interval, and the first
#: carries Prefect's start-up. Estimates, not one-revision-at-a-time measurements.
STEP_TIMES = ("estimated: one upgrade run with the revision polled every 50 ms; migrations "
              "finished between two looks share the interval and the first includes Prefect's "
              "start-up (the total is measured)")
#: Prefect's docs advise a long database timeout for upgrades of large databases.
DEFAULT_DATABASE_TIMEOUT_S = 600
TAIL_LINES = 20


@dataclass
class Step:
    """One migration (or several finished between two looks, each listed)."""

    revision: str
    seconds: float
    first_release: str | None = None


@dataclass
class Rehearsal:
    """What one rehearsal found."""

    backup_id: str
    prefect_version: str
    prefect_python: str
    scratch_database: str = ""
    from_revision: str | None = None
    to_revision: str | None = None
    steps: list[Step] = field(default_factory=list)
    restore_seconds: float = 0.0
    #: rows of each history table loaded before the upgrade (format 2 backups)
    history_rows: dict[str, int] = field(default_factory=dict)
    total_seconds: float = 0.0
    size_before: int | None = None
    size_after: int | None = None
    ok: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``step_times`` says how the per-migration times were found."""
        return {**asdict(self), "step_times": STEP_TIMES}


class _Watcher:
    """Polls ``alembic_version`` in a thread and records when each revision appeared."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with contextlib.suppress(DRError, psycopg.Error), pgc.connect(self.url) as conn:
            conn.execute("SET lock_timeout = '200ms'")
            while not self._stop.is_set():
                try:
                    revision = pgc.alembic_revision(conn)
                except psycopg.Error:  # a busy catalog: look again
                    conn.rollback()
                    revision = self.seen[-1][1] if self.seen else None
                if not self.seen or self.seen[-1][1] != revision:
                    self.seen.append((time.monotonic(), revision))
                self._stop.wait(POLL_S)


def _chain(table: schema_gate.Table, start: str | None, end: str | None) -> list[str]:
    """Revisions from ``start`` (excluded) to ``end`` (included), oldest first, when the table
    knows them; else just ``[end]``."""
    if end is None:
        return []
    out, rev = [], end
    while rev and rev != start and table.known(rev):
        out.append(rev)
        parents = table.revisions[rev].get("parents", [])
        rev = parents[0] if parents else None
    if rev != start:
        return [end]
    return list(reversed(out))


def steps_from(seen: list[tuple[float, str | None]], started: float, ended: float,
               table: schema_gate.Table) -> list[Step]:
    """Per-migration times from the watched revisions: a revision's time runs from the previous
    change to its own; several revisions appearing together share that time evenly."""
    steps: list[Step] = []
    previous_t, previous_rev = started, seen[0][1] if seen else None
    for t, revision in seen[1:]:
        chain = _chain(table, previous_rev, revision) or ([revision] if revision else [])
        share = (t - previous_t) / max(len(chain), 1)
        steps += [Step(r, round(share, 3), table.first_release(r)) for r in chain]
        previous_t, previous_rev = t, revision
    return steps


def upgrade_env(database_url: str, timeout_s: int) -> dict[str, str]:
    """The environment for Prefect's upgrade: its database, its own PREFECT_HOME, no telemetry,
    none of this shell's PREFECT_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_API_DATABASE_CONNECTION_URL": smoke.asyncpg_url(database_url),
        "PREFECT_API_DATABASE_TIMEOUT": str(timeout_s),
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def rehearse(settings: Settings, storage: Storage, manifest: Manifest, *, prefect_python: str,
             scratch_url: str | None = None, timeout_s: int = DEFAULT_DATABASE_TIMEOUT_S,
             progress: pipeline.Progress | None = None,
             env: Mapping[str, str] | None = None) -> Rehearsal:
    """Restore ``manifest`` (its dump, then its history tables' rows, so the migrations meet
    the real tables) into a scratch database, run the upgrade of the Prefect at
    ``prefect_python`` and report. Raises SetupError (no Prefect there, no suitable client;
    before any work), DatabaseError, StorageError, CryptoKeyError, VerificationError (the
    backup cannot be restored). A failed upgrade is a report with ``ok`` false."""
    settings.require("age_identity_file")
    admin_url = scratch_url or settings.database_url
    if not admin_url:
        settings.require("database_url")
    version = smoke.prefect_version(prefect_python)  # SetupError
    choice = restore_stream.choose_for(settings, manifest, admin_url)  # SetupError
    program = smoke.prefect_program(prefect_python)
    identities = crypto.load_identities(Path(settings.age_identity_file))
    dump = manifest.artifact(ARTIFACT_DUMP)
    if dump is None:
        raise VerificationError(f"backup {manifest.backup_id} has no dump artifact")
    result = Rehearsal(manifest.backup_id, version, prefect_python)
    report = Report(manifest.backup_id, dt.datetime.now(dt.UTC).isoformat())
    with ScratchDatabase(admin_url) as scratch:
        result.scratch_database = scratch.name
        start = time.monotonic()
        checks = Checks(report)
        restore_stream.restore_dump(storage, dump, identities, scratch.url, choice, progress,
                                    checks)
        if manifest.needs_backfill:  # format 2: the migrations must meet the real history tables
            with scratch.connect() as conn:
                backfill.prepare(conn, manifest, None, storage=storage,
                                     identities=identities, progress=progress)
            loaded = backfill.run(scratch.url, storage, manifest, identities,
                                  progress=progress)
            result.history_rows = {item.table: item.rows for item in loaded}
        result.restore_seconds = round(time.monotonic() - start, 3)
        with scratch.connect() as conn:
            result.from_revision = pgc.alembic_revision(conn)
            result.size_before = _size(conn, scratch.name)
        _upgrade(program, scratch.url, timeout_s, result)
        with scratch.connect() as conn:
            result.to_revision = pgc.alembic_revision(conn)
            result.size_after = _size(conn, scratch.name)
    return result


def _upgrade(program: list[str], url: str, timeout_s: int, result: Rehearsal) -> None:
    table = schema_gate.table()
    with tempfile.TemporaryDirectory(prefix="prefect-dr-rehearse-") as home:
        child_env = dict(upgrade_env(url, timeout_s), PREFECT_HOME=home)
        log_path = Path(home) / "upgrade.log"
        started = time.monotonic()
        with _Watcher(url) as watcher, log_path.open("wb") as out:
            proc = subprocess.Popen([*program, "server", "database", "upgrade", "-y"],
                                    env=child_env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            time.sleep(POLL_S * 3)  # the last commit's look
        ended = time.monotonic()
        result.total_seconds = round(ended - started, 3)
        result.steps = steps_from(watcher.seen, started, ended, table)
        result.ok = rc == 0
        if rc != 0:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            telling = [ln for ln in lines[-TAIL_LINES:] if "error" in ln.lower()]
            result.error = (f"prefect server database upgrade failed (exit {rc}): "
                            + ((telling or lines or ["no output"])[-1][:300]))


def _size(conn: Any, name: str) -> int | None:
    row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
    return int(row[0]) if row else None

