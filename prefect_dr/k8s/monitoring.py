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

from prefect_dr.k8s import watch
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
    "- Thresholds fit daily schedules: see the header of deploy/prometheus/alerts.yml.\n"
    "- The prefect-dr-kubernetes group reads kube-state-metrics (kube_job_*, kube_cronjob_*):\n"
    "  a Job that failed however its pod died, a CronJob that missed its schedule."
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


KUBE_GROUP = "prefect-dr-kubernetes"
#: Beyond a CronJob's startingDeadlineSeconds, a missed run is reported after this margin.
MISSED_MARGIN_SECONDS = 15 * 60


def _owned(options: RenderOptions, state: str) -> str:
    """Start time of each finished Job of our CronJobs in ``state`` (failed, complete), per
    CronJob (owner_name): the newest such Job's start time."""
    ns = f'namespace="{options.namespace}"'
    crons = f'owner_name=~"{options.name}-(backup|prune|verify)"'
    return (f"max by (namespace, owner_name) (\n"
            f"  kube_job_status_start_time{{{ns}}}\n"
            f"  * on (namespace, job_name) group_left (owner_name)\n"
            f'    kube_job_owner{{{ns}, owner_kind="CronJob", {crons}}}\n'
            f"  * on (namespace, job_name) group_left ()\n"
            f'    (kube_job_{state}{{{ns}, condition="true"}} == 1)\n'
            f")")


def kube_alert_group(options: RenderOptions) -> dict[str, Any]:
    """Alerts on kube-state-metrics for what no pushed metric can tell: a pod that died without
    pushing (OOM-killed, evicted, an image that cannot be pulled, a missing Secret), a restore
    or hook Job that failed, a CronJob that missed its schedule. Selected by the rendered
    namespace and names."""
    ns, name = options.namespace, options.name
    failed, complete = _owned(options, "failed"), _owned(options, "complete")
    missed = options.starting_deadline_seconds + MISSED_MARGIN_SECONDS
    crons = f'namespace="{ns}", cronjob=~"{name}-(backup|prune|verify)"'
    return {"name": KUBE_GROUP, "interval": "1m", "rules": [
        {"alert": "PrefectDRCronJobFailed",
         # the newest finished Job of the CronJob failed (no later one completed)
         "expr": f"{failed}\n> on (namespace, owner_name)\n(\n{complete}\n"
                 f"or on (namespace, owner_name)\n0 * {failed}\n)\n",
         "for": "1m", "labels": {"severity": "critical"},
         "annotations": {
             "summary": "prefect-dr: the last Job of {{ $labels.namespace }}/"
                        "{{ $labels.owner_name }} failed",
             "description": "The newest Job of CronJob {{ $labels.owner_name }} failed, "
                            "whatever its pod died of (exit code, OOM kill, eviction, image "
                            "pull, missing Secret): a pod that dies without pushing metrics "
                            "is seen here. kubectl -n {{ $labels.namespace }} get jobs; "
                            "kubectl logs job/<job>. The alert clears when a later Job of it "
                            "completes."}},
        {"alert": "PrefectDRJobFailed",
         "expr": f'kube_job_failed{{namespace="{ns}", condition="true", '
                 f'job_name=~"{name}-(restore|plan)-.+|{name}-pre-upgrade"}} == 1\n',
         "for": "1m", "labels": {"severity": "critical"},
         "annotations": {
             "summary": "prefect-dr: Job {{ $labels.namespace }}/{{ $labels.job_name }} "
                        "failed",
             "description": "A restore (or restore plan) or pre-upgrade backup Job failed; "
                            "it is never retried by itself. Read its logs (kubectl logs "
                            "job/{{ $labels.job_name }}), fix, delete the Job and create it "
                            "again."}},
        {"alert": "PrefectDRCronJobMissedSchedule",
         "expr": f"(time() - kube_cronjob_next_schedule_time{{{crons}}} > {missed})\n"
                 f"and on (namespace, cronjob) (kube_cronjob_spec_suspend{{{crons}}} == 0)\n",
         "for": "5m", "labels": {"severity": "warning"},
         "annotations": {
             "summary": "prefect-dr: CronJob {{ $labels.namespace }}/{{ $labels.cronjob }} "
                        "missed its schedule",
             "description": "The CronJob's next run is overdue by more than its "
                            "startingDeadlineSeconds plus 15m: the controller did not start "
                            "it (a previous Job still running under concurrencyPolicy Forbid, "
                            "the controller down, a quota). kubectl -n {{ $labels.namespace }} "
                            "describe cronjob {{ $labels.cronjob }}."}},
        *([watch.unavailable_rule(options)] if options.watch else []),
    ]}


def prometheus_rule(options: RenderOptions) -> dict[str, Any]:
    """The PrometheusRule ``<name>`` with every alert of deploy/prometheus/alerts.yml and the
    kube-state-metrics alerts of the rendered Jobs (:func:`kube_alert_group`)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": _meta(options, options.name, "alerts",
                              "prefect-dr alerts (deploy/prometheus/alerts.yml) and "
                              "kube-state-metrics alerts of its Jobs"),
            "spec": {"groups": [*alert_groups(), kube_alert_group(options)]}}


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
