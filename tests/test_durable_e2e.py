"""Durable acknowledgements on real parts: `edgehost up` with the real litestream, moto S3 over HTTP."""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgehost.engine import layout, litestream

from procs import CountingProxy, plain_restore, rows, start_supervisor, wait_until
from machine_loss import machine_loss_round

sys.path.insert(0, str(Path(__file__).resolve().parent / "chaos"))
from chaos_kit import SwitchableProxy  # noqa: E402

pytestmark = pytest.mark.e2e


def _event_ids(db: Path) -> list[int]:
    return [r[0] for r in rows(db, "SELECT id FROM compliance_events ORDER BY id")]


def test_a_201_means_in_the_bucket_and_an_outage_is_503_until_the_endpoint_returns(s3_home, tmp_path):
    proxy = SwitchableProxy(s3_home.env["EDGEHOST_S3_ENDPOINT"])
    s3_home.env.update({"EDGEHOST_S3_ENDPOINT": proxy.endpoint, "EDGEHOST_DURABLE_TIMEOUT_SECONDS": "3"})
    settings = s3_home.settings()
    sup = start_supervisor(s3_home)
    try:
        url = settings.portal_url
        assert httpx.post(f"{url}/properties", json={"slug": "acme"}).status_code == 201
        replica = litestream.replication(settings).restore_url(layout.property_db(settings, "acme"))
        for i in range(4):
            resp = httpx.post(f"{url}/properties/acme/events", json={"kind": "door", "payload": {"i": i}}, timeout=10)
            assert resp.status_code == 201, resp.text
            # Right after the 201, with nothing in between: the bucket already holds it.
            out = tmp_path / f"r{i}.db"
            proc = plain_restore(replica, out, s3_home.environ())
            assert proc.returncode == 0, proc.stderr
            assert resp.json()["id"] in _event_ids(out)

        proxy.set_mode("refuse")
        began = time.monotonic()
        resp = httpx.post(f"{url}/properties/acme/events", json={"kind": "door"}, timeout=10)
        took = time.monotonic() - began
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert body["stored_locally"] is True and "not yet replicated off it" in body["error"], body
        assert resp.headers["Retry-After"] and 2.5 < took < 4.5, took
        assert body["id"] in _event_ids(settings.data_dir / "acme" / "honestcam.db")  # stored here, as it says
        stats = httpx.get(f"{url}/_edgehost/durable").json()["databases"]["acme"]
        assert stats["timeouts"] >= 1 and stats["acked"] == 4 and stats["p99_ms"] > 0

        proxy.set_mode("up")  # the endpoint returns: durable writes recover on their own
        def acked() -> bool:
            return httpx.post(f"{url}/properties/acme/events", json={"kind": "door"}, timeout=10).status_code == 201
        wait_until(acked, 60, interval=0.5, what="a durable write to be acknowledged again")
        out = tmp_path / "after.db"
        assert plain_restore(replica, out, s3_home.environ()).returncode == 0
        assert body["id"] in _event_ids(out)  # the event answered 503 went off the machine too

        # The figures reach `status --json`, the metrics and the status page.
        import json
        import subprocess

        from procs import edgehost_argv

        shown = subprocess.run(edgehost_argv("status", "--json"), env=s3_home.environ(), capture_output=True, text=True)
        row = next(r for r in json.loads(shown.stdout)["durable_acks"] if r["db"] == "acme")
        assert row["acked"] >= 5 and row["timeouts"] >= 1 and row["p99_ms"] > 0
        metrics = f"http://127.0.0.1:{settings.metrics_port}"
        wait_until(lambda: 'edgehost_durable_ack_timeouts_total{db="acme"}' in httpx.get(f"{metrics}/metrics").text,
                   30, interval=0.5, what="durable-ack metrics")
        assert 'id="durable-list"' in httpx.get(f"{metrics}/status").text
    finally:
        sup.stop()
        proxy.close()


def test_group_commit_one_sync_serves_many_concurrent_writes(s3_home):
    """Writers just answered ride the next sync together, and a lone writer never waits the linger.

    The linger bound is set far above any client's turnaround (the default 8 ms is not, on a loaded
    machine: the writers then split and the sync count depends on the machine's load), and far above
    a sync, so each half fails on a coordinator without the linger's rule: without lingering the
    writers split into groups that take turns; with a fixed pause a lone writer waits it every time."""
    linger = 0.5
    s3_home.env["EDGEHOST_DURABLE_BATCH_MS"] = str(int(linger * 1000))
    counting = CountingProxy(s3_home.env["EDGEHOST_S3_ENDPOINT"])
    s3_home.env["EDGEHOST_S3_ENDPOINT"] = counting.endpoint
    settings = s3_home.settings()
    sup = start_supervisor(s3_home)
    try:
        url = settings.portal_url
        assert httpx.post(f"{url}/properties", json={"slug": "acme"}).status_code == 201
        assert httpx.post(f"{url}/properties/acme/events", json={"kind": "first"}, timeout=15).status_code == 201
        counting.reset()
        before = httpx.get(f"{url}/_edgehost/durable").json()["databases"]["acme"]
        codes: list[int] = []

        def client() -> None:
            with httpx.Client(timeout=15) as c:
                for i in range(25):
                    codes.append(c.post(f"{url}/properties/acme/events", json={"kind": "k", "payload": {"i": i}}).status_code)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes.count(201) == 200, codes
        acme = httpx.get(f"{url}/_edgehost/durable").json()["databases"]["acme"]
        # A sync answered before the replica reached its txid (another sync in flight wrote a newer
        # LTX file) releases nobody: its batch rides the next one. Count the syncs that released one.
        retried = acme["failed_syncs"] - before["failed_syncs"]
        syncs = acme["syncs"] - before["syncs"] - retried
        ltx_puts = sum(1 for m, target in counting.requests if m == "PUT" and "/acme/" in target and ".ltx" in target)
        print(f"200 durable events from 8 clients: {syncs} syncs released a batch ({retried} retried), "
              f"{ltx_puts} LTX uploads")
        # One sync per event would be 200; 8 clients allow at most 8 events a batch (25 syncs). The
        # coordinator lingers for the writers it has just answered, so they stay in one batch. Without
        # the linger they split into groups that take turns: 50-56 syncs and 46-52 uploads on an idle
        # machine, and 44 beside other e2e tests with the default 8 ms bound.
        assert syncs <= 40 and ltx_puts <= 45, (syncs, ltx_puts)

        # One writer alone: each sync had one writer in hand, so the next write does not linger.
        took = []
        with httpx.Client(timeout=15) as c:
            for i in range(9):
                t = time.monotonic()
                assert c.post(f"{url}/properties/acme/events", json={"kind": "alone", "payload": {"i": i}}).status_code == 201
                took.append(time.monotonic() - t)
        print(f"a lone writer's acknowledgements: {', '.join(f'{x * 1000:.0f}' for x in took)} ms")
        # The first may linger once for the 8 writers of before; the rest are one sync each.
        assert sorted(took[1:])[len(took[1:]) // 2] < linger / 2, took
    finally:
        sup.stop()
        counting.close()


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "async"])
def test_machine_loss_loses_no_acknowledged_event_with_durable_acks(moto_s3, tmp_path_factory, durable):
    rng = random.Random(f"machine loss {durable}")
    # Short homes: unix socket paths must stay under ~104 bytes, and xdist lengthens tmp_path.
    results = [machine_loss_round(tmp_path_factory.mktemp("ml", numbered=True), moto_s3.endpoint, moto_s3.new_bucket(), durable, rng)
               for i in range(3 if durable else 1)]
    print(f"machine loss, durable={durable}: " + ", ".join(f"{r.lost}/{r.acked} acked lost" for r in results))
    assert all(r.acked > 0 for r in results), results
    if durable:
        assert all(r.lost == 0 for r in results), results
    else:
        # The asynchronous window is real: the same method finds what a machine loss takes.
        assert sum(r.lost for r in results) > 0, results
