"""``watch``'s Prometheus metrics, served on ``--metrics-port`` while it runs.

A collector reads the loop's :class:`.state.Status` at each scrape (nothing is copied):
``prefect_dr_watch_last_change_seen_timestamp_seconds``,
``prefect_dr_watch_last_backup_success_timestamp_seconds``,
``prefect_dr_watch_pending_since_timestamp_seconds`` (0: nothing waiting),
``prefect_dr_watch_source{source=stream|poll}`` (1 for the current one),
``prefect_dr_watch_backups_total``, ``prefect_dr_watch_backup_failures_total``,
``prefect_dr_watch_changes_total{source}`` and ``prefect_dr_watch_up``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from prefect_dr.errors import DRError
from prefect_dr.watch.state import Source, Status

PREFIX = "prefect_dr_watch"


class StatusCollector(Collector):
    """The Prometheus view of one :class:`Status`."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families of the current status."""
        s = self.status
        yield GaugeMetricFamily(f"{PREFIX}_up", "1 while prefect-dr watch runs.", value=1)
        for name, value, text in (
                ("last_change_seen_timestamp_seconds", s.last_change_seen,
                 "Unix time watch last saw a configuration change (0: none yet)."),
                ("last_backup_success_timestamp_seconds", s.last_backup_success,
                 "Unix time of watch's last successful config-only backup (0: none yet)."),
                ("pending_since_timestamp_seconds", s.pending_since,
                 "Unix time of the oldest change not yet in a backup (0: none waiting)."),
                ("started_timestamp_seconds", s.started_at, "Unix time watch started.")):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value or 0.0)
        source = GaugeMetricFamily(f"{PREFIX}_source", "1 for where watch learns of changes "
                                   "now: stream (event stream) or poll (tables).",
                                   labels=["source"])
        for member in Source:
            source.add_metric([member.value], 1.0 if s.source is member else 0.0)
        yield source
        yield CounterMetricFamily(f"{PREFIX}_backups", "Config-only backups watch completed.",
                                  value=s.backups)
        yield CounterMetricFamily(f"{PREFIX}_backup_failures",
                                  "Config-only backups watch attempted that failed.",
                                  value=s.failures)
        changes = CounterMetricFamily(f"{PREFIX}_changes", "Configuration changes watch saw, "
                                      "by how it saw them.", labels=["source"])
        for how in ("stream", "poll"):
            changes.add_metric([how], float(s.changes.get(how, 0)))
        yield changes


def serve(status: Status, port: int, address: str = "127.0.0.1") -> None:
    """Serve ``status`` as Prometheus metrics on ``address:port`` (a daemon thread).
    Raises DRError when the port cannot be bound."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise DRError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc} "
                      "(--metrics-port)") from None
