"""The watch Deployment of `k8s render`: one replica, Recreate, the backup job's hardened pod,
identity and Secrets (never the age identity), metrics port; off with --no-watch."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import run_cli
from k8s_objects import assert_valid, by_kind, pods, secret_names
from test_k8s import IDS, OPTIONS

from prefect_dr import k8s


def _watch(options: k8s.RenderOptions) -> dict:
    (deployment,) = by_kind(k8s.render(options), "Deployment")
    return deployment


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_the_watch_deployment_runs_like_the_backup_job(options):
    deployment = _watch(options)
    assert_valid(deployment)
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert "app.kubernetes.io/version" not in spec["selector"]["matchLabels"]  # immutable
    pod = template["spec"]
    backup = pods(k8s.render(options))["backup"]
    for same in ("securityContext", "serviceAccountName", "automountServiceAccountToken",
                 "enableServiceLinks", "volumes", "terminationGracePeriodSeconds"):
        assert pod[same] == backup[same], same
    assert pod["restartPolicy"] == "Always"
    (container,) = pod["containers"]
    (backup_container,) = backup["containers"]
    for same in ("securityContext", "env", "envFrom", "volumeMounts", "image"):
        assert container.get(same) == backup_container.get(same), same
    assert secret_names(pod) == secret_names(backup)
    assert options.identity_secret not in secret_names(pod)  # cannot decrypt
    assert container["args"] == ["watch", "--metrics-port", "9464",
                                 "--metrics-address", "0.0.0.0"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9464"


def test_watch_can_be_turned_off_and_its_port_moved():
    options = k8s.RenderOptions()
    assert by_kind(k8s.render(dataclasses.replace(options, watch=False)), "Deployment") == []
    moved = _watch(dataclasses.replace(options, watch_metrics_port=9100))
    assert moved["spec"]["template"]["spec"]["containers"][0]["args"][2] == "9100"
    with pytest.raises(ValueError, match="watch_metrics_port"):
        k8s.render(dataclasses.replace(options, watch_metrics_port=0))


def test_k8s_render_no_watch_flag(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    on = run_cli(["k8s", "render"], env)
    off = run_cli(["k8s", "render", "--no-watch"], env)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    kinds = [[o["kind"] for o in yaml.safe_load_all(p.stdout) if o] for p in (on, off)]
    assert "Deployment" in kinds[0] and "Deployment" not in kinds[1]
    assert len(kinds[0]) == len(kinds[1]) + 1


def test_the_prometheus_objects_scrape_and_watch_the_watch_pod():
    options = k8s.RenderOptions(namespace="ops", prometheus_labels={"release": "kps"})
    objects, _ = k8s.select(options, prometheus_rule=True)
    (monitor,) = by_kind(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    pod_labels = _watch(options)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "interval": "30s"}]
    (rule,) = by_kind(objects, "PrometheusRule")
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"PrefectDRWatchBehind", "PrefectDRWatchPolling",
            "PrefectDRWatchUnavailable"} <= names
    off = dataclasses.replace(options, watch=False)
    objects, _ = k8s.select(off, prometheus_rule=True)
    assert by_kind(objects, "PodMonitor") == []
    (rule,) = by_kind(objects, "PrometheusRule")
    assert "PrefectDRWatchUnavailable" not in {
        r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
