"""Durable-ack figures from the portal (docs/durable.md), for the supervisor's status poll, metrics and status page.

The portal keeps them (per database: acknowledged, timeouts, p50/p99 latency) and serves them on
loopback at DURABLE_PATH; this module only reads that answer and turns it into Prometheus families.
"""

from __future__ import annotations

from typing import Any, Iterator

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgehost.engine import loopback
from edgehost.portal import DURABLE_PATH
from edgehost.settings import Settings


def fetch(settings: Settings, timeout: float = 1.0) -> dict[str, Any] | None:
    """The portal's durable-ack figures, or None when it does not answer (not running, or another app)."""
    try:
        resp = loopback.get(f"{settings.portal_url}{DURABLE_PATH}", timeout=timeout)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def families(figures: dict[str, Any] | None) -> Iterator[Metric]:
    """edgehost_durable_ack_* per database from a `fetch` answer (nothing when there is none)."""
    if not figures:
        return
    acked = CounterMetricFamily("edgehost_durable_ack", "Writes acknowledged once in the replica (durable mode).",
                                labels=["db"])
    timeouts = CounterMetricFamily("edgehost_durable_ack_timeouts",
                                   "Durable writes answered 503: stored on this machine, not confirmed off it in time.",
                                   labels=["db"])
    latency = GaugeMetricFamily("edgehost_durable_ack_latency_seconds",
                                "Durable acknowledgement latency over recent writes (commit to replica confirmed).",
                                labels=["db", "quantile"])
    for name, d in sorted((figures.get("databases") or {}).items()):
        acked.add_metric([name], d.get("acked", 0))
        timeouts.add_metric([name], d.get("timeouts", 0))
        for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
            if d.get(key) is not None:
                latency.add_metric([name, q], d[key] / 1000)
    yield from (acked, timeouts, latency)


def summary_rows(figures: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per database for `status --json` and the status page: name, acked, timeouts, p50_ms, p99_ms."""
    if not figures:
        return []
    return [{"db": name, "acked": d.get("acked", 0), "timeouts": d.get("timeouts", 0),
             "p50_ms": d.get("p50_ms"), "p99_ms": d.get("p99_ms"), "last_error": d.get("last_error", "")}
            for name, d in sorted((figures.get("databases") or {}).items())]
