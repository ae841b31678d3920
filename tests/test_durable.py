"""Durable acknowledgements without litestream: never a silent success."""

from __future__ import annotations

from starlette.testclient import TestClient

from edgehost.portal import store
from edgehost.portal.app import create_app

from procs import rows


def test_without_litestream_a_durable_write_is_503_stored_locally(kit_home):
    settings = kit_home.settings(EDGEHOST_DURABLE_GLOBAL_DB="true")
    store.ensure_global(settings)
    store.create_property(settings, "acme")
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        resp = client.post("/properties/acme/events", json={"kind": "door"})
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["stored_locally"] is True and "not yet replicated off it" in body["error"]
        assert resp.headers["Retry-After"]
        # The event is stored here (the answer says so), under the id it names.
        assert rows(settings.data_dir / "acme" / "honestcam.db", "SELECT id FROM compliance_events") == [(body["id"],)]
        resp = client.put("/study/users/u1", json={"email": "u1@example.com"})
        assert resp.status_code == 503 and resp.json()["user_id"] == "u1"
        stats = client.get("/_edgehost/durable").json()
        assert stats["databases"]["acme"]["timeouts"] == 1 and stats["databases"]["global"]["timeouts"] == 1


def test_durable_off_answers_once_committed(kit_home):
    settings = kit_home.settings(EDGEHOST_DURABLE_PROPERTY_DBS="false")
    store.ensure_global(settings)
    store.create_property(settings, "acme")
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        assert client.post("/properties/acme/events", json={"kind": "door"}).status_code == 201
        assert client.put("/study/users/u1", json={}).status_code == 200
        assert client.get("/_edgehost/durable").json()["databases"] == {}


def test_durable_stats_are_served_to_this_machine_only(kit_home):
    settings = kit_home.settings()
    store.ensure_global(settings)
    with TestClient(create_app(settings), client=("203.0.113.9", 5000)) as client:
        assert client.get("/_edgehost/durable").status_code == 403
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        assert client.get("/_edgehost/durable", headers={"Cf-Connecting-Ip": "203.0.113.9"}).status_code == 403
        assert client.get("/_edgehost/durable").status_code == 200


def test_durable_figures_become_metrics_and_rows(kit_home):
    from prometheus_client import CollectorRegistry, generate_latest

    from edgehost.ops import durable_acks

    figures = {"databases": {"acme": {"acked": 7, "timeouts": 2, "p50_ms": 12.5, "p99_ms": 40.0, "last_error": ""}}}

    class _C:
        def collect(self):
            return durable_acks.families(figures)

    registry = CollectorRegistry()
    registry.register(_C())
    text = generate_latest(registry).decode()
    assert 'edgehost_durable_ack_total{db="acme"} 7.0' in text
    assert 'edgehost_durable_ack_timeouts_total{db="acme"} 2.0' in text
    assert 'edgehost_durable_ack_latency_seconds{db="acme",quantile="0.99"} 0.04' in text
    assert durable_acks.summary_rows(figures)[0]["p99_ms"] == 40.0
    assert durable_acks.fetch(kit_home.settings()) is None  # no portal: nothing, not an error
