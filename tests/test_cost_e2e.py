"""`edgehost cost` against a running `edgehost up`: its estimate matches what the S3 endpoint counted."""

from __future__ import annotations

import json
import time

import pytest

from edgehost.ops.cost import CLASS_OF

from procs import SHIPPED_TUNING, CountingProxy, Writer, edgehost, retune, start_supervisor

pytestmark = pytest.mark.e2e


def _operation(method: str, target: str) -> str:
    query = target.partition("?")[2]
    if method == "GET":
        return "LIST" if "list-type=2" in query else "GET"
    if method == "POST":
        return "DELETE_BATCH" if query.startswith("delete") else "MULTIPART"
    return method


def test_cost_counts_by_class_match_the_endpoints_within_20_percent(s3_home, moto_s3):
    proxy = CountingProxy(moto_s3.endpoint)
    s3_home.env["EDGEHOST_S3_ENDPOINT"] = proxy.endpoint
    for slug in ("quiet", "busy"):
        assert edgehost(s3_home, "property", "add", slug).returncode == 0
    up = start_supervisor(s3_home)
    writer = None
    try:
        writer = Writer(s3_home.settings().portal_url, "busy", pause=0.5).start()
        time.sleep(45)
        done = edgehost(s3_home, "cost", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        shown = edgehost(s3_home, "cost")
        # The supervisor's own estimate reaches its status page.
        import httpx

        page = httpx.get(f"http://127.0.0.1:{s3_home.settings().metrics_port}/status").text
        assert 'id="cost"' in page and "class A operations / month" in page and "after R2" in page
    finally:
        if writer:
            writer.stop()
        up.stop()
        proxy.close()
    start, end = report["window"]["start"], report["window"]["end"]
    counted = {"A": 0, "B": 0, "free": 0}
    for (method, target), at in zip(proxy.requests, proxy.times):
        if start <= at <= end:
            counted[CLASS_OF[_operation(method, target)]] += 1
    estimated = {cls: n * report["window"]["seconds"] for cls, n in report["requests_per_second"]["by_class"].items()}
    assert counted["A"] > 50, counted  # the writer's uploads and litestream's LISTs
    for cls in ("A", "B"):
        assert abs(estimated[cls] - counted[cls]) <= max(0.2 * counted[cls], 2), (cls, estimated, counted, report)
    assert report["short_window"] and "short window" in report["note"]
    assert report["storage"]["bytes"] > 0 and report["databases"] == 3
    assert report["bill"]["after_free_tier"] >= 0 and report["prices"]["class_a_per_million"] == 4.50
    assert shown.returncode == 0 and "bill this month" in shown.stderr and "class A" in shown.stderr


def test_a_metrics_port_another_program_holds_never_stops_replication(kit_home):
    import socket

    from edgehost.engine import layout

    from procs import sync_db

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        kit_home.env["EDGEHOST_LITESTREAM_METRICS_PORT"] = str(holder.getsockname()[1])
        assert edgehost(kit_home, "property", "add", "held").returncode == 0
        up = start_supervisor(kit_home)
        try:
            settings = kit_home.settings()
            synced = sync_db(settings, layout.property_db(settings, "held"))  # litestream replicates all the same
            assert synced["replicated_txid"] >= 1
            done = edgehost(kit_home, "cost")
        finally:
            up.stop()
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "another program holds the port" in lines[0] and "litestream_metrics_port" in lines[0]
    assert "cannot start metrics server" in (settings.log_dir / "litestream.log").read_text()


# The shipped levels' shape with a 2 s L1 and no retention check within the test, so that an idle
# database's compaction ticks (one LIST each while its newest L1 file spans several txids) pile up.
TICKING = {SHIPPED_TUNING: "levels:\n  - interval: 2s\n  - interval: 1h\nl0-retention: 10m\nl0-retention-check-interval: 1h"}


def test_cost_counts_the_lists_an_idle_database_makes_at_every_compaction_tick(s3_home, moto_s3):
    """A property written in a burst (each event its own sync), then idle: litestream lists its L0 at
    every L1 tick, since its newest L1 file spans the burst's txids. `edgehost cost` must model those
    LISTs, not only the start, the retention checks and the compactions."""
    retune(s3_home.path / "litestream.yml", TICKING)
    proxy = CountingProxy(moto_s3.endpoint)
    s3_home.env["EDGEHOST_S3_ENDPOINT"] = proxy.endpoint
    assert edgehost(s3_home, "property", "add", "burst").returncode == 0
    up = start_supervisor(s3_home)
    try:
        import httpx

        from edgehost.ops.cost import list_replica

        settings = s3_home.settings()
        url = settings.portal_url

        def newest_l1_spans() -> bool:
            l1 = [f for f in list_replica(settings).files("burst/honestcam.db") if f.level == 1]
            return bool(l1) and max(l1, key=lambda f: f.max_txid).min_txid < max(f.max_txid for f in l1)

        with httpx.Client(timeout=10) as client:
            assert client.get(f"{url}/healthz").status_code == 200
            time.sleep(3)  # litestream's first compactions of the new database are done
            for attempt in range(3):  # a tick falling inside the burst would split it: burst again
                while not 0.3 <= time.time() % 2 <= 0.4:  # just after an L1 tick (every 2 s, on the clock)
                    time.sleep(0.01)
                for i in range(4):  # durable: each answered once synced on its own, so four L0 files
                    assert client.post(f"{url}/properties/burst/events", json={"kind": "k", "payload": {"i": i}}
                                       ).status_code == 201
                time.sleep(3)  # the next tick merges them into one L1 file
                if newest_l1_spans():
                    break
            else:
                pytest.fail("three bursts were each split by a compaction tick")
        time.sleep(28)  # idle: ~14 ticks list L0
        done = edgehost(s3_home, "cost", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
    finally:
        up.stop()
        proxy.close()
    start, end = report["window"]["start"], report["window"]["end"]
    lists = sum(1 for (method, target), at in zip(proxy.requests, proxy.times)
                if start <= at <= end and _operation(method, target) == "LIST")
    modelled = report["requests_in_window"]["LIST"]
    assert abs(modelled - lists) <= max(0.2 * lists, 3), (modelled, lists, report["modelled"])
    assert report["modelled"]["idle_compaction_ticks"] >= 10, report["modelled"]  # most of the 28 s idle
