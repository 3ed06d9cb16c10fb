"""Metrics of runs: backup kinds are separate series, and the textfile merge keeps them apart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefect_dr import metrics


def _run(command: str, at: float, ok: bool, **labels: str) -> metrics.RunMetrics:
    run = metrics.RunMetrics(command, at - 10, labels=dict(labels))
    run.finished, run.success = at, ok
    return run


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if v))
            out[(s.name, labels)] = s.value
    return out


def test_config_only_backups_do_not_replace_the_full_backups_success(tmp_path: Path) -> None:
    prom = tmp_path / "prefect-dr.prom"
    full = _run("backup", 1000.0, True, kind="full")
    full.set("backup_bytes", 123, stage="uploaded")
    metrics.write_textfile(prom, full)
    metrics.write_textfile(prom, _run("backup", 2000.0, True, kind="config-only"))
    metrics.write_textfile(prom, _run("backup", 3000.0, False, kind="full"))  # a failed full
    metrics.write_textfile(prom, _run("verify", 4000.0, True))  # no kind label at all
    got = _samples(prom)
    last = "prefect_dr_last_success_timestamp_seconds"
    assert got[(last, (("command", "backup"), ("kind", "full")))] == 1000.0
    assert got[(last, (("command", "backup"), ("kind", "config-only")))] == 2000.0
    assert got[(last, (("command", "verify"),))] == 4000.0
    assert got[("prefect_dr_last_run_success", (("command", "backup"), ("kind", "full")))] == 0
    assert got[("prefect_dr_backup_bytes", (("kind", "full"), ("stage", "uploaded")))] == 123
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "metrics"], input=prom.read_text(),
                               text=True, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_file_of_an_older_version_without_kind_is_merged(tmp_path: Path) -> None:
    prom = tmp_path / "prefect-dr.prom"
    prom.write_text('# TYPE prefect_dr_last_success_timestamp_seconds gauge\n'
                    'prefect_dr_last_success_timestamp_seconds{command="backup"} 500.0\n')
    metrics.write_textfile(prom, _run("backup", 1000.0, True, kind="full"))
    got = _samples(prom)
    last = "prefect_dr_last_success_timestamp_seconds"
    assert got[(last, (("command", "backup"),))] == 500.0
    assert got[(last, (("command", "backup"), ("kind", "full")))] == 1000.0


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(KeyError):
        metrics.RunMetrics("backup", 0.0).set("no_such_metric", 1)
