"""What prefect-dr knows of Prefect's database: table groups, the block key, block decryption.

See docs/break-glass.md for the block key. Prefect encrypts ``block_document.data`` with a Fernet
key from ``PREFECT_SERVER_ENCRYPTION_KEY`` (else the ``configuration`` row ``ENCRYPTION_KEY``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet, InvalidToken

from prefect_dr import redact
from prefect_dr.errors import ConfigError

#: Small, precious tables: blocks, configuration, variables, pools, flows, deployments, ...
CONFIG_TABLES: tuple[str, ...] = (
    "alembic_version", "configuration", "block_type", "block_schema", "block_schema_reference",
    "block_document", "block_document_reference", "variable", "work_pool", "work_queue", "flow",
    "deployment", "deployment_schedule", "deployment_version", "concurrency_limit_v2",
    "concurrency_limit", "automation", "automation_related_resource", "saved_search",
)
#: Run history: what a config-only backup leaves out and a restore of one would delete.
HISTORY_TABLES: tuple[str, ...] = (
    "flow_run", "flow_run_state", "task_run", "task_run_state", "flow_run_input", "log",
    "artifact", "artifact_collection", "events", "event_resources",
)
#: The bulk of a long-lived server's history, dumped as separate artifacts (format 2) and
#: restored after Prefect serves again (``restore --tiered``). No foreign key points into or out
#: of them, so they load independently of every other table (docs/operations.md, "Tiered
#: restore"). Every one is also in HISTORY_TABLES.
DEFERRED_TABLES: tuple[str, ...] = ("events", "event_resources", "log")
#: The columns of the deferred tables Prefect's queries filter and sort on (its event feed and
#: related-resource lookups, the logs of a flow or task run): a backfilled table gets their
#: statistics before it is swapped in; the rest (large JSON payloads and messages, the costly
#: part of a full ANALYZE) is left to autovacuum, which a column-list ANALYZE does not stop
#: (it does not reset the table's count of changes since its last ANALYZE). Without them
#: Prefect picks slow plans: 1.6 s instead of 0.3 ms for a task run's logs (issue 25).
PLANNED_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("id", "occurred", "event", "resource_id"),
    "event_resources": ("resource_id", "resource_role", "occurred", "event_id"),
    "log": ("flow_run_id", "task_run_id", "timestamp", "level"),
}
KEY_ENV_VARS = ("PREFECT_SERVER_ENCRYPTION_KEY", "ORION_ENCRYPTION_KEY")
KEY_FILE_ENV = "PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE"


def user_tables(conn: psycopg.Connection) -> list[str]:
    """Every ordinary table of the public schema, sorted."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class BlockKey:
    """A Fernet key for block documents and where it came from."""

    key: str
    source: str  # "database" | "environment" | "file"

    @property
    def in_database(self) -> bool:
        """Whether a database dump alone carries this key."""
        return self.source == "database"


def configured_key(env: Mapping[str, str] | None = None) -> BlockKey | None:
    """The key given to prefect-dr (environment variable or key file), if any.

    Raises ConfigError when the key file cannot be read.
    """
    env = os.environ if env is None else env
    for name in KEY_ENV_VARS:
        if env.get(name):
            redact.register(env[name])
            return BlockKey(env[name].strip(), "environment")
    path = env.get(KEY_FILE_ENV)
    if path:
        try:
            key = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"{KEY_FILE_ENV}: cannot read {path}: {exc.strerror}"]) from None
        redact.register(key)
        return BlockKey(key, "file")
    return None


def database_key(conn: psycopg.Connection) -> BlockKey | None:
    """The key Prefect stored in its ``configuration`` table, if any."""
    row = conn.execute(
        "SELECT value FROM configuration WHERE key = 'ENCRYPTION_KEY'").fetchone()
    if not row:
        return None
    value = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    key = str(value.get("fernet_key", ""))
    if not key:
        return None
    redact.register(key)
    return BlockKey(key, "database")


def encrypted_blocks(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(id, name, Fernet token) of every block document."""
    rows = conn.execute(
        "SELECT id::text, name, data #>> '{}' FROM block_document ORDER BY name, id").fetchall()
    return [(str(r[0]), str(r[1]), str(r[2] or "")) for r in rows]


def decrypt_block(token: str, key: str) -> dict[str, Any]:
    """Decrypt one block document's data. Raises InvalidToken or ValueError."""
    return json.loads(Fernet(key.encode()).decrypt(token.encode()).decode())


def undecryptable(blocks: list[tuple[str, str, str]], key: str) -> list[str]:
    """Names of the blocks ``key`` cannot decrypt (all of them for a malformed key)."""
    try:
        fernet = Fernet(key.encode())
    except (ValueError, TypeError):
        return [name for _, name, _ in blocks]
    bad = []
    for _, name, token in blocks:
        try:
            fernet.decrypt(token.encode())
        except (InvalidToken, ValueError, TypeError):
            bad.append(name)
    return bad


@dataclass(frozen=True)
class KeyVerdict:
    """Which key decrypts the block documents, and which documents none decrypts."""

    key: BlockKey | None
    blocks: int
    undecryptable: tuple[str, ...]

    def problem(self) -> str | None:
        """One line saying why the next backup would fail (None when every block decrypts)."""
        if not self.undecryptable:
            return None
        if self.key is None:
            return (f"{self.blocks} block documents but no encryption key: the Prefect server "
                    "must use PREFECT_SERVER_ENCRYPTION_KEY; give prefect-dr the same key "
                    "(PREFECT_SERVER_ENCRYPTION_KEY or PREFECT_DR_PREFECT_ENCRYPTION_KEY_FILE) "
                    "or allow it (--allow-undecryptable-blocks, "
                    "PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS=true)")
        return (f"{len(self.undecryptable)} of {self.blocks} block documents do not decrypt "
                f"with the {self.key.source} key (first: {self.undecryptable[0]!r}); give "
                "prefect-dr the server's key or allow it (--allow-undecryptable-blocks, "
                "PREFECT_DR_ALLOW_UNDECRYPTABLE_BLOCKS=true)")


def judge_block_key(conn: psycopg.Connection, env: Mapping[str, str]) -> KeyVerdict:
    """The key that decrypts the block documents: the one given to prefect-dr (Prefect itself
    prefers the environment's key), else the database's; a given key that decrypts fewer
    documents than the stored one loses to it. Raises ConfigError for an unreadable key file.
    """
    blocks = encrypted_blocks(conn)
    db_key = database_key(conn)
    given = configured_key(env)
    key = given or db_key
    bad = undecryptable(blocks, key.key) if key else [name for _, name, _ in blocks]
    if bad and key is given and db_key is not None:  # a wrong env key: try the stored one
        alt = undecryptable(blocks, db_key.key)
        if len(alt) < len(bad):
            key, bad = db_key, alt
    return KeyVerdict(key, len(blocks), tuple(bad))

