"""Prometheus metrics of one run: a textfile for node_exporter and/or a Pushgateway push.

Every command records its result, duration and last success; backup adds bytes per stage and
rows, verify its result, prune its counts. Every sample of a command that opens the repository
carries a ``repository`` label (its URL; one Pushgateway group per repository); a success
also removes the same job's samples without it, so it replaces a failure that came before the
repository was opened. Backups carry a ``kind`` label (full, config-only), so frequent
config-only backups never stand in for a failing full backup. The textfile is shared by all
commands: samples of other commands (and kinds) already in the file are kept, and a failed run
keeps the previous ``last_success`` of its command. The file is written atomically (temp file
+ rename).
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import (
    delete_from_gateway,
    generate_latest,
    pushadd_to_gateway,
)
from prometheus_client.parser import text_string_to_metric_families

from prefect_dr.errors import DRError

NAMESPACE = "prefect_dr"
HELP = {
    "last_success_timestamp_seconds": "Unix time of the last successful run of the command.",
    "last_run_timestamp_seconds": "Unix time of the last run of the command, whatever its result.",
    "last_run_success": "1 if the last run of the command succeeded, else 0.",
    "duration_seconds": "Wall time of the last run of the command.",
    "backup_bytes": "Bytes of the last successful backup by pipeline stage.",
    "backup_rows": "Rows in the last successful backup (exact and estimated counts).",
    "verification_success": "1 if the newest verification passed, else 0.",
    "verification_timestamp_seconds": "Unix time the newest verification finished.",
    "prune_removed_backups": "Backups removed by the last prune.",
    "prune_kept_backups": "Backups kept by the last prune.",
    "copy_backups": "Backups the last copy put into its target repository.",
    "copy_bytes": "Bytes the last copy put into its target repository.",
}


@dataclass
class RunMetrics:
    """What one command run measured; filled in by the CLI as the command goes."""

    command: str
    started: float
    finished: float | None = None
    success: bool | None = None
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # on every sample, e.g. kind

    def set(self, name: str, value: float, **labels: str) -> None:
        """Record gauge ``prefect_dr_<name>`` with ``labels`` (plus the run's labels)."""
        if name not in HELP:
            raise KeyError(f"unknown metric {name}")
        self.values[(name, tuple(sorted({**self.labels, **labels}.items())))] = float(value)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of this run, including the per-command result ones."""
        out = dict(self.values)
        cmd = tuple(sorted({"command": self.command, **self.labels}.items()))
        end = self.finished or self.started
        out[("last_run_timestamp_seconds", cmd)] = end
        out[("last_run_success", cmd)] = 1.0 if self.success else 0.0
        out[("duration_seconds", cmd)] = max(end - self.started, 0.0)
        if self.success:
            out[("last_success_timestamp_seconds", cmd)] = end
        return out


def _registry(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
              ) -> CollectorRegistry:
    """One gauge per metric name. Samples of one name may carry different label names (a
    backup's ``kind``, a file written by an older version): the missing ones are set to "",
    which Prometheus treats as an absent label."""
    registry = CollectorRegistry()
    keys_of: dict[str, set[str]] = {}
    for name, labels in samples:
        keys_of.setdefault(name, set()).update(k for k, _ in labels)
    gauges: dict[str, Gauge] = {}
    for (name, labels), value in sorted(samples.items()):
        keys = tuple(sorted(keys_of[name]))
        gauge = gauges.get(name)
        if gauge is None:
            gauge = Gauge(f"{NAMESPACE}_{name}", HELP[name], labelnames=keys, registry=registry)
            gauges[name] = gauge
        given = dict(labels)
        (gauge.labels(*[given.get(k, "") for k in keys]) if keys else gauge).set(value)
    return registry


def _read_existing(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DRError(f"cannot read metrics file {path}: {exc.strerror}") from None
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name.removeprefix(f"{NAMESPACE}_")
                if name in HELP:  # labels written as "" are absent ones
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if v != ""))
                    out[(name, labels)] = float(sample.value)
    except ValueError:
        return {}  # an unreadable old file is replaced, not fatal
    return out


#: Labels that say how far a run got: a run that fails before it opens the repository has no
#: ``repository`` label. A success removes the same job's samples (and Pushgateway group) that
#: lack them, so it replaces a failure whatever that failure reached; samples that carry them
#: (other repositories of the same instance) stay.
PROGRESS_LABELS = frozenset({"repository"})


def _identity(key: tuple[str, tuple[tuple[str, str], ...]]
              ) -> tuple[str, tuple[tuple[str, str], ...]]:
    name, labels = key
    return name, tuple((k, v) for k, v in labels if k not in PROGRESS_LABELS)


def _short_of(key: tuple[str, tuple[tuple[str, str], ...]]) -> bool:
    """Whether a sample lacks a progress label (its run stopped before it knew it)."""
    return not PROGRESS_LABELS & {k for k, _ in key[1]}


def write_textfile(path: Path, run: RunMetrics) -> None:
    """Merge this run's samples into the textfile at ``path`` atomically. A success also
    removes the samples of the same names and labels that lack :data:`PROGRESS_LABELS` (a
    failure that stopped before it opened the repository). Raises DRError."""
    new = run.samples()
    merged = _read_existing(path)
    if run.success:
        replaced = {_identity(key) for key in new}
        merged = {key: value for key, value in merged.items()
                  if not (_short_of(key) and _identity(key) in replaced)}
    merged.update(new)
    data = generate_latest(_registry(merged))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".prefect-dr-", suffix=".prom.tmp",
                                   dir=str(path.parent))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise DRError(f"cannot write metrics file {path}: {exc.strerror}") from None


def push(url: str, run: RunMetrics, *, instance: str | None = None) -> None:
    """Push this run's samples to a Pushgateway, grouped by job, instance, command (and
    repository, kind, copy target). A success also deletes the group of the same job that
    lacks :data:`PROGRESS_LABELS` (a run that failed before it opened the repository), so the
    success replaces that failure too.

    POST semantics: a failed run does not erase the group's last_success. Raises DRError.
    """
    registry = _registry(run.samples())
    grouping = {"instance": instance or socket.gethostname(), "command": run.command,
                **run.labels}  # one group per repository and kind: a push replaces its group
    short = {k: v for k, v in grouping.items() if k not in PROGRESS_LABELS}
    try:
        pushadd_to_gateway(url, job="prefect-dr", registry=registry, grouping_key=grouping,
                           timeout=10)
        if run.success and short != grouping:
            delete_from_gateway(url, job="prefect-dr", grouping_key=short, timeout=10)
    except OSError as exc:
        raise DRError(f"cannot push metrics to {url}: {exc}") from None
