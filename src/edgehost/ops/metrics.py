"""The supervisor's Prometheus metrics, built with prometheus_client at each scrape.

Gauges are read from what the supervisor already holds (its last status poll, the services, the
alert state, the newest drill and verify), so a scrape costs no call to litestream or the replica.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgehost.engine.litestream import epoch
from edgehost.ops.status import DatabaseStatus


def families(dbs: list[DatabaseStatus], services: list[dict], *, checks: dict[str, Any] | None = None,
             alerts: Any = None, lease: dict[str, Any] | None = None,
             pitr: dict[str, float | None] | None = None) -> Iterator[Metric]:
    lag = GaugeMetricFamily("edgehost_replication_lag_seconds",
                            "Seconds the replica has been behind the local database (0 = caught up).", labels=["db"])
    local = GaugeMetricFamily("edgehost_replication_local_txid",
                              "Latest local transaction id, as a number (Prometheus needs one; litestream and "
                              "edgehost status --json print it as 16 hex digits).", labels=["db"])
    replicated = GaugeMetricFamily("edgehost_replication_replicated_txid",
                                   "Latest transaction id in the replica, as a number (litestream and edgehost "
                                   "status --json print it as 16 hex digits).", labels=["db"])
    error = GaugeMetricFamily("edgehost_replication_error", "1 when litestream reports an error for the database.",
                              labels=["db"])
    wal = GaugeMetricFamily("edgehost_wal_bytes", "Size of the database's WAL file.", labels=["db"])
    for d in dbs:
        if d.lag_seconds is not None:
            lag.add_metric([d.name], d.lag_seconds)
        if d.local_txid is not None:
            local.add_metric([d.name], d.local_txid)
        if d.replicated_txid is not None:
            replicated.add_metric([d.name], d.replicated_txid)
        error.add_metric([d.name], 1 if d.state == "error" else 0)
        wal.add_metric([d.name], d.wal_bytes)
    yield from (lag, local, replicated, error, wal)
    if pitr is not None:
        window = GaugeMetricFamily("edgehost_pitr_window_seconds",
                                   "How far back `restore --at` reaches for the database (its oldest snapshot's age).",
                                   labels=["db"])
        for name, seconds in sorted(pitr.items()):
            if seconds is not None:
                window.add_metric([name], seconds)
        yield window
    up = GaugeMetricFamily("edgehost_service_up", "1 when the service is running.", labels=["service"])
    restarts = CounterMetricFamily("edgehost_service_restarts", "Restarts since the supervisor started.",
                                   labels=["service"])
    for s in services:
        up.add_metric([s["name"]], 1 if s["state"] == "running" else 0)
        restarts.add_metric([s["name"]], s["restarts"])
    yield from (up, restarts)
    if checks is not None:
        for kind in ("drill", "verify"):
            passed = GaugeMetricFamily(f"edgehost_last_successful_{kind}_timestamp_seconds",
                                       f"When the newest passing {kind} on this machine finished (Unix time).")
            when = epoch(checks.get(f"{kind}_passed_at"))
            if when is not None:
                passed.add_metric([], when)
            yield passed
            ok = GaugeMetricFamily(f"edgehost_last_{kind}_ok", f"1 when the newest {kind} passed, 0 when it failed.")
            if checks.get(kind):
                ok.add_metric([], 1 if checks[kind]["status"] == "pass" else 0)
            yield ok
    if alerts is not None:
        sent = CounterMetricFamily("edgehost_alerts", "Alerts and recoveries sent, by event.", labels=["event", "kind"])
        for (event, kind), count in sorted(alerts.counts.items()):
            sent.add_metric([event, kind], count)
        yield sent
        active = GaugeMetricFamily("edgehost_incidents_active", "Incidents alerted and not yet recovered, by event.",
                                   labels=["event"])
        by_event: dict[str, int] = {}
        for incident in list(alerts.active.values()):
            by_event[incident.event] = by_event.get(incident.event, 0) + 1
        for event, count in sorted(by_event.items()):
            active.add_metric([event], count)
        yield active
        failed = CounterMetricFamily("edgehost_alert_delivery_failures", "Notices a channel did not take after retries.",
                                     labels=["channel"])
        for channel, count in sorted(alerts.delivery.failed.items()):
            failed.add_metric([channel], count)
        yield failed
    if lease is not None:
        held = GaugeMetricFamily("edgehost_lease_held", "1 when this machine holds the replica's writer lease.",
                                 labels=["machine_id"])
        held.add_metric([lease.get("machine_id") or ""], 1 if lease.get("held") else 0)
        fenced = GaugeMetricFamily("edgehost_lease_fenced", "1 when another machine took the lease from this one.")
        fenced.add_metric([], 1 if lease.get("fenced") else 0)
        yield from (held, fenced)


class _Snapshot:
    def __init__(self, metrics: Iterable[Metric]):
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def render(metrics: Iterable[Metric]) -> str:
    """Prometheus text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry).decode()
