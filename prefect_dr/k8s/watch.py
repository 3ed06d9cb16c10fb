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
    selector = {k: v for k, v in labels(options, ROLE).items()
                if k != "app.kubernetes.io/version"}
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
