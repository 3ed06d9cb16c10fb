"""The Deployment of ``prefect-dr watch`` (config-only backups within a minute of a
configuration change). A pure function of :class:`RenderOptions`.

It writes backups, so it runs as the backup job does: the backup ServiceAccount (and its cloud
identity), the backup's Secrets (database, repository credentials, signing and block keys;
never the age identity), the same hardened pod. One replica, strategy Recreate: two watchers
would only take turns at the backup lock.
"""

from __future__ import annotations

from typing import Any

from prefect_dr.k8s import repository
from prefect_dr.k8s.options import RenderOptions
from prefect_dr.k8s.pods import labels, metadata, pod_spec

ROLE = "watch"


def _selector(options: RenderOptions) -> dict[str, str]:
    """The pod's labels but the version (a Deployment's selector never changes)."""
    return {k: v for k, v in labels(options, ROLE).items() if k != "app.kubernetes.io/version"}


def deployment(options: RenderOptions) -> dict[str, Any]:
    """The watch Deployment: ``<name>-watch``, metrics on ``watch_metrics_port``."""
    port = options.watch_metrics_port
    pod = pod_spec(options, "backup", [
        "watch", "--metrics-port", str(port), "--metrics-address", "0.0.0.0"])  # noqa: S104
    pod["restartPolicy"] = "Always"  # a Deployment's pods always restart
    container = pod["containers"][0]
    container["name"] = ROLE
    # idle between backups: request little; a config-only backup fits the jobs' limits
    container["resources"]["requests"] = {"cpu": "50m", "memory": "128Mi"}
    container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    # /metrics is served beside the loop: it proves the process, not the loop; the
    # loop's health is in the metrics (docs/operations.md, "Continuous protection")
    container["readinessProbe"] = {"httpGet": {"path": "/metrics", "port": "metrics"},
                                   "periodSeconds": 30}
    selector = _selector(options)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(options, f"{options.name}-{ROLE}", ROLE,
                             "Config-only backup within a minute of every Prefect "
                             "configuration change (prefect-dr watch); one replica"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**labels(options, ROLE),
                               **repository.pod_labels(options, "backup")},
                    "annotations": {"prometheus.io/scrape": "true",
                                    "prometheus.io/port": str(port)},
                },
                "spec": pod,
            },
        },
    }


def pod_monitor(options: RenderOptions) -> dict[str, Any]:
    """The Prometheus Operator PodMonitor ``<name>-watch`` scraping the watch pod's metrics
    port (``k8s render --prometheus-rule``)."""
    meta = metadata(options, f"{options.name}-{ROLE}", "metrics",
                    "Scrapes prefect-dr watch's metrics port")
    meta["labels"].update(options.prometheus_labels)
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": meta,
            "spec": {"selector": {"matchLabels": _selector(options)},
                     "namespaceSelector": {"matchNames": [options.namespace]},
                     "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}]}}


def unavailable_rule(options: RenderOptions) -> dict[str, Any]:
    """The kube-state-metrics alert of a watch Deployment without a ready pod for 10 minutes
    (it crashes, cannot be scheduled, its image or a Secret is missing)."""
    return {
        "alert": "PrefectDRWatchUnavailable",
        "expr": f'kube_deployment_status_replicas_available{{namespace="{options.namespace}", '
                f'deployment="{options.name}-{ROLE}"}} < 1\n',
        "for": "10m", "labels": {"severity": "critical"},
        "annotations": {
            "summary": "prefect-dr: {{ $labels.namespace }}/{{ $labels.deployment }} has no "
                       "ready pod",
            "description": "The watch Deployment has had no available pod for 10 minutes: "
                           "configuration changes are not backed up until the next scheduled "
                           "backup. kubectl -n {{ $labels.namespace }} describe deployment "
                           "{{ $labels.deployment }}; kubectl logs deployment/"
                           "{{ $labels.deployment }}."}}
