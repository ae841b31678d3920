"""How close `edgehost cost` comes to the requests the S3 endpoint really sees.

    .venv/bin/python bench/cost_accuracy.py [SECONDS] [IDLE] [BUSY]     (default 900 s, 20 idle, 2 busy)

Runs `edgehost up` with IDLE idle property databases and BUSY ones that a writer posts to (one event
every 2 s), replicating to a moto S3 server behind a counting proxy. At the end it asks
`edgehost cost --json` for its estimate and compares the estimated requests per second with what the
proxy counted over the same window (litestream's start to the moment of the estimate), per class and
in total. The results go to bench/results/cost_accuracy-<date>.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from procs import S3_KEYS, CountingProxy, Proc, Writer, free_port, wait_until  # noqa: E402


def classify(method: str, target: str) -> str:
    """The operation an S3 request line is, named as `edgehost cost` names them."""
    query = target.partition("?")[2]
    if method == "GET":
        return "LIST" if "list-type=2" in query else "GET"
    if method == "POST":
        if "delete" in query.split("&") or query.startswith("delete"):
            return "DELETE_BATCH"
        return "MULTIPART"
    return method  # PUT, HEAD, DELETE


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 900.0
    idle = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    busy = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    from moto.server import ThreadedMotoServer
    from edgehost.ops.cost import CLASS_OF  # the operation -> class table the estimate uses

    moto_port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    proxy = CountingProxy(f"http://127.0.0.1:{moto_port}")
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1",
                 aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket="cost-bench")
    home = Path(tempfile.mkdtemp(prefix="cost-"))
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    portal_port = free_port()
    env = {**os.environ, **S3_KEYS, "EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(portal_port),
           "EDGEHOST_METRICS_PORT": str(free_port()), "EDGEHOST_LITESTREAM_METRICS_PORT": str(free_port()),
           "EDGEHOST_REPLICA_URL": "s3://cost-bench/edgehost", "EDGEHOST_S3_ENDPOINT": proxy.endpoint,
           "EDGEHOST_S3_REGION": "us-east-1"}
    edgehost = [sys.executable, "-m", "edgehost"]
    subprocess.run([*edgehost, "property", "add", "p000"], env=env, check=True, capture_output=True)
    template = home / "data" / "p000" / "honestcam.db"
    for i in range(1, idle + busy):
        (home / "data" / f"p{i:03d}").mkdir()
        shutil.copy(template, home / "data" / f"p{i:03d}" / "honestcam.db")
    proxy.reset()
    up = Proc([*edgehost, "up"], env, home / "up.log")
    writers: list[Writer] = []
    try:
        url = f"http://127.0.0.1:{portal_port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 120, what="the portal")
        writers = [Writer(url, f"p{i:03d}", pause=2.0).start() for i in range(idle, idle + busy)]
        print(f"running {seconds:.0f} s: {idle} idle + {busy} busy databases", file=sys.stderr, flush=True)
        time.sleep(seconds)
        proc = subprocess.run([*edgehost, "cost", "--json"], env=env, capture_output=True, text=True, timeout=120)
        asked = time.time()
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        estimate = json.loads(proc.stdout)
    finally:
        for w in writers:
            w.stop()
        up.stop(120)
    start = estimate["window"]["start"]
    # The estimate's own listing of the root happened just before `asked`: leave it out as the
    # estimate does (it is the command's cost, not the machine's).
    counted: dict[str, int] = {}
    for (method, target), at in zip(list(proxy.requests), list(proxy.times)):
        if start <= at <= estimate["window"]["end"]:
            op = classify(method, target)
            counted[op] = counted.get(op, 0) + 1
    window = estimate["window"]["end"] - start
    rows = []
    est_ops = estimate["requests_per_second"]["by_operation"]
    by_class_counted = {"A": 0.0, "B": 0.0, "free": 0.0}
    for op, n in counted.items():
        by_class_counted[CLASS_OF.get(op, "A")] += n / window
    for cls in ("A", "B", "free"):
        est = estimate["requests_per_second"]["by_class"].get(cls, 0.0)
        got = by_class_counted[cls]
        rows.append((f"class {cls}", est, got))
    total_est = sum(estimate["requests_per_second"]["by_class"].values())
    total_got = sum(by_class_counted.values())
    rows.append(("total", total_est, total_got))
    for op in sorted(set(est_ops) | set(counted)):
        rows.append((op, est_ops.get(op, 0.0), counted.get(op, 0) / window))
    lines = [
        f"# edgehost cost vs the requests counted at the S3 endpoint ({date.today().isoformat()})",
        "",
        f"`python bench/cost_accuracy.py {seconds:.0f} {idle} {busy}`: `edgehost up` with {idle} idle and {busy} "
        f"busy property databases (+ the global one), a writer posting one event every 2 s to each busy one; "
        f"moto S3 behind a counting proxy. Window: litestream's start to the estimate, {window:.0f} s. "
        f"Estimate: {estimate['note'] or 'no note'}.",
        "",
        "| what | estimated req/s | counted req/s | ratio (est/counted) | estimated x 30 days | counted x 30 days |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    month = 30 * 86400
    for what, est, got in rows:
        ratio = f"{est / got:.2f}" if got else ("-" if not est else "inf")
        lines.append(f"| {what} | {est:.4f} | {got:.4f} | {ratio} | {est * month:,.0f} | {got * month:,.0f} |")
    lines += ["", "Both rates are over the same window (litestream's start included); `edgehost cost`'s own month "
              f"(steady rate x 30 days + one start): class A {estimate['requests_per_month']['by_class']['A']:,}, "
              f"class B {estimate['requests_per_month']['by_class']['B']:,}.",
              "", f"Bill estimated: ${estimate['bill']['before_free_tier']:.4f} before the free tier, "
              f"${estimate['bill']['after_free_tier']:.4f} after; storage {estimate['storage']['gb']:.6f} GB.",
              f"Writes acknowledged: {sum(len(w.acked) for w in writers)}.", ""]
    text = "\n".join(lines)
    out = REPO / "bench" / "results" / f"cost_accuracy-{date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    (home / "estimate.json").write_text(json.dumps(estimate, indent=2))
    (home / "requests.json").write_text(json.dumps([[at, m, t] for (m, t), at in zip(proxy.requests, proxy.times)]))
    print(f"home kept at {home} (up.log, estimate.json)", file=sys.stderr)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
