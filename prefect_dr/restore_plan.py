"""The restore plan: what a restore will do, and every precondition checked before any work.

`restore --dry-run` prints exactly this plan and exits with the code the real run would refuse
with (connected clients excepted: the runbook stops Prefect after looking at the plan, so a dry
run warns of them), so a CI dry-run proves what a restore at 3 a.m. would meet. The preflight
findings are cheap checks made *before* anything is created, downloaded or uploaded:

- ``signature``: the manifest is signed by a trusted key and bound to this backup and
  repository (exit 13; :mod:`prefect_dr.trust`), checked first: no other finding may trust a
  tampered manifest (a kind edited to config-only, say); ``--allow-unsigned`` accepts an
  unsigned one with a warning;
- ``schema``: the target's Prefect can run the backup's revision (exit 14), decided by
  :mod:`prefect_dr.schema_gate` from ``--target-prefect-version``, the version PREFECT_API_URL
  reports (when the target is the configured database) or the target database's revision;
- ``history``: a config-only backup restored over a database holding run history would delete
  it; refused (exit 2) unless ``--allow-history-loss``;
- ``identity``: the age identity decrypts for one of the backup's recipients (exit 12);
- ``clients``: nobody is connected to the live database, unless ``--force-disconnect`` (exit 1;
  a dry run, made while Prefect still runs, warns instead);
- ``createdb``: the role may create the database restored beside the live one (exit 1);
- ``role``: the archive's SQL runs as the restored database's owner (``pg_restore --role``),
  the live database's owner or ``--owner``, never as a superuser (exit 2): a forged or
  damaged archive cannot act outside that database (no ``COPY ... TO PROGRAM``);
- ``contents``: the dump's table of contents (:mod:`prefect_dr.archive_toc`) holds nothing a
  Prefect database would not; executable foreign objects (functions, triggers, rules, ...)
  are refused (exit 13) unless ``--allow-foreign-objects``, other foreign ones listed;
- ``pg_restore`` / ``pg_dump``: versions first: the target server is not older than the
  backup's, a pg_restore reads the archive and suits the server (a 17+ one into PostgreSQL
  14-16 runs through psql without its ``SET transaction_timeout``), and a pg_dump can take the
  safety backup of the live server (exit 16, a set-up error naming what to install);
- ``safety backup``: the safety backup is a backup like any other, signed: without a signing
  key (and ``signing.required`` on) the restore is refused (exit 2) unless
  ``--no-safety-backup``;
- ``staging``: with ``--jobs`` above 1, room to stage the decrypted dump (a warning: the restore
  then streams with one job);
- ``backfill``: the target holds no unfinished history backfill of an earlier tiered restore
  (exit 2: ``restore --resume`` finishes it, ``rollback`` undoes that restore);
- ``tiered``: with ``--tiered``, a format-1 full backup (history inside its one dump) is
  restored in one phase (a warning).

The safety backup of the live database is taken *after* the swap, from the database kept
aside (nobody uses it), so no restore waits for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from prefect_dr import (
    backfill_state,
    interrupt,
    prefect_api,
    prefect_runtime,
    reconcile,
    schema_gate,
)
from prefect_dr import prefect_schema as ps
from prefect_dr.config import Settings
from prefect_dr.errors import (
    FAILURE,
    SCHEMA_REFUSED,
    USAGE,
    DRError,
)
from prefect_dr.kinds import holds_history, loses_history
from prefect_dr.manifest import ARTIFACT_DUMP, Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import privileges, tools
from prefect_dr.pg import swap as pgswap
from prefect_dr.pg.scratch import with_database
from prefect_dr.pg.tools import Client, RestoreChoice
from prefect_dr.restore_findings import (
    Finding,
    clients_finding,
    contents_finding,
    dump_client_finding,
    history_finding,
    identity_finding,
    restore_client_finding,
    role_finding,
    signature_finding,
    standing_finding,
)
from prefect_dr.storage.base import Storage
from prefect_dr.trust import Trust

log = logging.getLogger(__name__)
STAMP_FORMAT = "%Y%m%d%H%M%S"
MAX_IDENTIFIER = 63
#: Staging needs the dump's plaintext size plus this share and this headroom (docs: README,
#: "Restore and rollback"): the file system must not be filled to the last byte.
STAGING_MARGIN = 0.10
STAGING_HEADROOM = 64 * 1024 * 1024


@dataclass
class Plan:
    """Everything a restore will do, computed without changing anything."""

    backup_id: str
    kind: str
    prefect_version: str | None
    backup_revision: str | None
    target: str  # host:port/db, no credentials
    target_db: str
    target_exists: bool
    target_revision: str | None
    target_prefect_version: str | None
    target_prefect_source: str
    schema_ok: bool
    schema_reason: str
    config_diff: list[dict[str, Any]] = field(default_factory=list)
    history_diff: list[dict[str, Any]] = field(default_factory=list)
    history_loss: dict[str, int] = field(default_factory=dict)  # table -> rows it would lose
    restore_db: str = ""
    aside_db: str | None = None
    creates: list[str] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)
    disk_needed: int | None = None
    safety_backup: bool = True
    staging: str = ""
    server_version: str = ""
    restore_client: RestoreChoice | None = None
    dump_client: Client | None = None
    preflight: list[Finding] = field(default_factory=list)
    #: restore --tiered: the tables whose rows are loaded after the swap (phase 2)
    tiered: bool = False
    deferred: list[str] = field(default_factory=list)
    #: an unfinished history backfill found in the target (backfill_state.describe), else ""
    unfinished_backfill: str = ""
    #: the role that owns the restored database and runs the archive's SQL
    restore_role: str = ""
    #: entries of the dump's table of contents a Prefect database does not contain
    foreign_objects: list[str] = field(default_factory=list)
    #: what the restore reconciles in the restored database before the swap (reconcile)
    reconcile_policy: reconcile.Policy = field(default_factory=reconcile.Policy)
    #: the runtime state the backup recorded in its snapshot (None: a manifest before issue
    #: 21, counted in the restored database instead), and what will be done with it
    runtime: dict[str, int] | None = None
    reconcile_notes: list[str] = field(default_factory=list)
    #: Prefect's runtime state in Redis (prefect_runtime.notes), and what --flush-redis deletes
    redis_notes: list[str] = field(default_factory=list)
    redis_used: bool = False
    flush_redis: str | None = None
    flush_families: list[prefect_runtime.KeyFamily] = field(default_factory=list)

    @property
    def refusal(self) -> Finding | None:
        """The first finding that refuses the restore, if any."""
        return next((f for f in self.preflight if f.blocking), None)

    @property
    def warnings(self) -> list[str]:
        """Findings that do not refuse the restore but must be seen."""
        return [f.detail for f in self.preflight if not f.ok and not f.blocking]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = dataclasses.asdict(self)
        refusal = self.refusal
        out["refused"] = ({"check": refusal.name, "reason": refusal.detail,
                           "exit_code": refusal.exit_code} if refusal else None)
        out["warnings"] = self.warnings
        return out


class RestoreRefusedError(DRError):
    """A preflight finding refuses the restore; the exit code is the finding's."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.detail, exit_code=finding.exit_code)
        self.finding = finding


def names(db: str, stamp: str) -> tuple[str, str]:
    """(database restored beside, name the live one is kept as). Raises DRError if too long."""
    restore_db, aside = f"{db}_restore_{stamp}", f"{db}_pre_restore_{stamp}"
    if len(aside) > MAX_IDENTIFIER:
        raise DRError(f"database name {db!r} is too long to keep a renamed copy beside it "
                      f"({MAX_IDENTIFIER} characters at most for {aside!r})")
    return restore_db, aside


def target_of(settings: Settings, target_url: str | None) -> tuple[str, str, str]:
    """(target URL, target database name, maintenance URL on the same server)."""
    url = target_url or settings.database_url
    if not url:
        settings.require("database_url")
    db = pgc.urlsplit_db(url)
    return url, db, with_database(url, "postgres")


def staging_need(manifest: Manifest) -> int | None:
    """Free bytes staging the dump needs: plaintext size + 10% + 64 MiB (None: no dump)."""
    dump_artifact = manifest.artifact(ARTIFACT_DUMP)
    if dump_artifact is None:
        return None
    return int(dump_artifact.plaintext_size * (1 + STAGING_MARGIN)) + STAGING_HEADROOM


def _tmpfs(folder: str) -> bool:
    """Whether ``folder`` lies on a tmpfs (its pages count against the memory cgroup)."""
    best, fstype = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    real = os.path.realpath(folder)
    for line in lines:
        fields = line.split(" - ")
        point = fields[0].split()[4] if len(fields[0].split()) > 4 else ""
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, fstype = point, fields[-1].split()[0] if len(fields) > 1 else ""
    return fstype == "tmpfs"


def _cgroup_memory_room() -> int | None:
    """Bytes the memory cgroup (v2) may still charge: memory.max - memory.current."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii").strip()
    except OSError:
        return None
    if limit == "max" or not (limit.isdigit() and used.isdigit()):
        return None
    return max(int(limit) - int(used), 0)


def _used(folder: str) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def staging_room(folder: str, limit: int | None = None) -> tuple[int, str]:
    """Bytes ``folder`` can really take, and what bounds it: the file system's free space
    (statvfs), for a tmpfs also the memory cgroup's room, and ``limit`` (a Kubernetes emptyDir's
    sizeLimit, which statvfs of a disk-backed emptyDir does not show) minus what the folder
    already holds. Raises OSError when the folder is not usable."""
    stats = os.statvfs(folder)
    room, why = stats.f_bavail * stats.f_frsize, "free"
    if _tmpfs(folder):
        memory = _cgroup_memory_room()
        if memory is not None and memory < room:
            room, why = memory, "left in the memory limit (tmpfs)"
    if limit is not None:
        left = max(limit - _used(folder), 0)
        if left < room:
            room, why = left, f"left of its {_mib(limit)} limit"
    return room, why


def staging_choice(manifest: Manifest, jobs: int, staging_dir: str,
                   limit: int | None = None) -> tuple[bool, str]:
    """Whether to stage the dump for a parallel restore, and why (or why not): only when the
    folder's real room (:func:`staging_room`) holds it."""
    need = staging_need(manifest)
    if jobs < 2 or need is None:
        return False, "streamed into pg_restore (one job)"
    try:
        free, why = staging_room(staging_dir, limit)
    except OSError:
        return False, (f"streaming with one job: staging folder {staging_dir} is not usable "
                       "(set PREFECT_DR_STAGING_DIR)")
    if free < need:
        return False, (f"streaming with one job: {staging_dir} has {_mib(free)} {why}, staging "
                       f"needs {_mib(need)} (set PREFECT_DR_STAGING_DIR to a larger folder)")
    return True, (f"staged in {staging_dir} ({_mib(need)} needed, {_mib(free)} {why}), "
                  f"{jobs} jobs")


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MiB"


def _counts(conn: psycopg.Connection, tables: list[str]) -> dict[str, tuple[int, bool]]:
    out: dict[str, tuple[int, bool]] = {}
    for table in tables:
        if not pgc.table_exists(conn, table):
            continue
        if table in ps.CONFIG_TABLES:
            out[table] = (pgc.count_rows(conn, table), True)
        else:
            row = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class "
                               "WHERE oid = %s::regclass", (f"public.{table}",)).fetchone()
            estimate = int(row[0]) if row else 0
            out[table] = ((pgc.count_rows(conn, table), True) if estimate < 100_000
                          else (estimate, False))
    return out


@dataclass(frozen=True)
class Options:
    """What the operator allowed or asked for."""

    target_url: str | None = None
    target_prefect_version: str | None = None
    allow_newer_schema: bool = False
    allow_history_loss: bool = False
    safety_backup: bool = True
    force_disconnect: bool = False
    jobs: int = 1
    staging_dir: str | None = None
    dry_run: bool = False
    tiered: bool = False
    #: who the manifest must be signed by (the reader's verify keys and repository)
    trust: Trust | None = None
    #: the role to own the restored database and run the archive (default: the live
    #: database's owner, else the connecting role)
    owner: str | None = None
    allow_foreign_objects: bool = False
    reconcile_policy: reconcile.Policy = field(default_factory=reconcile.Policy)
    #: --flush-redis: the Redis whose stale Prefect keys the restore deletes after the swap
    flush_redis: str | None = None


def make_plan(settings: Settings, manifest: Manifest, options: Options, *,
              now: dt.datetime | None = None, storage: Storage | None = None,
              env: Mapping[str, str] | None = None) -> Plan:
    """Compute the plan and run every preflight check (what --dry-run prints). Changes
    nothing; with ``storage`` the start of the dump is read for its table of contents;
    ``env`` is where Prefect's settings are read from (runtime state in Redis).
    Raises DatabaseError when the target's server is unreachable."""
    url, db, admin_url = target_of(settings, options.target_url)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime(STAMP_FORMAT)
    restore_db, aside = names(db, stamp)
    with pgc.connect(admin_url) as admin:
        target_exists = pgswap.exists(admin, db)
        clients = pgswap.sessions(admin, db) if target_exists else []
        may_create = _may_create(admin)
        role_check, run_as = role_finding(admin, db if target_exists else None,
                                             options.owner)
        server_major, server_version = pgc.server_version(admin)
        missing_roles = (privileges.missing_roles(admin, manifest.privileges)
                         if manifest.privileges else [])
    target_revision = None
    current: dict[str, tuple[int, bool]] = {}
    unfinished: list[backfill_state.TableState] = []
    if target_exists:
        with pgc.connect(url) as conn:
            target_revision = pgc.alembic_revision(conn)
            tables = set(manifest.row_counts) | set(ps.HISTORY_TABLES)
            current = _counts(conn, sorted(tables))
            unfinished = backfill_state.state_of(conn)
    target = _target_prefect(settings, options, url, target_revision)
    verdict = schema_gate.judge(manifest.alembic_revision, target)
    staged, how = staging_choice(manifest, options.jobs,
                                 options.staging_dir or _default_staging(),
                                 settings.staging_limit)
    plan = Plan(
        backup_id=manifest.backup_id, kind=manifest.kind,
        prefect_version=manifest.prefect_version, backup_revision=manifest.alembic_revision,
        target=pgc.describe(url), target_db=db, target_exists=target_exists,
        target_revision=target_revision,
        target_prefect_version=target.prefect_version,
        target_prefect_source=target.version_source or (
            "the target database's revision" if target_revision else "new database"),
        schema_ok=verdict.ok or options.allow_newer_schema,
        schema_reason=verdict.reason + (" (overridden by --allow-newer-schema)"
                                        if options.allow_newer_schema and not verdict.ok
                                        else ""),
        restore_db=restore_db, aside_db=aside if target_exists else None,
        creates=[restore_db],
        renames=([(db, aside), (restore_db, db)] if target_exists else [(restore_db, db)]),
        disk_needed=manifest.database_size,
        safety_backup=options.safety_backup and target_exists,
        staging=how, server_version=server_version,
        tiered=options.tiered and manifest.needs_backfill,
        deferred=sorted(manifest.backfill_tables) if options.tiered else [],
        unfinished_backfill=backfill_state.describe(unfinished) if unfinished else "",
        reconcile_policy=options.reconcile_policy, runtime=manifest.runtime,
        reconcile_notes=reconcile_notes(manifest, options.reconcile_policy),
    )
    for table, entry in sorted(manifest.row_counts.items()):
        now_rows, exact = current.get(table, (0, True))
        row = {"table": table, "backup": entry["rows"], "current": now_rows,
               "change": entry["rows"] - now_rows,
               "exact": bool(entry.get("exact")) and exact}
        (plan.config_diff if table in ps.CONFIG_TABLES else plan.history_diff).append(row)
    if loses_history(manifest.kind):
        plan.history_loss = {t: current[t][0] for t in ps.HISTORY_TABLES
                             if current.get(t, (0, True))[0] > 0}
    plan.preflight = [  # the signature first: nothing else may trust a tampered manifest
        signature_finding(options.trust, manifest),
        Finding("schema", plan.schema_ok,
                plan.schema_reason if plan.schema_ok else
                f"refusing to restore backup {plan.backup_id}: {plan.schema_reason}",
                SCHEMA_REFUSED),
        history_finding(plan, options.allow_history_loss),
        standing_finding(manifest),
        identity_finding(settings, manifest),
        clients_finding(db, clients, options.force_disconnect, options.dry_run),
        Finding("createdb", may_create,
                "the role may create databases" if may_create else
                f"the role of {plan.target} may not create databases: grant CREATEDB "
                "(restore creates the new database beside the live one)", FAILURE),
        role_check,
        restore_client_finding(settings, manifest, plan, server_major, server_version),
    ]
    plan.restore_role = run_as
    if storage is not None and not any(f.blocking for f in plan.preflight):
        plan.preflight.append(contents_finding(settings, storage, manifest, plan,
                                                options.allow_foreign_objects))
    if unfinished:
        plan.preflight.append(Finding(
            "backfill", False, f"{db} holds an {plan.unfinished_backfill}: finish it with "
            "'prefect-dr restore --resume', or undo that restore with 'prefect-dr rollback' "
            "first", USAGE))
    if options.tiered and not manifest.needs_backfill and holds_history(manifest.kind):
        plan.preflight.append(Finding(
            "tiered", False, f"backup {manifest.backup_id} (format "
            f"{manifest.format_version}) holds its history inside its one dump: it is "
            "restored in one phase"))
    if missing_roles:
        plan.preflight.append(Finding(
            "privileges", False, f"backup {manifest.backup_id} grants to roles this server "
            f"lacks: {', '.join(missing_roles)}; those grants are not restored (create the "
            "roles first to keep them)"))
    plan.preflight.append(_redis_finding(plan, options, env or {}))
    note = tools.downgrade_note(manifest.postgres_version, server_major, server_version)
    if note:
        plan.preflight.append(Finding("postgres", False, note))
    if plan.safety_backup:
        plan.preflight.append(dump_client_finding(settings, plan, server_major,
                                                   server_version))
        if not settings.signing_key_file and settings.signing_required is not False:
            plan.preflight.append(Finding(
                "safety backup", False, "the safety backup of the live database is signed: "
                "set PREFECT_DR_SIGNING_KEY_FILE, or pass --no-safety-backup", USAGE))
    fallback = options.jobs >= 2 and not staged
    plan.preflight.append(Finding("staging", not fallback, how))
    return plan


def reconcile_notes(manifest: Manifest, policy: reconcile.Policy) -> list[str]:
    """What the restore will reconcile, with the counts the backup recorded in its snapshot
    (a manifest without them: counted in the restored database, printed after the restore)."""
    counts = (reconcile.Counts.from_dict(manifest.runtime) if manifest.runtime is not None
              else None)
    return reconcile.describe(counts, policy, planned=True)


def _redis_finding(plan: Plan, options: Options, env: Mapping[str, str]) -> Finding:
    """Where Prefect keeps runtime state outside the database, and whether the restore deletes
    its stale keys (a warning when Redis holds some and --flush-redis is not given)."""
    try:
        runtime = prefect_runtime.read(env)
    except DRError as exc:
        interrupt.raise_if_noted()
        return Finding("redis", False, f"{exc.message}: check by hand whether Prefect keeps "
                                       "leases, messaging or its docket in Redis")
    used = runtime.in_redis()
    plan.redis_used = bool(used)
    plan.redis_notes = prefect_runtime.notes(runtime, options.flush_redis)
    if options.flush_redis:
        plan.flush_redis = options.flush_redis  # checked: no password in it
        plan.flush_families = used or prefect_runtime.all_families(runtime.docket_name)
        return Finding("redis", True, plan.redis_notes[0])
    return Finding("redis", not used, plan.redis_notes[0])


def _target_prefect(settings: Settings, options: Options, url: str,
                    revision: str | None) -> schema_gate.Target:
    """What is known of the target's Prefect: the version the operator gave, else the one
    PREFECT_API_URL reports when the target is the configured database, else its revision."""
    if options.target_prefect_version:
        return schema_gate.Target(options.target_prefect_version, "--target-prefect-version",
                                  revision)
    same_db = settings.database_url and pgc.describe(url) == pgc.describe(settings.database_url)
    if settings.prefect_api_url and same_db:
        try:
            version = prefect_api.server_version(settings.prefect_api_url)
        except DRError as exc:
            interrupt.raise_if_noted()
            log.info("the target's Prefect did not answer at PREFECT_API_URL (%s); the schema "
                     "gate reads the database's revision", exc.message)
        else:
            return schema_gate.Target(version, "PREFECT_API_URL", revision)
    return schema_gate.Target(None, "", revision)


def _default_staging() -> str:
    import tempfile

    return tempfile.gettempdir()


def _may_create(admin: psycopg.Connection) -> bool:
    row = admin.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles "
                        "WHERE rolname = current_user").fetchone()
    return bool(row and row[0])
