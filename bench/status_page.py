"""What one status page costs the supervisor: building the model from N databases' status and rendering
one page of it (100 rows), timed over many runs, plus the page's size in bytes.

    .venv/bin/python bench/status_page.py [N ...]      (default 1000 databases; e.g. 100 1000 10000)

The model has 20 drills (charted) and 20 alerts, a few databases in error or behind, as a busy
machine's would. Each page load in the supervisor is exactly this: build_model + render (the drill
history is cached for 30 s, so reading it is not part of a load).
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

from edgehost.ops.status import DatabaseStatus
from edgehost.supervisor import statuspage

RUNS = 50


def databases(n: int, now: float) -> list[DatabaseStatus]:
    last = datetime.fromtimestamp(now - 2, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = []
    for i in range(n):
        txid = 0x1000 + i
        st = DatabaseStatus(f"property-{i:05d}", f"/data/property-{i:05d}/honestcam.db", "replicating", txid, txid,
                            last, 0.0, 4096 * (i % 50), "", True)
        if i % 97 == 0:
            st.replicated_txid, st.lag_seconds, st.caught_up = txid - 1, float(i % 300), False
        if i % 331 == 0:
            st.state, st.error = "error", "write ltx file: operation error S3: PutObject, 503 SlowDown"
        out.append(st)
    return out


def extras(now: float) -> tuple[list[dict], list[dict]]:
    start = datetime.fromtimestamp(now, timezone.utc)
    drills = [{"started_at": (start - timedelta(days=7 * w)).isoformat(), "status": "pass", "scenario": "all",
               "rpo_seconds": 1.0 + w % 3, "rto_seconds": 40.0 + w, "databases": 1000, "failed": 0} for w in range(20)]
    alerts = [{"time": (start - timedelta(minutes=5 * k)).isoformat(), "kind": "alert" if k % 2 else "recovery",
               "event": "lag", "severity": "critical", "database": f"property-{k:05d}",
               "summary": "replica is 95s behind"} for k in range(20)]
    return drills, alerts


def measure(n: int) -> dict:
    now = time.time()
    dbs = databases(n, now)
    drills, alerts = extras(now)
    described = {"phase": "running", "uptime_seconds": 86400.0, "services": [
        {"name": name, "state": "running", "pid": 100 + k, "restarts": 0, "uptime_seconds": 86000.0,
         "last_exit": None, "reason": ""} for k, name in enumerate(("litestream", "portal", "cloudflared"))],
        "lease": {"held": True, "fenced": False}, "lag_alert_seconds": 60.0, "alerts": []}
    cost = {"month_usd": 0.36, "class_a_per_month": 412000, "class_b_per_month": 96000, "storage_gb": 3.1}
    times = []
    page = ""
    for run in range(RUNS):
        t0 = time.perf_counter()
        model = statuspage.build_model(described, dbs, drills, alerts, cost, "bench", now)
        page = statuspage.render(model, page=1 + run % 3)
        times.append(time.perf_counter() - t0)
    return {"databases": n, "median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
            "bytes": len(page.encode())}


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1000]
    print(f"{'databases':>10} {'median ms':>10} {'max ms':>8} {'page bytes':>11}   ({RUNS} runs each: build_model + render)")
    for n in sizes:
        r = measure(n)
        print(f"{r['databases']:>10} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f} {r['bytes']:>11,}")


if __name__ == "__main__":
    main(sys.argv[1:])
