"""Prometheus Operator objects: a ``PrometheusRule`` holding prefect-dr's alert rules (the
same file as deploy/prometheus/alerts.yml) and a ``ServiceMonitor`` that scrapes the
Pushgateway the jobs push to (``honorLabels``, so ``job="prefect-dr"`` and the pushed
``instance`` are kept).

The jobs are batch Jobs with nothing to scrape: their metrics reach Prometheus through the
Pushgateway (render with ``pushgateway_url``). :data:`NOTE` says what to check on the
Prometheus side; it is printed as the YAML's header.
"""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from prefect_dr.k8s.options import RenderOptions, check
from prefect_dr.k8s.pods import metadata

RULES_FILE = "alerts.yml"
#: Labels of the Service of prometheus-community's prometheus-pushgateway chart, port "http".
PUSHGATEWAY_SELECTOR = {"app.kubernetes.io/name": "prometheus-pushgateway"}
NOTE = (
    "Prometheus Operator objects for prefect-dr (docs/deploy.md, 'Prometheus Operator').\n"
    "- Your Prometheus selects rules and monitors by label (kube-prometheus-stack: "
    "release=<its release>):\n"
    "  add it with --prometheus-label.\n"
    "- The jobs push to the Pushgateway (render the jobs with a Pushgateway URL); the\n"
    "  ServiceMonitor scrapes it with honorLabels. If the Pushgateway chart's own ServiceMonitor\n"
    "  is enabled (serviceMonitor.enabled, with honorLabels: true), leave this one out.\n"
    "- Thresholds fit daily schedules: see the header of deploy/prometheus/alerts.yml."
)


def alert_groups() -> list[dict[str, Any]]:
    """The rule groups of the packaged alerts.yml (identical to deploy/prometheus/alerts.yml)."""
    import yaml

    text = resources.files("prefect_dr.k8s").joinpath(RULES_FILE).read_text(encoding="utf-8")
    return list(yaml.safe_load(text)["groups"])


def _meta(options: RenderOptions, name: str, component: str, description: str
          ) -> dict[str, Any]:
    meta = metadata(options, name, component, description)
    meta["labels"].update(options.prometheus_labels)
    return meta


def prometheus_rule(options: RenderOptions) -> dict[str, Any]:
    """The PrometheusRule ``<name>`` with every alert of deploy/prometheus/alerts.yml."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _meta(options, options.name, "alerts",
                              "prefect-dr alerts (deploy/prometheus/alerts.yml)"),
            "spec": {"groups": alert_groups()}}


def pushgateway_namespace(options: RenderOptions) -> str:
    """The Pushgateway's namespace, read from a ``<service>.<namespace>.svc`` URL; else the
    namespace rendered into."""
    host = urlsplit(options.pushgateway_url or "").hostname or ""
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        return parts[1]
    return options.namespace


def pushgateway_service_monitor(options: RenderOptions) -> dict[str, Any]:
    """The ServiceMonitor ``<name>-pushgateway`` of the Pushgateway's Service."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta(options, f"{options.name}-pushgateway", "metrics",
                              "Scrapes the Pushgateway prefect-dr's jobs push to, keeping the "
                              "pushed job and instance labels"),
            "spec": {"selector": {"matchLabels": dict(PUSHGATEWAY_SELECTOR)},
                     "namespaceSelector": {"matchNames": [pushgateway_namespace(options)]},
                     "endpoints": [{"port": "http", "honorLabels": True, "interval": "60s"}]}}


def monitoring(options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """PrometheusRule and ServiceMonitor. Raises ValueError (one line) for a bad option."""
    options = options or RenderOptions()
    check(options)
    return [prometheus_rule(options), pushgateway_service_monitor(options)]
