"""Can the target's Prefect run a backup's schema revision? (Prefect issue 10778.)

An older revision is fine: Prefect migrates it forward on start. A revision *newer* than the
target's Prefect knows makes that server fail with "Can't locate revision". The decision is made
from the **target's** Prefect, never from a Prefect installed beside prefect-dr, with the table
of every released Prefect 3.x PostgreSQL revision and its parents shipped in
``prefect_dr/data/prefect_revisions.json`` (generated from Prefect's release wheels by
``scripts/gen-prefect-revisions``). What the target's Prefect is comes from, in this order:

1. ``--target-prefect-version`` (the operator says which Prefect will serve the target);
2. the version ``PREFECT_API_URL`` reports, when the target is the configured database;
3. the target database's current alembic revision (its Prefect has run at least that far);
4. nothing: a new, empty target; allowed when the backup's revision is a released one (the plan
   names the oldest Prefect that runs it).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

TABLE_FILE = "prefect_revisions.json"


@dataclass(frozen=True)
class Verdict:
    """Whether a restore may proceed, and why."""

    ok: bool
    reason: str
    certain: bool = True  # False: the table cannot tell (a version between listed releases)


@dataclass(frozen=True)
class Target:
    """What is known of the target's Prefect."""

    prefect_version: str | None = None
    version_source: str = ""  # "--target-prefect-version" | "PREFECT_API_URL"
    revision: str | None = None  # the target database's alembic revision (None: new or empty)


@dataclass(frozen=True)
class Table:
    """Released Prefect 3.x revisions: parents, first release, each release's head."""

    revisions: dict[str, dict[str, Any]]
    releases: dict[str, str]

    def known(self, revision: str) -> bool:
        """Whether ``revision`` belongs to a released Prefect."""
        return revision in self.revisions

    def lineage(self, revision: str) -> set[str]:
        """``revision`` and all its ancestors."""
        seen: set[str] = set()
        stack = [revision]
        while stack:
            rev = stack.pop()
            if rev in seen:
                continue
            seen.add(rev)
            stack.extend(self.revisions.get(rev, {}).get("parents", []))
        return seen

    def first_release(self, revision: str) -> str | None:
        """The oldest Prefect release that runs ``revision``."""
        entry = self.revisions.get(revision)
        return str(entry["first_release"]) if entry else None

    def head_bounds(self, version: str) -> tuple[str | None, str | None, str]:
        """(head of the newest listed release <= version, head of the oldest listed release
        >= version, how exact): equal heads when the version is listed or between releases
        with the same head; None when past either end of the table."""
        want = version_key(version)
        ordered = sorted(self.releases.items(), key=lambda kv: version_key(kv[0]))
        lower = [h for v, h in ordered if version_key(v) <= want]
        upper = [h for v, h in ordered if version_key(v) >= want]
        return (lower[-1] if lower else None, upper[0] if upper else None,
                "listed" if version in self.releases else "between listed releases")

    @property
    def newest(self) -> str:
        """The newest release in the table."""
        return max(self.releases, key=version_key)


def version_key(version: str) -> tuple[int, ...]:
    """Sortable form of a version such as '3.4.25' (suffixes like 'rc1' or '+dev' ignored)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


@functools.cache
def table() -> Table:
    """The shipped table of released revisions."""
    raw = resources.files("prefect_dr").joinpath("data", TABLE_FILE).read_text("utf-8")
    data = json.loads(raw)
    return Table(revisions=data["revisions"], releases=data["releases"])


def _released(t: Table, revision: str) -> str:
    first = t.first_release(revision)
    return f"{revision} (Prefect {first}+)" if first else f"{revision} (no released Prefect)"


def judge(backup_revision: str | None, target: Target, t: Table | None = None) -> Verdict:
    """Decide whether the target's Prefect can run ``backup_revision`` (see the module doc)."""
    t = t or table()
    if backup_revision is None:
        return Verdict(False, "the backup records no alembic revision")
    if not t.known(backup_revision):
        return Verdict(False, f"revision {backup_revision} belongs to no Prefect release up to "
                              f"{t.newest} this prefect-dr knows (newer, or not Prefect's): "
                              "upgrade prefect-dr, or pass --allow-newer-schema if the target's "
                              "Prefect runs it")
    if target.prefect_version:
        return _by_version(backup_revision, target, t)
    if target.revision:
        return _by_revision(backup_revision, target.revision, t)
    return Verdict(True, f"new database: revision {_released(t, backup_revision)}; start it "
                         f"with Prefect {t.first_release(backup_revision)} or newer (an older "
                         "revision is migrated forward on start)")


def _forward(backup: str, head: str) -> str:
    return ("same revision" if backup == head else
            "older: Prefect migrates it forward on start")


def _by_version(backup: str, target: Target, t: Table) -> Verdict:
    version, source = target.prefect_version or "", target.version_source
    low, high, how = t.head_bounds(version)
    said = f"Prefect {version} at the target ({source})"
    if low is not None and backup in t.lineage(low):
        return Verdict(True, f"{said} runs revision {_released(t, backup)} "
                             f"({_forward(backup, low)})")
    if high is not None and backup not in t.lineage(high):
        return Verdict(False, f"revision {_released(t, backup)} is newer than {said} runs: "
                              "upgrade Prefect at the target first (or pass "
                              "--target-prefect-version with the Prefect that will serve it)")
    return Verdict(False, f"cannot tell whether {said} runs revision {_released(t, backup)} "
                          f"({version} is {how}, with revisions added there): pass "
                          "--target-prefect-version with a listed release, or "
                          "--allow-newer-schema if you know it does", certain=False)


def _by_revision(backup: str, current: str, t: Table) -> Verdict:
    said = f"the target database is at {_released(t, current)}"
    if backup == current:
        return Verdict(True, f"same schema revision {backup}")
    if not t.known(current):
        return Verdict(True, f"{said}, newer than every release this prefect-dr knows; revision "
                             f"{_released(t, backup)} is older: Prefect migrates it forward")
    if backup in t.lineage(current):
        return Verdict(True, f"{said}; revision {_released(t, backup)} is older: Prefect "
                             "migrates it forward on start")
    return Verdict(False, f"revision {_released(t, backup)} is newer than the target's Prefect "
                          f"runs ({said}): upgrade Prefect at the target first, or pass "
                          "--target-prefect-version with the Prefect that will serve it")
