"""`doctor`: check every precondition of a backup and a restore, and report each one.

Each check has a status (ok, warn, fail, skip) and says whether it is required; the run is
healthy when no required check fails. Checks that depend on a failed one are skipped, so the
first failing part is named once, not drowned in consequences.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from prefect_dr import backfill_state, crypto, interrupt, prefect_api, signing
from prefect_dr import prefect_schema as ps
from prefect_dr.config import Settings
from prefect_dr.errors import DRError
from prefect_dr.layout import Layout
from prefect_dr.pg import connect as pgc
from prefect_dr.pg import swap as pgswap
from prefect_dr.pg import tools
from prefect_dr.storage.base import Storage

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
PROBE_RETRY_S = 3.0  # doctor reports an outage quickly instead of riding it out


@dataclass
class Check:
    """The outcome of one check."""

    name: str
    status: str
    detail: str
    required: bool = True


@dataclass
class Report:
    """All checks of one doctor run."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no required check failed."""
        return not any(c.status == FAIL and c.required for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The required checks that failed."""
        return [c for c in self.checks if c.status == FAIL and c.required]

    def add(self, name: str, status: str, detail: str, required: bool = True) -> Check:
        """Record one check and return it."""
        check = Check(name, status, detail, required)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def _guard(report: Report, name: str, fn: Callable[[], tuple[str, str]],
           required: bool = True) -> bool:
    """Run one check; a DRError becomes a FAIL with its one-line message. True when not FAIL."""
    try:
        status, detail = fn()
    except DRError as exc:
        interrupt.raise_if_noted()
        status, detail = FAIL, exc.message
    report.add(name, status, detail, required)
    return status != FAIL


def check_database(report: Report, settings: Settings, env: Mapping[str, str]) -> None:
    """Database reachability, versions, client tools, permissions, schema and block key."""
    if not settings.database_url:
        report.add("database", FAIL, "PREFECT_DR_DATABASE_URL is not set")
        return
    try:
        conn = pgc.connect(settings.database_url)
    except DRError as exc:
        interrupt.raise_if_noted()
        report.add("database", FAIL, exc.message)
        for name in ("pg_dump", "pg_restore", "read permissions", "prefect schema",
                     "block encryption key"):
            report.add(name, SKIP, "database unreachable")
        return
    with conn:
        major, full = pgc.server_version(conn)
        report.add("database", OK, f"connected to {pgc.describe(settings.database_url)}, "
                                   f"PostgreSQL {full}")

        check_clients(report, settings, major, full)

        def permissions() -> tuple[str, str]:
            bad = pgc.unreadable_relations(conn)
            if bad:
                more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
                return FAIL, f"role cannot read {', '.join(bad[:5])}{more}; grant SELECT"
            return OK, "the role can read every table and sequence"

        _guard(report, "read permissions", permissions)

        revision = pgc.alembic_revision(conn)
        if revision is None:
            report.add("prefect schema", FAIL,
                       "no alembic_version table: this is not a Prefect database")
            report.add("block encryption key", SKIP, "not a Prefect database")
            return
        report.add("prefect schema", OK, f"alembic revision {revision}")
        _check_block_key(report, conn, env, bool(settings.allow_undecryptable_blocks))
        states = backfill_state.state_of(conn)
        report.add("history backfill", WARN if states else OK,
                   f"{backfill_state.describe(states)}: 'prefect-dr restore --resume' finishes it "
                   "(backups taken until then lack that history)" if states else
                   "no unfinished history backfill", required=False)
        left = pgswap.half_restored(conn)
        report.add("half-restored databases", WARN if left else OK,
                   f"{', '.join(left)} left by a restore that died: the next restore or "
                   "rollback on this server drops it" if left
                   else "none left by an interrupted restore", required=False)


def check_clients(report: Report, settings: Settings, major: int, full: str) -> None:
    """Every PostgreSQL client found, and the one backup (pg_dump) and restore/verify
    (pg_restore, of this server's own backups) will use with this server."""
    found = tools.inventory(settings.pg_bin_dir)
    listing = "; ".join(f"{program}: " + (", ".join(
        f"{c.text.split(' ')[0]} ({c.folder})" for c in clients) or "none")
        for program, clients in found.items())
    report.add("pg clients", OK, f"found {listing}", required=False)
    dump_major: list[int] = []

    def pg_dump() -> tuple[str, str]:
        client = tools.pick_dump(settings.pg_bin_dir, major, full)
        dump_major.append(client.major)
        return OK, f"backup uses {client.describe()}"

    _guard(report, "pg_dump", pg_dump)

    def pg_restore() -> tuple[str, str]:
        choice = tools.pick_restore(settings.pg_bin_dir,
                                    archive_major=dump_major[0] if dump_major else major,
                                    server_major=major, server_text=full)
        return OK, f"restore and verify into this server use {choice.describe()}"

    _guard(report, "pg_restore", pg_restore)


def _check_block_key(report: Report, conn: psycopg.Connection, env: Mapping[str, str],
                     allow_undecryptable: bool) -> None:
    """Whether the next backup can decrypt every block document (the check backup makes): a
    required check, so doctor fails when the next backup is bound to fail."""
    try:
        verdict = ps.judge_block_key(conn, env)
    except DRError as exc:
        interrupt.raise_if_noted()
        report.add("block encryption key", FAIL, exc.message)
        return
    problem = verdict.problem()
    if problem:
        if allow_undecryptable:
            report.add("block encryption key", WARN, problem.split("; give")[0] + " (allowed "
                       "by PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS: backups keep them undecryptable)",
                       required=False)
        else:
            report.add("block encryption key", FAIL,
                       f"the next backup would fail: {problem}")
        return
    key = verdict.key
    if key is None:
        report.add("block encryption key", OK, "no block documents and no key yet",
                   required=False)
    elif key.in_database:
        report.add("block encryption key", OK,
                   f"in the database (configuration ENCRYPTION_KEY); {verdict.blocks} block "
                   "documents decrypt", required=False)
    else:
        report.add("block encryption key", WARN,
                   f"given in this environment ({key.source}); {verdict.blocks} block "
                   "documents decrypt; a database dump alone cannot decrypt them, so backups "
                   "escrow the key", required=False)


def check_storage(report: Report, settings: Settings, storage: Storage | None,
                  token: str) -> None:
    """Repository reachable, write/read/delete probe, and what protects it (versioning,
    Object Lock, immutability: whatever the backend reports)."""
    if storage is None:
        if not settings.repository and not settings.s3_bucket:
            report.add("repository", FAIL,
                       "no repository: set PREFECT_DR_REPOSITORY or PREFECT_DR_S3_BUCKET")
            return
        from prefect_dr.storage import factory

        storage = factory.from_settings(settings, retry_deadline_s=PROBE_RETRY_S)

    def reachable() -> tuple[str, str]:
        storage.check_access()
        return OK, f"{storage.description} is reachable"

    if not _guard(report, "repository", reachable):
        report.add("repository probe", SKIP, "repository unreachable")
        return

    def probe() -> tuple[str, str]:
        key = Layout(settings.layout_prefix).probe(token)
        payload = f"prefect-dr doctor probe {token}".encode()
        storage.put_bytes(key, payload)
        try:
            if storage.get_bytes(key) != payload:
                return FAIL, f"read back different bytes from {key}"
        finally:
            storage.delete(key)
        if storage.stat(key) is not None:
            return FAIL, f"{key} still exists after delete"
        return OK, f"wrote, read and deleted {key}"

    _guard(report, "repository probe", probe)
    try:
        facts = storage.facts()
    except DRError as exc:
        interrupt.raise_if_noted()
        report.add("repository protection", WARN, exc.message, required=False)
        return
    for name, value in facts:
        report.add(name, OK, value, required=False)


def check_keys(report: Report, settings: Settings) -> None:
    """Recipients parse; the identity (if configured) matches one of them."""
    try:
        recipients = settings.recipients
    except OSError as exc:
        report.add("age recipients", FAIL, f"cannot read recipients file: {exc.strerror}")
        return
    if not recipients:
        report.add("age recipients", FAIL,
                   "none configured: set PREFECT_DR_AGE_RECIPIENTS (see 'prefect-dr keygen')")
    else:
        for text in recipients:
            crypto.parse_recipient(text)  # already validated by config; raises if not
        report.add("age recipients", OK, f"{len(recipients)} recipient(s): "
                   + ", ".join(crypto.fingerprint(r) for r in recipients))
    if not settings.age_identity_file:
        report.add("age identity", SKIP, "not configured (needed only by verify and restore)",
                   required=False)
        return

    def identity() -> tuple[str, str]:
        identities = crypto.load_identities(Path(settings.age_identity_file))
        if recipients and not crypto.matching_recipients(identities, recipients):
            return FAIL, ("the identity matches none of the recipients: backups taken with "
                          "these recipients could not be decrypted with it")
        return OK, f"{settings.age_identity_file} matches a recipient"

    _guard(report, "age identity", identity)


def check_signing(report: Report, settings: Settings) -> None:
    """The writer has a signing key (unless signing.required = false); a reader (one with an
    age identity) has verify keys; both together agree (the signer's key is trusted)."""
    required = settings.signing_required is not False
    signer = None
    if settings.signing_key_file:
        def load() -> tuple[str, str]:
            nonlocal signer
            signer = signing.load_private(Path(settings.signing_key_file))
            public = signing.public_text(signer.public_key())
            return OK, f"{settings.signing_key_file} (key {signing.key_id(public)})"

        _guard(report, "signing key", load)
    elif required:
        report.add("signing key", FAIL, "PREFECT_DR_SIGNING_KEY_FILE is not set: backup and "
                   "copy refuse to write (make one with 'prefect-dr keygen', or set "
                   "signing.required = false)")
    else:
        report.add("signing key", WARN, "signing.required = false: backups are written "
                   "unsigned and readers refuse them without --allow-unsigned", required=False)
    try:
        keys = signing.Keyring.parse(settings.verify_key)
    except DRError as exc:
        interrupt.raise_if_noted()
        report.add("verify key", FAIL, exc.message)
        return
    if not keys:
        reader = bool(settings.age_identity_file)
        report.add("verify key", FAIL if reader else SKIP,
                   "PREFECT_DR_VERIFY_KEY is not set: verify and restore refuse every backup "
                   "without --allow-unsigned (it is the public key 'prefect-dr keygen' "
                   "printed)" if reader else "not configured (needed by verify and restore)",
                   required=reader)
        return
    if signer is not None and keys.find(
            {"key_id": signing.key_id(signing.public_text(signer.public_key()))}) is None:
        report.add("verify key", FAIL, "the signing key's public key is not among "
                   "PREFECT_DR_VERIFY_KEY: readers configured alike refuse what it signs")
        return
    report.add("verify key", OK, f"{len(keys.keys)} key(s): " + ", ".join(keys.keys))


def check_prefect_api(report: Report, settings: Settings) -> None:
    """The Prefect API answers (optional: exports fall back to the database)."""
    if not settings.prefect_api_url:
        report.add("prefect api", SKIP, "PREFECT_API_URL not set (exports read the database)",
                   required=False)
        return
    _guard(report, "prefect api",
           lambda: (OK, f"Prefect {prefect_api.server_version(settings.prefect_api_url)}"),
           required=False)


def run(settings: Settings, *, env: Mapping[str, str] | None = None,
        storage: Storage | None = None) -> Report:
    """Run every check and return the report; raises only ConfigError for unusable settings."""
    env = os.environ if env is None else env
    report = Report()
    check_database(report, settings, env)
    check_storage(report, settings, storage, secrets.token_hex(6))
    check_keys(report, settings)
    check_signing(report, settings)
    check_prefect_api(report, settings)
    return report
