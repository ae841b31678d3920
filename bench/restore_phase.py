"""Restore time of a busy database against the number of L0 files its plan reads: what the L1
interval costs a restore (issue 14's "restore of a DB with a day of steady writes <= 2x").

    .venv/bin/python bench/restore_phase.py                      # a day's rows, 600 L0 files
    .venv/bin/python bench/restore_phase.py --rows 86400 --files 600 --points 0,75,150,300,450,600

A restore to the latest point reads the newest snapshot, the compacted files since it, and every L0
file since the last L1 boundary: with one sync a second, up to 300 with a 5-minute L1 and up to 600
with a 10-minute one, depending on when in the L1 interval it runs. This bench builds that L0 tail
directly: one database with --rows rows (a day at one write a second), the real litestream 0.5.x
replicating it to a moto S3 server (its own process, loopback) with no compaction in the run and one
sync per commit (monitor and sync intervals of 100 ms, a commit every 0.15 s), until --files L0
files are in the bucket. Then for each N in --points it restores the point N L0 files past the
snapshot (`-txid`), --repeats times each (median), with plain `litestream restore -txid` and with
edgehost's RestoreEngine (`restore(..., txid=...)`), and checks the row count.

The summary compares an L1 of 5 and of 10 minutes at one sync a second: the restore time at the
worst phase (300 against 600 files) and averaged over the phase (N uniform over the interval,
interpolated between the measured points).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

import idle_grid as ig  # noqa: E402  (engine_settings, s3_url, make_db, row_count)
import restore_all as ra  # noqa: E402

CELL = "X"  # idle_grid's naming: bucket cell-x-busy, key edgehost/busy/honestcam.db


def interpolate(points: list[tuple[int, float]], n: float) -> float:
    for (n0, t0), (n1, t1) in zip(points, points[1:]):
        if n0 <= n <= n1:
            return t0 + (t1 - t0) * (n - n0) / (n1 - n0) if n1 > n0 else t0
    return points[-1][1]


def phase_mean(points: list[tuple[int, float]], top: int) -> float:
    """The mean restore time with N uniform over 0..top."""
    return statistics.fmean(interpolate(points, top * i / 100) for i in range(101))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=86_400, help="rows in the database before the L0 tail")
    ap.add_argument("--files", type=int, default=600, help="L0 files to build")
    ap.add_argument("--points", default="0,75,150,225,300,450,600", help="L0 files in the plans to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="", help="also write the table to this Markdown file")
    args = ap.parse_args()
    points = [int(p) for p in args.points.split(",")]
    if max(points) > args.files or 0 not in points:
        sys.exit("--points must include 0 and stay within --files")
    work = Path(tempfile.mkdtemp(prefix="restore-phase-"))
    moto = proc = None
    try:
        port = ra.free_port()
        moto = subprocess.Popen([sys.executable, str(BENCH / "restore_all.py"), "--_moto", str(port)],
                                stdout=open(work / "moto.log", "wb"), stderr=subprocess.STDOUT, env=ra.base_env())
        ra.wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        client = ra.s3(endpoint)
        client.create_bucket(Bucket=f"cell-{CELL.lower()}-busy")
        db = work / "busy" / ig.BUSY_SLUG / ig.PROPERTY_NAME
        ig.make_db(db, args.rows)
        config = work / "litestream.yml"
        config.write_text(yaml.safe_dump({
            "endpoint": endpoint, "region": "us-east-1", "force-path-style": True,
            "levels": [{"interval": "24h"}], "l0-retention": "24h", "l0-retention-check-interval": "24h",
            "snapshot": {"interval": "24h", "retention": "168h"},
            "dbs": [{"path": str(db), "monitor-interval": "100ms",
                     "replica": {"url": f"s3://cell-{CELL.lower()}-busy/edgehost/{ig.BUSY_SLUG}/{ig.PROPERTY_NAME}",
                                 "sync-interval": "100ms"}}],
        }, sort_keys=False))
        proc = subprocess.Popen([str(ra.LITESTREAM), "replicate", "-config", str(config)], env=ra.base_env(),
                                stdout=open(work / "litestream.log", "wb"), stderr=subprocess.STDOUT)
        prefix = f"edgehost/{ig.BUSY_SLUG}/{ig.PROPERTY_NAME}/"

        def listed(level: int) -> list[tuple[int, int]]:
            names = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=f"cell-{CELL.lower()}-busy",
                                                                          Prefix=f"{prefix}{level:04x}/"):
                for obj in page.get("Contents", []):
                    lo, hi = obj["Key"].rsplit("/", 1)[1].removesuffix(".ltx").split("-")
                    names.append((int(lo, 16), int(hi, 16)))
            return sorted(names)

        conn = sqlite3.connect(db, isolation_level=None)
        time.sleep(3)  # the snapshot first
        started, commits = time.monotonic(), 0
        while True:
            conn.execute("INSERT INTO events(at, note) VALUES (?, ?)", (time.time(), "tick"))
            commits += 1
            time.sleep(0.15)
            if commits % 25:
                continue
            snaps = listed(9)
            if snaps and sum(1 for lo, _ in listed(0) if lo > snaps[-1][1]) >= args.files:
                break
            if time.monotonic() - started > 3600:
                raise RuntimeError("the L0 files did not pile up in an hour")
        conn.close()
        time.sleep(2)
        proc.terminate()
        proc.wait(60)
        snap_txid = listed(9)[-1][1]
        tail = [f for f in listed(0) if f[0] > snap_txid]
        print(f"snapshot at txid {snap_txid}, {len(tail)} L0 files after it; {args.rows} rows before", flush=True)
        settings = ig.engine_settings(CELL, endpoint, work / "engine-home")
        url = ig.s3_url(CELL, endpoint)
        from edgehost.engine import litestream
        from edgehost.ops.recovery import RestoreEngine

        rows_out = []
        for n in points:
            txid = snap_txid if n == 0 else tail[n - 1][1]
            plain, engine = [], []
            for r in range(args.repeats):
                out = work / f"plain-{n}-{r}.db"
                t = time.monotonic()
                done = subprocess.run([str(ra.LITESTREAM), "restore", "-txid", f"{txid:016x}", "-o", str(out), url],
                                      env=ra.base_env(), capture_output=True, text=True, timeout=1800)
                plain.append(time.monotonic() - t)
                if done.returncode != 0:
                    raise RuntimeError(f"plain restore at {n}: {done.stderr.strip()[-400:]}")
                expected = ig.row_count(out)
                out.unlink()
                out = work / f"engine-{n}-{r}.db"
                t = time.monotonic()
                with RestoreEngine(settings, litestream.Litestream.from_settings(settings)) as eng:
                    result = eng.restore(ig.BUSY_SLUG, out, txid=txid)
                engine.append(time.monotonic() - t)
                if not result.ok:
                    raise RuntimeError(f"engine restore at {n}: {result.error}")
                if ig.row_count(out) != expected:
                    raise RuntimeError(f"engine restore at {n}: {ig.row_count(out)} rows, plain {expected}")
                out.unlink()
                shutil.rmtree(work / "engine-home" / "cache", ignore_errors=True)
            rows_out.append((n, statistics.median(plain), statistics.median(engine), expected))
            print(f"{n} L0 files: plain {statistics.median(plain):.2f} s, engine {statistics.median(engine):.2f} s, "
                  f"{expected} rows", flush=True)
        lines = ["| L0 files in the plan | plain s | engine s | rows |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {n} | {p:.2f} | {e:.2f} | {rows} |" for n, p, e, rows in rows_out]
        summary = []
        for col, name in ((1, "plain"), (2, "engine")):
            pts = [(r[0], r[col]) for r in rows_out]
            if 300 in points and 600 in points:
                worst = interpolate(pts, 600) / interpolate(pts, 300)
                mean = phase_mean(pts, 600) / phase_mean(pts, 300)
                summary.append(f"{name}: L1 10 min against 5 min at one sync a second: worst phase "
                               f"{interpolate(pts, 600):.2f} / {interpolate(pts, 300):.2f} s = {worst:.2f}x, "
                               f"over the phase {phase_mean(pts, 600):.2f} / {phase_mean(pts, 300):.2f} s = {mean:.2f}x")
        text = "\n".join(lines + [""] + summary)
        print(text)
        if args.out:
            Path(args.out).write_text(f"restore_phase: {args.rows} rows, {len(tail)} L0 files, median of "
                                      f"{args.repeats}; litestream 0.5.17, moto on loopback\n\n{text}\n")
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        if moto:
            moto.terminate()
            moto.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
