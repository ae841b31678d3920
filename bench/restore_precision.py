"""How close to a time T `restore --at T` can get, by the age of T: the real litestream with a given
litestream.yml (the repo's by default), a writer committing `--rate` rows a second for `--minutes`,
then, for times T of chosen ages, Litestream's own `restore -timestamp T` against edgehost's list of
restorable points.

    .venv/bin/python bench/restore_precision.py --minutes 22 --s3           # the shipped litestream.yml (~25 min)
    .venv/bin/python bench/restore_precision.py --short --minutes 1.5       # levels 2s/6s, l0-retention 3s, snapshots 10s/20s

Per sampled T it reports: the txid litestream landed on, whether edgehost's `points` predicted it,
how long before T that point was synced, the rows committed before T that the restore lacks, and
any restored row committed at or after T (must be none). Then the restorable points by age.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from edgehost.engine import litestream  # noqa: E402
from edgehost.ops.restore import PointIndex, format_time  # noqa: E402
from edgehost.settings import load_settings  # noqa: E402

SHORT = {
    "levels:\n  - interval: 5m\n  - interval: 1h\nl0-retention: 10m\nl0-retention-check-interval: 15m":
        "levels:\n  - interval: 2s\n  - interval: 6s\nl0-retention: 3s\nl0-retention-check-interval: 1s",
    "snapshot:\n  interval: 24h\n  retention: 168h": "snapshot:\n  interval: 10s\n  retention: 20s",
}
SHIPPED_AGES = [2, 10, 30, 60, 120, 300, 480, 570, 600, 630, 660, 720, 780, 840, 900, 1020, 1200]
SHORT_AGES = [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 60, 80]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Writer(threading.Thread):
    """Commits one row per 1/rate s; keeps (id, commit start, acknowledged) for each."""

    def __init__(self, db: Path, rate: float):
        super().__init__(daemon=True)
        self.db, self.pause, self.rows = db, 1.0 / rate, []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        while not self.stop.is_set():
            started = time.time()
            rowid = conn.execute("INSERT INTO events(at) VALUES (?)", (started,)).lastrowid
            self.rows.append((rowid, started, time.time()))
            time.sleep(max(0.0, self.pause - (time.time() - started)))
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=22)
    ap.add_argument("--rate", type=float, default=20, help="rows committed per second")
    ap.add_argument("--short", action="store_true", help="scaled-down intervals (tiers within seconds)")
    ap.add_argument("--s3", action="store_true", help="a moto S3 server on loopback instead of a file replica")
    ap.add_argument("--ages", default="", help="comma-separated ages in seconds of the sampled T")
    ap.add_argument("--json", dest="json_out", default="", help="also write the raw results here")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="precision-"))
    yml = (REPO / "litestream.yml").read_text()
    if args.short:
        for a, b in SHORT.items():
            assert a in yml, a
            yml = yml.replace(a, b)
    (home / "litestream.yml").write_text(yml)
    env = {"EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(free_port())}
    server = None
    if args.s3:
        import boto3
        from moto.server import ThreadedMotoServer

        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                     aws_secret_access_key="s").create_bucket(Bucket="bench")
        env.update({"EDGEHOST_REPLICA_URL": "s3://bench/edgehost", "EDGEHOST_S3_ENDPOINT": endpoint,
                    "EDGEHOST_S3_REGION": "us-east-1", **keys})
    settings = load_settings(home, {**os.environ, **env})
    repl = litestream.replication(settings)
    from edgehost.engine import layout

    ref = layout.property_db(settings, "acme")
    ref.path.parent.mkdir(parents=True)
    for path, sql in ((ref.path, "CREATE TABLE events(id INTEGER PRIMARY KEY, at REAL)"),
                      (settings.global_db, "CREATE TABLE t(x)")):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(sql)
        conn.close()
    binary = litestream.find_binary()
    lenv, _ = litestream.child_environ(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log = open(home / "litestream.log", "wb")
    proc = subprocess.Popen([str(binary), "replicate", "-config", str(settings.litestream_config)], env=lenv,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    writer = Writer(ref.path, args.rate)
    writer.start()
    print(f"home {home}; writing {args.rate}/s for {args.minutes} min with "
          f"{'the short config' if args.short else 'the repo litestream.yml'} on "
          f"{'moto S3' if args.s3 else 'a file replica'}", flush=True)
    deadline = time.time() + args.minutes * 60
    while time.time() < deadline:
        time.sleep(min(30, max(0.0, deadline - time.time())))
        print(f"  {len(writer.rows)} rows, {int(deadline - time.time())} s left", flush=True)
    writer.stop.set()
    writer.join()
    os.killpg(proc.pid, signal.SIGTERM)  # its final sync; no retention pass runs after this
    proc.wait(60)
    end = datetime.now(timezone.utc)
    url = repl.restore_url(ref)
    index = PointIndex.from_url(url, lenv, "acme")
    print(f"stopped at {format_time(end)}: {len(index.files)} LTX files, {len(index)} restorable points", flush=True)

    ages = [float(a) for a in args.ages.split(",")] if args.ages else (SHORT_AGES if args.short else SHIPPED_AGES)
    rows = writer.rows
    samples = []
    for age in ages:
        T = end - timedelta(seconds=age) + timedelta(milliseconds=random.randint(0, 999))
        out = home / f"restore-{age}.db"
        p = subprocess.run([str(binary), "restore", "-json", "-timestamp", T.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                            "-o", str(out), url], env=lenv, capture_output=True, text=True, timeout=600)
        predicted = index.before(T)
        pred = None if predicted is None else index.point(predicted, T)
        sample = {"age_s": age, "T": format_time(T), "predicted": pred and pred.txid,
                  "predicted_levels": pred and pred.levels, "seconds_before": pred and pred.seconds_before}
        if p.returncode != 0:
            sample["litestream"] = (p.stderr.strip().splitlines() or ["failed"])[-1]
        else:
            sample["litestream"] = json.loads(p.stdout)["txid"]
            conn = sqlite3.connect(out)
            got = {r[0] for r in conn.execute("SELECT id FROM events")}
            conn.close()
            ts = T.timestamp()
            sample["acked_before_T"] = sum(1 for _, _, ack in rows if ack < ts)
            sample["lost_before_T"] = sum(1 for rid, _, ack in rows if ack < ts and rid not in got)
            sample["restored_after_T"] = sum(1 for rid, start, _ in rows if start >= ts and rid in got)
        samples.append(sample)

    print("\n| age of T | lands on (levels) | `points` predicted it | synced before T | rows acked before T missing | rows from after T |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    for s in samples:
        same = "yes" if s["litestream"] == s["predicted"] else f"no ({s['predicted']})"
        lv = " ".join("snap" if x == 9 else f"L{x}" for x in (s["predicted_levels"] or []))
        before = "" if s["seconds_before"] is None else f"{s['seconds_before']:.2f} s"
        print(f"| {s['age_s']:g} s | {s['litestream'][-6:] if len(s['litestream']) == 16 else s['litestream']} ({lv}) "
              f"| {same} | {before} | {s.get('lost_before_T', '')} of {s.get('acked_before_T', '')} "
              f"| {s.get('restored_after_T', '')} |")

    # The restorable points by age: how many, and the widest gap between neighbours.
    times = [(index.time(i), index.point(i).levels) for i in range(len(index))]
    edges = ([0, 10, 20, 30, 40, 60, 80, 120] if args.short else [0, 60, 300, 540, 600, 660, 720, 840, 960, 1200, 1800])
    print("\n| age | points | widest gap | levels |")
    print("| --- | ---: | ---: | --- |")
    for lo, hi in zip(edges, edges[1:] + [None]):
        inside = [(t, lv) for t, lv in times if lo <= (end - t).total_seconds() < (hi or 1e12)]
        gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(inside, inside[1:])]
        lvls = sorted({min(lv) for _, lv in inside})
        label = f"{lo}-{hi} s" if hi else f">= {lo} s"
        print(f"| {label} | {len(inside)} | {max(gaps):.1f} s |" if gaps else f"| {label} | {len(inside)} | - |",
              " ".join("snap" if x == 9 else f"L{x}" for x in lvls), "|")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"end": format_time(end), "samples": samples,
                                                   "points": [[format_time(t), lv] for t, lv in times]}, indent=1))
    if server:
        server.stop()


if __name__ == "__main__":
    main()
