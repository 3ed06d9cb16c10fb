"""The one place object keys are built. See docs/format.md for the layout.

Every key lives under ``<prefix>/v1/``: the layout version is part of the key from day one, so a
future layout can sit beside this one and a reader can refuse what it does not know.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

LAYOUT_VERSION = "v1"
BACKUP_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")

MANIFEST = "manifest.json"
STATUS = "status.json"
DUMP = "db.dump.zst.age"
CONFIG_EXPORT = "config.json.zst.age"
BLOCK_KEY = "block-key.age"
#: The folder (inside a backup's) of its verification records.
VERIFICATIONS = "verifications/"
#: How a verification record made in another repository ends (``copy`` brought it; I6).
SOURCE_RECORD_SUFFIX = ".source.json"


def new_id(now: dt.datetime) -> str:
    """A backup or verification-record id for the UTC time ``now``: ``20261126T153000Z-a1b2c3``.

    Ids sort in time order, also within one second: the suffix's first three hex digits are
    the fraction of the second (in 4096ths), the last three are random. "latest", an
    increment's parent and copy's order all follow the sorted ids, so two backups made in the
    same second must not sort at random.
    """
    fraction = now.microsecond * 4096 // 1_000_000
    return f"{now:%Y%m%dT%H%M%SZ}-{fraction:03x}{secrets.randbelow(4096):03x}"


def is_verification(name: str) -> bool:
    """Whether ``name`` (a key relative to its backup's folder) is a verification record."""
    return name.startswith(VERIFICATIONS)


def at_source(name: str) -> bool:
    """Whether the verification record ``name`` was made in another repository."""
    return name.endswith(SOURCE_RECORD_SUFFIX)


def copied_name(name: str) -> str:
    """The name a record ``name`` of another repository takes in a copy: a verification record
    becomes one made at the source (never a verification of the copy); others stay."""
    if is_verification(name) and not at_source(name) and name.endswith(".json"):
        return name[:-len(".json")] + SOURCE_RECORD_SUFFIX
    return name


def history_object(table: str) -> str:
    """Name of the object holding one history table's rows (COPY text, zstd, age)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", table):
        raise ValueError(f"malformed table name {table!r}")
    return f"history-{table}.copy.zst.age"


def runs_object(table: str, part: str) -> str:
    """Name of the object holding one part (``live`` or ``done``) of a split run table's rows
    (COPY text, zstd, age; format 4)."""
    if part not in ("live", "done"):
        raise ValueError(f"malformed part {part!r}")
    return f"runs-{part}-{history_object(table).removeprefix('history-')}"


@dataclass(frozen=True)
class Layout:
    """Builds and parses keys for one repository (bucket + prefix)."""

    prefix: str = "prefect-dr"

    @property
    def root(self) -> str:
        """The versioned root every key starts with, ending in '/'."""
        base = self.prefix.strip("/")
        return f"{base}/{LAYOUT_VERSION}/" if base else f"{LAYOUT_VERSION}/"

    @property
    def backups_root(self) -> str:
        """The folder holding one sub-folder per backup."""
        return f"{self.root}backups/"

    def backup_dir(self, backup_id: str) -> str:
        """The folder of one backup; raises ValueError for a malformed id."""
        if not BACKUP_ID_RE.match(backup_id):
            raise ValueError(f"malformed backup id {backup_id!r}")
        return f"{self.backups_root}{backup_id}/"

    def artifact(self, backup_id: str, name: str) -> str:
        """Key of an artifact (or the manifest/status record) of a backup."""
        return self.backup_dir(backup_id) + name

    def verification(self, backup_id: str, stamp: str, *, at_source: bool = False) -> str:
        """Key of one verification record of a backup: made here, or (``at_source``) one
        ``copy`` brought from the repository it was made in."""
        suffix = SOURCE_RECORD_SUFFIX if at_source else ".json"
        return f"{self.backup_dir(backup_id)}{VERIFICATIONS}{stamp}{suffix}"

    @property
    def pins_root(self) -> str:
        """The folder of the pins (prefect_dr.pins): what still needs which backup."""
        return f"{self.root}pins/"

    def pin(self, backup_id: str, name: str) -> str:
        """Key of the pin ``name`` of a backup; raises ValueError for a malformed id or name."""
        if not BACKUP_ID_RE.match(backup_id) or not re.fullmatch(r"[a-z0-9-]+", name):
            raise ValueError(f"malformed pin {backup_id!r}/{name!r}")
        return f"{self.pins_root}{backup_id}/{name}.json"

    def parse_pin_key(self, key: str) -> tuple[str, str] | None:
        """(backup id, pin name) of a key under ``pins_root``, else None."""
        if not key.startswith(self.pins_root) or not key.endswith(".json"):
            return None
        backup_id, _, name = key[len(self.pins_root):-len(".json")].partition("/")
        if not BACKUP_ID_RE.match(backup_id) or not re.fullmatch(r"[a-z0-9-]+", name):
            return None
        return backup_id, name

    def lock(self, name: str) -> str:
        """Key of the lock object for the lock called ``name``."""
        return f"{self.root}locks/{name}.json"

    def probe(self, token: str) -> str:
        """Key of a short-lived object doctor writes, reads back and deletes."""
        return f"{self.root}probes/doctor-{token}"

    def locate(self, backup_id: str, artifact_key: str) -> str | None:
        """This repository's key of an artifact a manifest names as ``artifact_key`` (which
        holds the prefix of the repository the backup was taken in: a copy under another
        prefix keeps its manifest byte for byte). None when the key is not
        ``.../v1/backups/<backup_id>/<name>``."""
        parts = artifact_key.split("/")
        if (len(parts) < 4 or parts[-4] != LAYOUT_VERSION or parts[-3] != "backups"
                or parts[-2] != backup_id or not parts[-1]):
            return None
        return self.artifact(backup_id, parts[-1])

    def parse_backup_key(self, key: str) -> tuple[str, str] | None:
        """Return (backup id, rest of key) for a key under ``backups_root``, else None."""
        if not key.startswith(self.backups_root):
            return None
        backup_id, _, rest = key[len(self.backups_root):].partition("/")
        if not BACKUP_ID_RE.match(backup_id):
            return None
        return backup_id, rest
