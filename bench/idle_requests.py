"""Requests an idle database costs at the bucket per hour: the tuned litestream.yml against
Litestream's defaults. Runs the real litestream binary against a moto S3 server on loopback and
counts every request the server sees.

    .venv/bin/python bench/idle_requests.py --dbs 5 --minutes 3
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from edgehost.engine.litestream import find_binary  # noqa: E402


class Counter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def emit(self, record):
        m = re.search(r'"(GET|PUT|POST|DELETE|HEAD) ([^ ]+)', record.getMessage())
        if m:
            kind = "LIST" if m.group(1) == "GET" and "list-type" in m.group(2) else m.group(1)
            self.counts[kind] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_config(tuned: dict) -> dict:
    """The same databases and replica with Litestream's own defaults for everything else."""
    return {"endpoint": tuned["endpoint"], "region": tuned["region"], "force-path-style": tuned["force-path-style"],
            "dbs": tuned["dbs"]}


def run(label: str, config: dict, dbs: int, minutes: float, work: Path) -> dict:
    port = free_port()
    counter = Counter()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                     aws_secret_access_key="s").create_bucket(Bucket="bench")
        data = work / label / "data"
        for i in range(dbs):
            (data / f"p{i}").mkdir(parents=True)
            conn = sqlite3.connect(data / f"p{i}" / "honestcam.db")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE t(x)")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.commit()
            conn.close()
        cfg = work / label / "litestream.yml"
        text = yaml.safe_dump(config)
        env = {**os.environ, "EDGEHOST_DATA_DIR": str(data), "EDGEHOST_REPLICA_URL": "s3://bench/edgehost",
               "EDGEHOST_S3_ENDPOINT": endpoint, "EDGEHOST_S3_REGION": "us-east-1",
               "EDGEHOST_S3_FORCE_PATH_STYLE": "true", "EDGEHOST_GLOBAL_DB_NAME": "none.db",
               "EDGEHOST_PROPERTY_DB_NAME": "honestcam.db", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
               "EDGEHOST_LITESTREAM_SOCKET": str(work / label / "ls.sock")}
        env.pop("AWS_CA_BUNDLE", None)
        cfg.write_text(text)
        proc = subprocess.Popen([str(find_binary()), "replicate", "-config", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(20)  # let the first snapshots and compactions land; count the idle state after
        counter.counts.clear()
        time.sleep(minutes * 60)
        counts = dict(counter.counts)
        proc.terminate()
        proc.wait(60)
    finally:
        server.stop()
        logging.getLogger("werkzeug").removeHandler(counter)
    total = sum(counts.values())
    per_db_hour = total / dbs * (60 / minutes)
    return {"config": label, "dbs": dbs, "minutes": minutes, "requests": counts, "per_db_per_hour": round(per_db_hour, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dbs", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=3.0)
    args = ap.parse_args()
    tuned = yaml.safe_load((REPO / "litestream.yml").read_text())
    tuned = {k: v for k, v in tuned.items() if k != "socket"}
    tuned["dbs"] = [d for d in tuned["dbs"] if "dir" in d]  # idle property DBs only
    work = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    try:
        for label, cfg in (("tuned", tuned), ("defaults", default_config(tuned))):
            r = run(label, cfg, args.dbs, args.minutes, work)
            print(f"{r['config']:9s} {r['dbs']} idle DBs over {r['minutes']} min: {r['requests']} "
                  f"-> {r['per_db_per_hour']} requests per idle DB per hour", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
