"""The warm standby (issue 16): follower lag under writes, the bucket requests of following idle tenants,
and `promote` against a cold `restore --all` of the same bucket.

    .venv/bin/python bench/standby.py                        # 20 busy for 60 s; 200 idle for 120 s
    .venv/bin/python bench/standby.py --busy 5 --seconds 20 --idle 20 --idle-seconds 30

Everything is real and on 127.0.0.1: moto's S3 app under uvicorn (bench/restore_all.py's), a primary
`edgehost up` and a follower `edgehost follow` (two homes, two machine ids), the real litestream.

  A  lag      `--busy` tenants, one writer each posting an event every 0.2 s to the primary's portal;
              a watcher reads the follower's databases every 50 ms. Lag of an event: when it became
              readable on the follower minus when the primary acknowledged it (so it includes the
              primary's own ~1 s sync: lag behind the primary, an upper bound of the lag behind the
              primary's replica).
  B  idle     `--idle` tenants, no writes; the follower's S3 requests through a counting proxy over
              `--idle-seconds`, per hour. Beside it, one `litestream restore -f` of one database
              straight from the bucket for the same time, its requests per hour x tenants: what a
              follower of per-database `restore -f` processes would cost.
  C  promote  the primary of B killed (-9, every process); `edgehost promote --no-wait` on the
              follower, timed to a portal that takes a write; then 10 s of events one after another
              on 10 tenants, each 201's time (litestream snapshots every restored database once after
              the promotion, and durable acknowledgements wait behind those uploads); then a cold
              `edgehost restore --all` of the same bucket on a third home.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
from procs import CountingProxy, power_cut  # noqa: E402
from restore_all import free_port, wait_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent
EDGEHOST = VENV_BIN / "edgehost"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Home:
    def __init__(self, root: Path, name: str, endpoint: str, bucket: str, machine: str):
        self.path = root / name
        self.path.mkdir(parents=True)
        shutil.copy(REPO / "litestream.yml", self.path / "litestream.yml")
        self.portal_port = free_port()
        self.env = {**os.environ, **CREDS, "EDGEHOST_HOME": str(self.path), "EDGEHOST_REPLICA_URL": f"s3://{bucket}/edgehost",
                    "EDGEHOST_S3_ENDPOINT": endpoint, "EDGEHOST_S3_REGION": "us-east-1",
                    "EDGEHOST_PORTAL_PORT": str(self.portal_port), "EDGEHOST_METRICS_PORT": str(free_port()),
                    "EDGEHOST_LITESTREAM_METRICS_PORT": str(free_port()), "EDGEHOST_MACHINE_ID": machine * 8,
                    "EDGEHOST_LEASE_RENEW_SECONDS": "5", "EDGEHOST_LEASE_TTL_SECONDS": "60"}
        self.env.pop("AWS_CA_BUNDLE", None)
        self.url = f"http://127.0.0.1:{self.portal_port}"
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.path / f"{args[0]}.log", "ab")
        proc = subprocess.Popen([str(EDGEHOST), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(EDGEHOST), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        proc = self.run("status", "--json", timeout=60)
        return json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}

    def wait(self, what: str, fn, timeout: float = 300, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = fn()
                if value:
                    return value
            except Exception:
                pass
            time.sleep(every)
        raise SystemExit(f"{self.path.name}: timed out waiting for {what}")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(90)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)


def primary_ready(home: Home) -> bool:
    st = home.status()
    return bool(st.get("services")) and all(s["state"] == "running" for s in st["services"])


def follower_caught_up(home: Home, count: int) -> bool:
    st = home.status()
    dbs = st.get("databases") or []
    return st.get("role") == "follower" and len(dbs) >= count and all(d["caught_up"] for d in dbs) and \
        bool(st.get("services")) and st["services"][0]["state"] == "running"


def make_tenants(home: Home, slugs: list[str], events: int = 1, kib: int = 0) -> None:
    """Properties made through the portal, each with `events` events and about `kib` KiB of older
    events written straight into its file (litestream replicates them like any write)."""
    filler = json.dumps({"note": "x" * 1000})
    with httpx.Client(timeout=30) as client:
        for slug in slugs:
            client.post(f"{home.url}/properties", json={"slug": slug}).raise_for_status()
            if kib:
                conn = sqlite3.connect(home.path / "data" / slug / "honestcam.db", timeout=30)
                conn.executemany("INSERT INTO compliance_events(occurred_at, kind, payload) VALUES (?, 'old', ?)",
                                 [("2026-01-01T00:00:00Z", filler)] * kib)
                conn.commit()
                conn.close()
            for i in range(events):
                client.post(f"{home.url}/properties/{slug}/events", json={"kind": "seed", "payload": {"i": i}})


def phase_lag(root: Path, endpoint: str, s3c, busy: int, seconds: float) -> dict:
    s3c.create_bucket(Bucket="bench-lag")
    a = Home(root, "lag-primary", endpoint, "bench-lag", "a")
    b = Home(root, "lag-follower", endpoint, "bench-lag", "b")
    try:
        a.start("up")
        a.wait("the primary", lambda: primary_ready(a))
        slugs = [f"busy{i:02d}" for i in range(busy)]
        make_tenants(a, slugs)
        b.start("follow", "--interval", "1s")
        b.wait("the follower to catch up", lambda: follower_caught_up(b, busy + 1), timeout=600)
        acked: dict[tuple[str, int], float] = {}
        seen: dict[tuple[str, int], float] = {}
        stop = threading.Event()

        def writer(slug: str) -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    r = client.post(f"{a.url}/properties/{slug}/events", json={"kind": "w"})
                    if r.status_code == 201:
                        acked[(slug, r.json()["id"])] = time.time()
                    time.sleep(0.2)

        def watcher() -> None:
            top = {slug: 0 for slug in slugs}
            data = b.path / "data"
            while not stop.is_set() or any(k not in seen for k in list(acked)):
                for slug in slugs:
                    try:
                        conn = sqlite3.connect(f"file:{data / slug / 'honestcam.db'}?mode=ro", uri=True)
                        got = conn.execute("SELECT max(id) FROM compliance_events").fetchone()[0] or 0
                        conn.close()
                    except sqlite3.Error:
                        continue
                    if got > top[slug]:
                        now = time.time()
                        for i in range(top[slug] + 1, got + 1):
                            seen.setdefault((slug, i), now)
                        top[slug] = got
                if stop.is_set() and time.time() - stopped_at[0] > 30:
                    return
                time.sleep(0.05)

        stopped_at = [0.0]
        threads = [threading.Thread(target=writer, args=(s,), daemon=True) for s in slugs]
        watch = threading.Thread(target=watcher, daemon=True)
        watch.start()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        stopped_at[0] = time.time()
        for t in threads:
            t.join()
        watch.join(60)
        lags = [seen[k] - at for k, at in acked.items() if k in seen]
        return {"busy_tenants": busy, "seconds": seconds, "events": len(acked), "applied": len(lags),
                "missing": len(acked) - len(lags), "lag_p50": round(pct(lags, 50), 3),
                "lag_p95": round(pct(lags, 95), 3), "lag_p99": round(pct(lags, 99), 3),
                "lag_max": round(max(lags), 3) if lags else None,
                "lag_mean": round(statistics.mean(lags), 3) if lags else None}
    finally:
        b.stop_all()
        a.stop_all()


def restore_f_requests(root: Path, endpoint: str, home: Home, seconds: float) -> dict:
    """One `litestream restore -f` of one tenant straight from the bucket: its requests per hour."""
    proxy = CountingProxy(endpoint)
    env = {**home.env, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    url = f"s3://bench-idle/edgehost/idle000/honestcam.db?endpoint={proxy.endpoint}&region=us-east-1&forcePathStyle=true"
    out = root / "restore-f.db"
    proc = subprocess.Popen([str(VENV_BIN / "litestream"), "restore", "-f", "-o", str(out), url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(5)  # the first restore
    proxy.reset()
    time.sleep(seconds)
    n = len(proxy.requests)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    proxy.close()
    return {"requests": n, "seconds": seconds, "per_hour": round(n * 3600 / seconds)}


def acks_after(home: Home, slugs: list[str], seconds: float) -> dict:
    """Events posted one after another for `seconds`, round robin over `slugs`: how long each 201 took."""
    took, refused, end = [], 0, time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        i = 0
        while time.monotonic() < end:
            t = time.monotonic()
            code = client.post(f"{home.url}/properties/{slugs[i % len(slugs)]}/events", json={"kind": "after"}).status_code
            if code == 201:
                took.append(time.monotonic() - t)
            else:
                refused += 1
            i += 1
    return {"seconds": seconds, "acked": len(took), "refused": refused,
            "p50_ms": round(pct(took, 50) * 1000), "max_ms": round(max(took, default=0) * 1000)}


def phase_idle_and_promote(root: Path, endpoint: str, s3c, idle: int, seconds: float, kib: int) -> dict:
    s3c.create_bucket(Bucket="bench-idle")
    proxy = CountingProxy(endpoint)
    a = Home(root, "idle-primary", endpoint, "bench-idle", "c")
    b = Home(root, "idle-follower", proxy.endpoint, "bench-idle", "d")
    out: dict = {"idle_tenants": idle, "kib_per_tenant": kib}
    try:
        up = a.start("up")
        a.wait("the primary", lambda: primary_ready(a))
        t = time.monotonic()
        make_tenants(a, [f"idle{i:03d}" for i in range(idle)], events=5, kib=kib)
        out["tenants_made_seconds"] = round(time.monotonic() - t, 1)
        b.start("follow", "--interval", "1s")
        t = time.monotonic()
        b.wait("the follower to catch up", lambda: follower_caught_up(b, idle + 1), timeout=900, every=2)
        out["first_catch_up_seconds"] = round(time.monotonic() - t, 1)
        time.sleep(10)
        proxy.reset()
        time.sleep(seconds)
        reqs = list(proxy.requests)
        lists = sum(1 for m, target in reqs if m == "GET" and "list-type=2" in target)
        out["follower"] = {"seconds": seconds, "requests": len(reqs), "lists": lists,
                           "requests_per_hour": round(len(reqs) * 3600 / seconds),
                           "lists_per_hour": round(lists * 3600 / seconds)}
        one = restore_f_requests(root, endpoint, a, min(seconds, 60))
        out["restore_f_one_db"] = one
        out["restore_f_all_per_hour_computed"] = one["per_hour"] * (idle + 1)

        # C: the primary dies; promote the follower. The client that writes afterwards is built first:
        # building one loads the CA bundle (25-65 ms of CPU), which is the bench's cost, not the kit's.
        client = httpx.Client(timeout=10)
        power_cut(a.status().get("services", []), up)
        killed = time.monotonic()
        promoted = b.run("promote", "--no-wait", "--json", timeout=900)
        answered = time.monotonic()
        report = json.loads(promoted.stdout) if promoted.stdout.strip().startswith("{") else {"error": promoted.stderr}
        with client:
            b.wait("a write on the new primary",
                   lambda: client.post(f"{b.url}/properties/idle000/events", json={"kind": "after"}).status_code == 201,
                   timeout=120, every=0.05)
        out["promote"] = {"dead_to_writable_seconds": round(time.monotonic() - killed, 2),
                          "command_seconds": round(answered - killed, 2),  # `edgehost promote` run to its exit
                          "first_write_seconds": round(time.monotonic() - answered, 2), "report": report}
        # Then litestream snapshots every database once (a restored database continues the replica's
        # history with a full snapshot), and durable acknowledgements wait behind those uploads.
        out["acks_after_promote"] = acks_after(b, [f"idle{i:03d}" for i in range(min(idle, 10))], 10.0)

        c = Home(root, "cold", endpoint, "bench-idle", "e")
        t = time.monotonic()
        cold = c.run("restore", "--all", "--to", str(root / "cold-restore"), "--json", timeout=1800)
        out["cold_restore_all"] = {"seconds": round(time.monotonic() - t, 2), "exit": cold.returncode}
        out["ratio_cold_over_promote"] = round(out["cold_restore_all"]["seconds"] /
                                               out["promote"]["dead_to_writable_seconds"], 1)
        return out
    finally:
        b.stop_all()
        a.stop_all()
        proxy.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--busy", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=120)
    ap.add_argument("--kib", type=int, default=1024, help="KiB of events in each idle tenant (the cold restore's size)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"standby-{date.today()}.json")
    args = ap.parse_args()
    import boto3

    root = Path(tempfile.mkdtemp(prefix="standby-"))
    port = free_port()
    moto = subprocess.Popen([sys.executable, str(REPO / "bench" / "restore_all.py"), "--_moto", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        s3c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                           aws_secret_access_key="bench")
        result = {"lag": phase_lag(root, endpoint, s3c, args.busy, args.seconds)} if args.busy else {}
        print(json.dumps(result, indent=1), flush=True)
        if args.idle:
            result["idle_and_promote"] = phase_idle_and_promote(root, endpoint, s3c, args.idle, args.idle_seconds, args.kib)
        print(json.dumps(result, indent=1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written {args.out}; homes under {root}")
    finally:
        os.killpg(moto.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
