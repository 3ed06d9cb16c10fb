"""The kube-state-metrics alerts of `k8s render --prometheus-rule`, proven with `promtool test
rules`: a CronJob's Job that failed (however its pod died) fires until a later Job of it
completes; a failed restore or hook Job fires; a CronJob that missed its schedule fires; Jobs
of other CronJobs and namespaces never do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from prefect_dr import k8s
from prefect_dr.k8s.monitoring import kube_alert_group

NS = 'namespace="prefect-dr"'


def _owner(name: str, owner: str, values: str) -> dict:
    return {"series": f'kube_job_owner{{{NS},job_name="{name}",owner_kind="CronJob",'
                      f'owner_name="{owner}",owner_is_controller="true"}}', "values": values}


SERIES = [
    # backup: the 01:00 Job failed (OOM-killed: no exit code, no push); a later one completes
    {"series": f'kube_job_status_start_time{{{NS},job_name="prefect-dr-backup-1"}}',
     "values": "100x40"},
    {"series": f'kube_job_failed{{{NS},job_name="prefect-dr-backup-1",condition="true"}}',
     "values": "1x40"},
    _owner("prefect-dr-backup-1", "prefect-dr-backup", "1x40"),
    {"series": f'kube_job_status_start_time{{{NS},job_name="prefect-dr-backup-2"}}',
     "values": "_x14 1000x25"},
    {"series": f'kube_job_complete{{{NS},job_name="prefect-dr-backup-2",condition="true"}}',
     "values": "_x14 0 0 1x23"},
    _owner("prefect-dr-backup-2", "prefect-dr-backup", "_x14 1x25"),
    # prune: never succeeded, its only Job failed
    {"series": f'kube_job_status_start_time{{{NS},job_name="prefect-dr-prune-1"}}',
     "values": "100x40"},
    {"series": f'kube_job_failed{{{NS},job_name="prefect-dr-prune-1",condition="true"}}',
     "values": "1x40"},
    _owner("prefect-dr-prune-1", "prefect-dr-prune", "1x40"),
    # somebody else's CronJob in the same namespace failed: not ours
    {"series": f'kube_job_status_start_time{{{NS},job_name="other-backup-1"}}',
     "values": "100x40"},
    {"series": f'kube_job_failed{{{NS},job_name="other-backup-1",condition="true"}}',
     "values": "1x40"},
    _owner("other-backup-1", "other-backup", "1x40"),
    # a restore Job failed; a plan Job succeeded
    {"series": f'kube_job_failed{{{NS},job_name="prefect-dr-restore-20260101t020000z-abcdef",'
               'condition="true"}', "values": "1x40"},
    {"series": f'kube_job_failed{{{NS},job_name="prefect-dr-plan-20260101t020000z-abcdef",'
               'condition="true"}', "values": "0x40"},
    # verify's next run is two hours overdue; backup's is in the future
    {"series": f'kube_cronjob_next_schedule_time{{{NS},cronjob="prefect-dr-verify"}}',
     "values": "-7200x40"},
    {"series": f'kube_cronjob_spec_suspend{{{NS},cronjob="prefect-dr-verify"}}', "values": "0x40"},
    {"series": f'kube_cronjob_next_schedule_time{{{NS},cronjob="prefect-dr-backup"}}',
     "values": "90000x40"},
    {"series": f'kube_cronjob_spec_suspend{{{NS},cronjob="prefect-dr-backup"}}', "values": "0x40"},
    # the watch Deployment loses its pod at 5m; someone else's Deployment never had one
    {"series": f'kube_deployment_status_replicas_available{{{NS},deployment="prefect-dr-watch"}}',
     "values": "1x4 0x36"},
    {"series": f'kube_deployment_status_replicas_available{{{NS},deployment="other"}}',
     "values": "0x40"},
]


def _alert(name: str, at: str, labels: list[dict[str, str]]) -> dict:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {"namespace": "prefect-dr", **extra}}
                           for extra in labels]}


TESTS = [{"interval": "1m", "input_series": SERIES, "alert_rule_test": [
    _alert("PrefectDRCronJobFailed", "10m", [
        {"owner_name": "prefect-dr-backup", "severity": "critical"},
        {"owner_name": "prefect-dr-prune", "severity": "critical"}]),
    # backup-2 started at 15m and completed at 17m: only prune is still failing
    _alert("PrefectDRCronJobFailed", "25m", [
        {"owner_name": "prefect-dr-prune", "severity": "critical"}]),
    _alert("PrefectDRJobFailed", "10m", [
        {"job_name": "prefect-dr-restore-20260101t020000z-abcdef", "condition": "true",
         "severity": "critical"}]),
    _alert("PrefectDRCronJobMissedSchedule", "10m", [
        {"cronjob": "prefect-dr-verify", "severity": "warning"}]),
    _alert("PrefectDRWatchUnavailable", "14m", []),  # pending (for: 10m)
    _alert("PrefectDRWatchUnavailable", "16m", [
        {"deployment": "prefect-dr-watch", "severity": "critical"}]),
]}]


def test_kube_state_metrics_alerts_fire_and_clear(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/bootstrap installs it)")
    group = kube_alert_group(k8s.RenderOptions())
    (tmp_path / "full.yml").write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    # the unit test judges the expressions and labels; check rules judges the annotations
    bare = {**group, "rules": [{k: v for k, v in r.items() if k != "annotations"}
                               for r in group["rules"]]}
    (tmp_path / "kube.yml").write_text(yaml.safe_dump({"groups": [bare]}, sort_keys=False))
    (tmp_path / "kube_test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["kube.yml"], "evaluation_interval": "1m", "tests": TESTS},
        sort_keys=False))
    for argv in ([promtool, "check", "rules", "full.yml"],
                 [promtool, "test", "rules", "kube_test.yml"]):
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_rule_is_part_of_the_prometheus_rule_and_names_the_rendered_objects() -> None:
    options = k8s.RenderOptions(namespace="ops", name="dr")
    rule, _ = k8s.monitoring(options)
    [group] = [g for g in rule["spec"]["groups"] if g["name"] == "prefect-dr-kubernetes"]
    text = yaml.safe_dump(group)
    assert 'namespace="ops"' in text and 'dr-(backup|prune|verify)' in text
    assert 'namespace="prefect-dr"' not in text
