"""The way back from a `restore-config`: a config-only backup of the target server's database,
taken before anything is changed, like restore's safety backup (labelled ``safety``: a safety
backup's standing, kinds.Standing: ``--latest`` passes over it, retention keeps it for
``--keep-safety-within``).

Importing it again with ``--on-conflict overwrite`` brings back every object the import
overwrote (a rotated Secret's value, a changed variable); objects the import *created* are not
removed by it (restore-config never deletes): :func:`how_to_undo` says so, naming them.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from prefect_dr import backup as backup_mod
from prefect_dr import prefect_api
from prefect_dr.config import Settings
from prefect_dr.config_import.model import CREATE, OVERWRITE, ImportPlan
from prefect_dr.errors import ConfigError
from prefect_dr.kinds import LABEL_SAFETY, Kind
from prefect_dr.manifest import Manifest
from prefect_dr.pg import connect as pgc
from prefect_dr.storage.base import Storage

LABEL = "pre-restore-config"


def changes(the_plan: ImportPlan) -> bool:
    """Whether applying ``the_plan`` changes the target (creates or overwrites anything)."""
    return any(i.action in (CREATE, OVERWRITE) for i in the_plan.items)


def check_target(settings: Settings) -> None:
    """The configured database must be the one the Prefect server at PREFECT_API_URL serves
    (a safety backup of another database would be no way back). Compared by the ids of the
    block types every Prefect server registers in its own database. Raises ConfigError,
    DatabaseError, PrefectAPIError."""
    if not settings.database_url:
        raise ConfigError(["restore-config first takes a config-only backup of the target "
                           "server's database (its way back): set PREFECT_DR_DATABASE_URL to "
                           "that database, or pass --no-safety-backup"])
    served = {str(b["id"]) for b in prefect_api.request(
        settings.prefect_api_url, "POST", "/block_types/filter", {"limit": 50})}
    with pgc.connect(settings.database_url) as conn:
        try:
            ours = {str(r[0]) for r in conn.execute("SELECT id FROM block_type")}
        except psycopg.errors.UndefinedTable:
            ours = set()
    if served and not served & ours:
        raise ConfigError([f"PREFECT_DR_DATABASE_URL ({pgc.describe(settings.database_url)}) "
                           "is not the database of the Prefect server at PREFECT_API_URL "
                           "(their block types differ): point it at that server's database, "
                           "or pass --no-safety-backup"])


def safety_backup(settings: Settings, storage: Storage, manifest: Manifest,
                  env: Mapping[str, str]) -> str:
    """Take the config-only backup of the target's database; its id. Raises what
    :func:`check_target` and :func:`prefect_dr.backup.run` raise."""
    check_target(settings)
    taken = backup_mod.run(settings, storage, backup_mod.Request(
        kind=Kind.CONFIG_ONLY, labels={LABEL_SAFETY: LABEL, "restore-of": manifest.backup_id,
                                       "database": pgc.urlsplit_db(settings.database_url)},
        allow_undecryptable_blocks=True), env=env)
    return taken.backup_id


def how_to_undo(safety_id: str, created: list[str]) -> str:
    """The way back, in one paragraph."""
    text = (f"To undo: 'prefect-dr restore-config {safety_id} --on-conflict overwrite' brings "
            "back every object this import overwrote")
    if created:
        shown = ", ".join(created[:10]) + (f" and {len(created) - 10} more"
                                           if len(created) > 10 else "")
        text += f"; the {len(created)} objects it created stay (delete them by hand: {shown})"
    return text + "."
