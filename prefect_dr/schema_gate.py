"""Can the target's Prefect run a backup's schema revision? (Prefect issue 10778.)

An older revision is fine: Prefect migrates forward on start. A revision *newer* than the
installed Prefect knows makes the server fail with "Can't locate revision". We decide with the
installed Prefect's own migration files when Prefect is installed beside prefect-dr, else with
the table of released head revisions below, else we cannot tell and refuse by default.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

#: (Prefect version, Postgres head revision), oldest first (../shared/guide/prefect-notes.md).
KNOWN_HEADS: tuple[tuple[str, str], ...] = (
    ("3.0.0", "97429116795e"), ("3.1.0", "eaec5004771f"), ("3.2.0", "a03d00b8e275"),
    ("3.3.0", "06b7c293bc69"), ("3.4.0", "4160a4841eed"), ("3.4.25", "9e83011d1f2a"),
    ("3.7.0", "7218aad17905"), ("3.8.0", "50737cdaee36"), ("3.9.1", "91e2b8f3d6a4"),
)
_REVISION = re.compile(r'^revision\s*=\s*["\'](\w+)["\']', re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    """Whether a restore may proceed, and why."""

    ok: bool
    reason: str


def installed_revisions() -> set[str] | None:
    """Every Postgres migration revision the installed Prefect knows, or None if not installed."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = (Path(next(iter(spec.submodule_search_locations)))
              / "server" / "database" / "_migrations" / "versions" / "postgresql")
    if not folder.is_dir():
        return None
    found = set()
    for path in folder.glob("*.py"):
        match = _REVISION.search(path.read_text(encoding="utf-8", errors="replace"))
        if match:
            found.add(match.group(1))
    return found or None


def _rank(revision: str | None) -> int | None:
    for i, (_, head) in enumerate(KNOWN_HEADS):
        if head == revision:
            return i
    return None


def judge(backup_revision: str | None, target_revision: str | None,
          known: set[str] | None) -> Verdict:
    """Decide whether Prefect at the target can run ``backup_revision``.

    ``target_revision`` is the target database's current revision (None when it is new),
    ``known`` the installed Prefect's revisions (None when Prefect is not installed here).
    """
    if backup_revision is None:
        return Verdict(False, "the backup records no alembic revision")
    if backup_revision == target_revision:
        return Verdict(True, f"same schema revision {backup_revision}")
    if known is not None:
        if backup_revision in known:
            return Verdict(True, f"revision {backup_revision} is known to the installed Prefect "
                                 "(an older one is migrated forward on start)")
        return Verdict(False, f"revision {backup_revision} is newer than the installed Prefect "
                              "knows: upgrade Prefect at the target to the backup's version "
                              "first, or pass --allow-newer-schema")
    b, t = _rank(backup_revision), _rank(target_revision)
    if b is not None and t is not None:
        if b <= t:
            return Verdict(True, f"revision {backup_revision} is not newer than the target's")
        return Verdict(False, f"revision {backup_revision} (Prefect {KNOWN_HEADS[b][0]}) is newer "
                              f"than the target's {target_revision} (Prefect {KNOWN_HEADS[t][0]})"
                              ": upgrade Prefect first, or pass --allow-newer-schema")
    return Verdict(False, f"cannot tell whether the target's Prefect runs revision "
                          f"{backup_revision}: install Prefect beside prefect-dr, or pass "
                          "--allow-newer-schema if you know it does")
