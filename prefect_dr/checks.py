"""Check bookkeeping shared by verify, restore and restore-config: a :class:`Check` is one
named outcome, a :class:`Report` collects them for one backup, and :class:`Checks` runs one
check at a time, timing it and turning a failure into a failed check."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from prefect_dr.errors import CryptoKeyError, DRError, VerificationError
from prefect_dr.pg import connect as pgc


@dataclass
class Check:
    """One check's outcome."""

    name: str
    ok: bool
    detail: str
    duration_s: float = 0.0
    artifact: str | None = None


@dataclass
class Report:
    """The checks run on one backup (by verify, restore or restore-config)."""

    backup_id: str
    started_at: str
    finished_at: str = ""
    checks: list[Check] = field(default_factory=list)
    #: a check failed on a key error (missing, malformed or wrong identity).
    key_error: bool = False

    @property
    def ok(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed_check(self) -> Check | None:
        """The first failed check."""
        return next((c for c in self.checks if not c.ok), None)


class Checks:
    """Collects checks; ``run`` times one and turns a DRError into a failed check."""

    def __init__(self, report: Report) -> None:
        self.report = report

    @contextmanager
    def run(self, name: str, artifact: str | None = None) -> Iterator[dict[str, str]]:
        out = {"detail": "ok"}
        start = time.monotonic()
        try:
            yield out
        except CryptoKeyError as exc:
            self.report.key_error = True
            self._add(name, False, exc.message, start, artifact)
            raise
        except DRError as exc:
            self._add(name, False, exc.message, start, artifact)
            raise
        except psycopg.Error as exc:
            self._add(name, False, pgc.first_line(exc), start, artifact)
            raise VerificationError(f"{name}: {pgc.first_line(exc)}") from None
        self._add(name, True, out["detail"], start, artifact)

    def _add(self, name: str, ok: bool, detail: str, start: float,
             artifact: str | None) -> None:
        self.report.checks.append(Check(name, ok, detail, round(time.monotonic() - start, 3),
                                        artifact))

    def fail(self, name: str, detail: str, artifact: str | None = None) -> None:
        """Record a failed check without raising."""
        self.report.checks.append(Check(name, False, detail, 0.0, artifact))
