"""Durable acknowledgements: throughput and acknowledgement latency, durable vs asynchronous.

    .venv/bin/python bench/durable_throughput.py                 # loopback and +30 ms RTT, 8 clients
    .venv/bin/python bench/durable_throughput.py --seconds 5 --delay-ms 0

All on 127.0.0.1: moto S3 in its own process under uvicorn, and for the delayed pass the delaying TCP
proxy, both from bench/restore_all.py (see its docstring). Per network and mode a fresh kit home and
bucket, `edgehost up` (the real litestream 0.5.17, the repo's litestream.yml), one property made
replicating first, then CLIENTS clients posting events to it back to back for SECONDS, each in its
own process (as separate machines are; `--client-threads`: threads of this one); every answer's
latency is timed on the client. `async` is durable mode off (201 once committed locally); `durable`
answers 201 once Litestream reports the event in the bucket. The endpoint's upload round trip is
the median of 30 sequential 4 KiB PUTs over one kept connection (boto3), on the same path.
Results go to bench/results/durable-<date>.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
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
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench"), str(REPO / "tests"), str(REPO / "tests" / "chaos")]

import restore_all as ra  # noqa: E402
from machine_loss import new_home  # noqa: E402
from procs import start_supervisor, sync_db  # noqa: E402

from edgehost.engine import layout  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] if ordered else float("nan")


def upload_rtt(endpoint: str, bucket: str) -> float:
    client = ra.s3(endpoint, pool=1)
    body = b"x" * 4096
    client.put_object(Bucket=bucket, Key="rtt/warm", Body=body)
    took = []
    for i in range(30):
        t = time.perf_counter()
        client.put_object(Bucket=bucket, Key=f"rtt/{i}", Body=body)
        took.append(time.perf_counter() - t)
    return statistics.median(took)


def post_events(url: str, deadline: float) -> tuple[list[float], list[float], int]:
    """One client: post events back to back until `deadline` (time.monotonic, the same clock in every
    process); each 201's latency and when it came back, and how many answers were not 201."""
    latencies: list[float] = []
    stamps: list[float] = []
    failed = 0
    with httpx.Client(timeout=30) as c:
        i = 0
        while time.monotonic() < deadline:
            t = time.perf_counter()
            resp = c.post(url, json={"kind": "bench", "payload": {"i": i}})
            if resp.status_code == 201:
                latencies.append(time.perf_counter() - t)
                stamps.append(time.monotonic())
            else:
                failed += 1
            i += 1
    return latencies, stamps, failed


def _client_process(url: str, ready, go, deadline, results) -> None:
    try:
        with httpx.Client(timeout=30) as c:  # the imports and first connection, before the clock starts
            c.get(url.rsplit("/properties/", 1)[0] + "/healthz")
        ready.release()
        go.wait()
        results.put(post_events(url, deadline.value))
    except Exception as exc:  # said to the parent, which would otherwise wait for a result never coming
        ready.release()
        results.put(f"{type(exc).__name__}: {exc}")


def drive(url: str, clients: int, seconds: float, threads: bool) -> tuple[list[float], list[float], int, float]:
    """CLIENTS clients posting to `url` for SECONDS: each its own process (as separate machines are),
    or with `threads` all threads of this one (the GIL then serializes their request handling: the
    harness before 2026-12-06). Returns latencies, their stamps, non-201 count and the start time."""
    latencies: list[float] = []
    stamps: list[float] = []
    failed = 0
    if threads:
        start = threading.Event()
        deadline = [0.0]
        lock = threading.Lock()

        def client() -> None:
            nonlocal failed
            start.wait()
            lat, st, bad = post_events(url, deadline[0])
            with lock:
                latencies.extend(lat)
                stamps.extend(st)
                failed += bad

        workers = [threading.Thread(target=client) for _ in range(clients)]
        for t in workers:
            t.start()
        began = time.monotonic()
        deadline[0] = began + seconds
        start.set()
        for t in workers:
            t.join()
        return latencies, stamps, failed, began
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    deadline = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_client_process, args=(url, ready, go, deadline, results), daemon=True)
             for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise SystemExit("error: a client process did not start within 60 s")
    began = time.monotonic()
    deadline.value = began + seconds
    go.set()
    for _ in procs:
        got = results.get(timeout=seconds + 60)
        if isinstance(got, str):
            raise SystemExit(f"error: a client process failed: {got}")
        lat, st, bad = got
        latencies.extend(lat)
        stamps.extend(st)
        failed += bad
    for p in procs:
        p.join(10)
    return latencies, stamps, failed, began


def run(work: Path, endpoint: str, durable: bool, clients: int, seconds: float, threads: bool = False) -> dict:
    bucket = f"bench-{'d' if durable else 'a'}-{int(time.time() * 1000) % 10**9}"
    ra.s3(endpoint).create_bucket(Bucket=bucket)
    home = new_home(work, bucket, endpoint, bucket, EDGEHOST_DURABLE_PROPERTY_DBS="true" if durable else "false",
                    **{k: v for k, v in ra.CREDS.items()})
    home.env["PYTHONPATH"] = str(REPO / "src")
    sup = start_supervisor(home)
    try:
        settings = home.settings()
        url = settings.portal_url
        httpx.post(f"{url}/properties", json={"slug": "acme"}, timeout=10).raise_for_status()
        sync_db(settings, layout.property_db(settings, "acme"))
        latencies, stamps, failed, began = drive(f"{url}/properties/acme/events", clients, seconds, threads)
        stats = httpx.get(f"{url}/_edgehost/durable", timeout=5).json()["databases"].get("acme", {})
        windows = []  # (end of window s, events/s, p50 ms) per tenth of the run: does it hold up?
        step = seconds / 10
        for i in range(10):
            lo, hi = began + i * step, began + (i + 1) * step
            lat = [lt for lt, st in zip(latencies, stamps) if lo <= st < hi]
            windows.append((round((i + 1) * step), round(len(lat) / step), round(pct(lat, 0.5) * 1000, 1) if lat else None))
        local_l0 = len(list((layout.property_db(settings, "acme").path.parent / ".honestcam.db-litestream" / "ltx" / "0").glob("*.ltx")))
        return {"durable": durable, "events": len(latencies), "rate": len(latencies) / seconds, "failed": failed,
                "p50": pct(latencies, 0.50), "p99": pct(latencies, 0.99), "syncs": stats.get("syncs", 0), "sync_p50": stats.get("sync_p50_ms"), "sync_p99": stats.get("sync_p99_ms"), "failed_syncs": stats.get("failed_syncs"), "last_error": stats.get("last_error"),
                "rtt": upload_rtt(endpoint, bucket), "windows": windows, "local_l0": local_l0}
    finally:
        sup.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--delay-ms", type=float, default=30.0, help="the emulated RTT of the delayed pass (0: none)")
    ap.add_argument("--durable-only", action="store_true",
                    help="only the durable mode, at loopback: with a long --seconds, shows whether throughput holds up")
    ap.add_argument("--client-threads", action="store_true",
                    help="the clients as threads of this process, not processes (the harness before 2026-12-06)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / f"durable-{date.today()}.md"))
    args = ap.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.delay_ms < 0:
        raise SystemExit("error: --clients >= 1, --seconds > 0 and --delay-ms >= 0")

    work = Path(tempfile.mkdtemp(prefix="durable-bench-", dir="/tmp"))
    procs = []
    try:
        moto_port = ra.free_port()
        procs.append(subprocess.Popen([sys.executable, ra.__file__, "--_moto", str(moto_port)], env=ra.base_env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ra.wait_port(moto_port)
        networks = [("loopback", f"http://127.0.0.1:{moto_port}")]
        if args.delay_ms > 0:
            proxy_port = ra.free_port()
            procs.append(subprocess.Popen([sys.executable, ra.__file__, "--_proxy", str(proxy_port), str(moto_port),
                                           str(args.delay_ms)], env=ra.base_env(), stderr=subprocess.DEVNULL))
            ra.wait_port(proxy_port)
            networks.append((f"+{args.delay_ms:g} ms RTT", f"http://127.0.0.1:{proxy_port}"))
        lines = [f"# Durable acknowledgements: throughput and latency ({date.today()})", "",
                 f"`bench/durable_throughput.py --clients {args.clients} --seconds {args.seconds:g} "
                 f"--delay-ms {args.delay_ms:g}{' --client-threads' if args.client_threads else ''}`: {args.clients} clients "
                 f"({'threads of one process' if args.client_threads else 'each its own process'}) posting events back to back to one property; "
                 "moto under uvicorn on loopback, the delay by restore_all.py's proxy; the real litestream 0.5.17.", "",
                 "| network | mode | events/s | ratio to async | ack p50 ms | ack p99 ms | syncs | upload RTT ms | "
                 "p99 bound (2 x RTT + 50) ms | p99 within | non-201 |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        if args.durable_only:
            r = run(work, networks[0][1], True, args.clients, args.seconds, args.client_threads)
            print(f"durable, {args.seconds:g} s: {r['rate']:.0f} events/s overall, p50 {r['p50']*1000:.1f} ms, p99 {r['p99']*1000:.1f} ms, "
                  f"{r['syncs']} syncs; {r['local_l0']} L0 files kept beside the database at the end")
            print("| seconds into the run | events/s | ack p50 ms |")
            print("| --- | --- | --- |")
            for end, rate, p50 in r["windows"]:
                print(f"| {end} | {rate} | {p50} |")
            return
        for name, endpoint in networks:
            results = {}
            for durable in (False, True):
                r = results[durable] = run(work, endpoint, durable, args.clients, args.seconds, args.client_threads)
                print(f"{name} {'durable' if durable else 'async'}: {r['rate']:.0f} events/s, p50 {r['p50']*1000:.1f} ms, "
                      f"p99 {r['p99']*1000:.1f} ms, {r['syncs']} syncs (p50 {r['sync_p50']} ms, p99 {r['sync_p99']} ms), upload RTT {r['rtt']*1000:.1f} ms, "
                      f"{r['failed']} non-201, failed syncs {r['failed_syncs']} {r['last_error']}", file=sys.stderr, flush=True)
            for durable in (False, True):
                r = results[durable]
                bound = 2 * r["rtt"] + 0.050
                lines.append(
                    f"| {name} | {'durable' if durable else 'async'} | {r['rate']:.0f} | "
                    f"{r['rate'] / results[False]['rate']:.0%} | {r['p50']*1000:.1f} | {r['p99']*1000:.1f} | "
                    f"{r['syncs'] if durable else '-'} | {r['rtt']*1000:.1f} | {bound*1000:.0f} | "
                    f"{'yes' if r['p99'] <= bound else 'NO'} | {r['failed']} |")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
