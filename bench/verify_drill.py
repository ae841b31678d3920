"""verify and drill figures on N tenants: verify-all against restore-all time (same run), the longest
writer wait while verify pins its snapshots (a writer runs throughout), and the drill's RTO. The same
writer runs during restore --all, so both commands are timed under the same load.

Runs `edgehost up` against a moto S3 server on loopback with the real litestream binary.

    .venv/bin/python bench/verify_drill.py --tenants 20 200
    VERIFY_PARALLEL=32 .venv/bin/python bench/verify_drill.py --tenants 200     # verify --parallel 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))
from procs import free_port  # noqa: E402


def edgehost(env, *args, timeout=3600):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgehost", *args], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def run(n: int, endpoint: str) -> dict:
    bucket = f"bench-{n}-{int(time.time())}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket=bucket)
    home = Path(tempfile.mkdtemp(prefix="vd-"))
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    port = free_port()
    env = {**os.environ, "EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(port), "EDGEHOST_METRICS_PORT": "0",
           "EDGEHOST_REPLICA_URL": f"s3://{bucket}/edgehost", "EDGEHOST_S3_ENDPOINT": endpoint,
           "EDGEHOST_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    up = subprocess.Popen([sys.executable, "-m", "edgehost", "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("edgehost up did not become healthy")
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(n):
                c.post("/properties", json={"slug": f"p{i:03d}"}).raise_for_status()
                for j in range(20):
                    c.post(f"/properties/p{i:03d}/events", json={"kind": "k", "payload": {"j": j, "pad": "x" * 200}})
            c.put("/study/users/u1", json={"email": "u@x"})
        time.sleep(5)
        acked = []

        def with_writer(*args):
            """Run an edgehost command while a writer posts events to p000 back to back: verify and
            restore are measured under the same load, and the writer's longest wait is verify's pause."""
            stop = threading.Event()

            def writer():
                with httpx.Client(base_url=url, timeout=30) as c:
                    while not stop.is_set():
                        if c.post("/properties/p000/events", json={"kind": "w"}).status_code == 201:
                            acked.append(1)

            t = threading.Thread(target=writer, daemon=True)
            t.start()
            try:
                return edgehost(env, *args)
            finally:
                stop.set()
                t.join()

        verify, verify_s = with_writer("verify", "--all", "--json",
                                       *(["--parallel", os.environ["VERIFY_PARALLEL"]] if "VERIFY_PARALLEL" in os.environ else []))
        writes_verify = len(acked)
        vr = json.loads(verify.stdout)
        if not vr["ok"]:
            bad = [(r["label"], [c for c in r["checks"] if not c["ok"]]) for r in vr["results"] if not r["ok"]]
            print("verify failed:", json.dumps(bad)[:2000], file=sys.stderr)
        restore, restore_s = with_writer("restore", "--all", "--json")
        rr = json.loads(restore.stdout)
        drill, drill_s = edgehost(env, "drill", "--json")
        dr = json.loads(drill.stdout)
        return {
            "tenants": n, "verify_ok": vr["ok"], "verify_s": round(verify_s, 2), "restore_ok": rr["ok"],
            "restore_s": round(restore_s, 2), "ratio": round(verify_s / restore_s, 2),
            "max_writer_wait_ms": max(r["writer_wait_ms"] for r in vr["results"]),
            "writes_during_verify": writes_verify, "writes_during_restore": len(acked) - writes_verify,
            "durable_property_dbs": os.environ.get("EDGEHOST_DURABLE_PROPERTY_DBS", "true"), "drill": dr["status"], "drill_rto_s": dr["rto_seconds"],
            "drill_restore_s": dr["restore_seconds"], "drill_total_s": round(drill_s, 2),
        }
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(120)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, nargs="+", default=[20])
    args = ap.parse_args()
    moto_port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        for n in args.tenants:
            print(json.dumps(run(n, f"http://127.0.0.1:{moto_port}")), flush=True)
    finally:
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
