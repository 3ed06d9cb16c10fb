"""The chaos suite's figures: per scenario, how many trials ran, how many faults were injected,
how many invariant checks passed, how many failures (invariant violations) were found, and how
much was lost. Collected during the session, written as JSON at its end (scripts/chaos renders
docs/reliability.md from it) and printed in the terminal summary.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Scenario:
    """The counters of one scenario."""

    key: str
    group: str
    title: str
    invariant: str
    known_bug: str | None = None
    trials: int = 0
    faults: int = 0
    checks: int = 0
    failures: int = 0
    lost: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def trial(self, **params: Any) -> Iterator[Trial]:
        """One trial: counted, timed; an exception inside counts as a failure found."""
        t = Trial(self, params)
        start = time.monotonic()
        self.trials += 1
        try:
            yield t
        except BaseException:
            self.failures += 1
            raise
        finally:
            self.seconds += time.monotonic() - start

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"key": self.key, "group": self.group, "title": self.title,
                "invariant": self.invariant, "known_bug": self.known_bug,
                "trials": self.trials, "faults": self.faults, "checks": self.checks,
                "failures": self.failures, "lost": self.lost,
                "seconds": round(self.seconds, 1), "outcomes": dict(self.outcomes),
                "notes": self.notes}


@dataclass
class Trial:
    """Helpers for one trial of a scenario."""

    scenario: Scenario
    params: dict[str, Any]

    def fault(self, n: int = 1) -> None:
        """A fault was injected (a kill delivered, an outage started...)."""
        self.scenario.faults += n

    def outcome(self, name: str) -> None:
        """Record how the trial ended (complete, incomplete, failed, swapped...)."""
        self.scenario.outcomes[name] += 1

    def check(self, ok: bool, message: str, *, lost: bool = False) -> None:
        """An invariant check; raises AssertionError (with the replay parameters) if it fails.
        ``lost``: a failure of this check means data was lost."""
        if ok:
            self.scenario.checks += 1
            return
        if lost:
            self.scenario.lost += 1
        raise AssertionError(f"{self.scenario.title}: {message} (trial {self.params})")

    def known_bug(self, message: str) -> None:
        """The trial hit a known bug (covered by an xfail test): counted, not raised."""
        self.scenario.failures += 1
        self.scenario.outcomes["known bug hit"] += 1
        self.scenario.notes.append(f"{message} (trial {self.params})")


class Figures:
    """All scenarios of a session."""

    def __init__(self, seed: int, soak: bool) -> None:
        self.seed, self.soak = seed, soak
        self.started = time.time()
        self.scenarios: dict[str, Scenario] = {}

    def scenario(self, key: str, *, group: str, title: str, invariant: str,
                 known_bug: str | None = None) -> Scenario:
        """The scenario ``key`` (created on first use)."""
        if key not in self.scenarios:
            self.scenarios[key] = Scenario(key, group, title, invariant, known_bug)
        return self.scenarios[key]

    def to_dict(self, exitstatus: int | None = None) -> dict[str, Any]:
        """JSON-ready form with totals (scenarios that ran)."""
        rows = [s.to_dict() for s in self.scenarios.values() if s.trials]
        return {
            "format": "prefect-dr-chaos-figures", "seed": self.seed, "soak": self.soak,
            "started": self.started, "finished": time.time(),
            "duration_s": round(time.time() - self.started, 1),
            "pytest_exitstatus": exitstatus,
            "totals": {k: sum(r[k] for r in rows)
                       for k in ("trials", "faults", "checks", "failures", "lost")},
            "scenarios": rows,
        }

    def write(self, path: Path, exitstatus: int | None = None) -> None:
        """Write the JSON figures to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(exitstatus), indent=2) + "\n")

    def lines(self) -> list[str]:
        """A plain-text table for the terminal summary."""
        out = [f"seed {self.seed} ({'soak' if self.soak else 'CI'} mode); replay with "
               f"PREFECT_DR_CHAOS_SEED={self.seed}",
               f"{'scenario':58} {'trials':>6} {'faults':>6} {'checks':>6} {'fail':>5} "
               f"{'lost':>4} {'secs':>6}"]
        for s in self.scenarios.values():
            if not s.trials:
                continue
            mark = " (known bug)" if s.known_bug else ""
            out.append(f"{(s.title + mark)[:58]:58} {s.trials:6d} {s.faults:6d} {s.checks:6d} "
                       f"{s.failures:5d} {s.lost:4d} {s.seconds:6.0f}")
        return out
