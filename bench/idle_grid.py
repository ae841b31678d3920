"""Idle cost against restore time for a grid of Litestream compaction settings.

    .venv/bin/python bench/idle_grid.py                # 15-minute window (~20 min in all)
    .venv/bin/python bench/idle_grid.py --minutes 2    # a quick smoke run (~5 min)

Each cell of the grid is the repo's litestream.yml with only `levels:`, `l0-retention` and
`l0-retention-check-interval` changed (sync-interval stays Litestream's default 1 s, so the RPO is
the same in every cell):

  A  levels 5m,1h; l0-retention 10m; check 5m     (shipped until 2026-12-06; F since)
  B  levels 1h;    l0-retention 10m; check 10m
  C  levels 15m,6h; l0-retention 15m; check 15m
  D  levels 1h,24h; l0-retention 1h;  check 1h
  E  no levels / l0 keys at all                   (Litestream's defaults: levels 30s,5m,1h)

Everything runs on 127.0.0.1 against ONE moto S3 server in its own process (bench/restore_all.py's
uvicorn-served moto, `restore_all.py --_moto PORT`), with its access log as the request count. All
cells run at the same time, each its own `litestream replicate` (the real binary beside this
Python), its own home directory and its own buckets, so they share the machine alike:

- Idle: 5 WAL databases per cell (`data/pN/honestcam.db`, a table and a few rows written before
  litestream starts, then --idle-writes commits 1.5 s apart once it runs, as a tenant's last activity
  would leave it, then untouched) replicate to bucket `cell-X-idle`. Requests to that bucket are
  counted after a 2-minute warm-up (`--warmup`), over `--minutes` (the issue asks for >= 15), and
  reported per idle database per hour by type (LIST, PUT, DELETE incl. batch-delete POSTs, GET,
  HEAD).
- Busy: one more database per cell, in the same litestream process but replicating to its own
  bucket `cell-X-busy` (so it does not show in the idle counts), gets one small INSERT every 0.5 s
  from the start of litestream to the end of the window (warm-up + window). Then the writes stop,
  litestream is stopped (SIGTERM: its final sync), and, one cell after another with nothing else
  running, the busy database is restored `--repeats` times (median reported) with
  `litestream restore -o OUT <s3 url>` and with edgehost's RestoreEngine
  (`RestoreEngine(settings, Litestream.from_settings(settings)).restore("busy", out)`, a fresh
  engine, so a fresh listing, each time). The LTX files the restore uses come from
  `litestream restore -dry-run`. Every restore is checked: the row count must equal what was
  written.

The table goes to stdout and to bench/results/idle_grid-<date>.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(BENCH))
import restore_all as ra  # noqa: E402  (moto server, free_port, wait_port, s3 client, clean env)

LITESTREAM = ra.LITESTREAM
PROPERTY_NAME = "honestcam.db"
GLOBAL_NAME = "honestcam-study.db"
BUSY_SLUG = "busy"
TUNING_KEYS = ("levels", "l0-retention", "l0-retention-check-interval")

GRID: dict[str, dict] = {
    "A": {"levels": [{"interval": "5m"}, {"interval": "1h"}], "l0-retention": "10m", "l0-retention-check-interval": "5m"},
    "B": {"levels": [{"interval": "1h"}], "l0-retention": "10m", "l0-retention-check-interval": "10m"},
    "C": {"levels": [{"interval": "15m"}, {"interval": "6h"}], "l0-retention": "15m", "l0-retention-check-interval": "15m"},
    "D": {"levels": [{"interval": "1h"}, {"interval": "24h"}], "l0-retention": "1h", "l0-retention-check-interval": "1h"},
    "E": {},
    # F is what litestream.yml ships since 2026-12-06 (A before). The shipped levels with a rarer retention check: the check is the only steady idle cost (2 LISTs
    # per database each time), and the plan a restore needs does not depend on it.
    "F": {"levels": [{"interval": "5m"}, {"interval": "1h"}], "l0-retention": "10m", "l0-retention-check-interval": "15m"},
    # H: F with Litestream's own 30 s L1 level back. By Litestream's code an idle database's compaction
    # costs no request (each level's newest file is cached; not measured yet), and a busy one's restore
    # reads at most 30 s of L0 files, not 5 min; not shipped, as its L1 files last the whole
    # point-in-time window (docs/litestream-tuning.md).
    "H": {"levels": [{"interval": "30s"}, {"interval": "5m"}, {"interval": "1h"}], "l0-retention": "10m",
          "l0-retention-check-interval": "15m"},
    "G": {"levels": [{"interval": "5m"}, {"interval": "1h"}], "l0-retention": "10m", "l0-retention-check-interval": "30m"},
    # I: the check once an hour (2 LISTs per idle database per hour).
    "I": {"levels": [{"interval": "5m"}, {"interval": "1h"}], "l0-retention": "10m", "l0-retention-check-interval": "1h"},
    # J: L1 every 10 minutes. Litestream 0.5.17 LISTs the level below at every tick of a level whose newest
    # file spans several txids, idle or not (Store.CompactDB compares the source's newest txid with the
    # destination's oldest): with a 5-minute L1 that is 12 LISTs an hour for any database whose last
    # activity was more than one sync. 10 minutes halves it; the check once an hour.
    "J": {"levels": [{"interval": "10m"}, {"interval": "1h"}], "l0-retention": "20m", "l0-retention-check-interval": "1h"},
    # K: J with l0-retention 15m (shipped since 2026-12-07). L0 files are pruned at every L1 compaction
    # too, once older than l0-retention; any retention between one and two L1 intervals leaves every
    # sync restorable back to the L1 boundary before the last one (10-20 minutes), and 15m keeps fewer
    # L0 files (in the bucket, and beside a durable database) than 20m for the same points.
    "K": {"levels": [{"interval": "10m"}, {"interval": "1h"}], "l0-retention": "15m", "l0-retention-check-interval": "1h"},
}
NOTES = {"A": "shipped until 2026-12-06", "F": "shipped until 2026-12-07", "K": "shipped", "E": "litestream defaults"}
KINDS = ("LIST", "PUT", "DELETE", "GET", "HEAD")
REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|DELETE|HEAD) (\S+)')


def describe(cell: str) -> str:
    t = GRID[cell]
    if not t:
        return "defaults (no levels/l0 keys)"
    return (f"levels {','.join(l['interval'] for l in t['levels'])}; l0-retention {t['l0-retention']}; "
            f"check {t['l0-retention-check-interval']}")


def bucket_counts(log: Path, since: int, until: int | None = None) -> dict[str, collections.Counter]:
    """Requests per bucket and kind in moto's access log between two byte offsets."""
    with open(log, "rb") as f:
        f.seek(since)
        text = f.read(None if until is None else until - since).decode("utf-8", "replace")
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        m = REQUEST.search(line)
        if not m:
            continue
        verb, path = m.groups()
        bucket = path.lstrip("/").split("?")[0].split("/")[0]
        query = path.partition("?")[2]
        if verb == "GET" and "list-type" in query:
            kind = "LIST"
        elif verb == "POST" and re.search(r"(^|&)delete(=|&|$)", query):
            kind = "DELETE"  # DeleteObjects: one request, many keys
        elif verb in KINDS:
            kind = verb
        else:
            kind = "other"
        out[bucket][kind] += 1
    return out


def cell_config(cell: str, home: Path) -> Path:
    """The repo's litestream.yml with the cell's tuning keys, and this cell's databases and buckets."""
    cfg = yaml.safe_load((REPO / "litestream.yml").read_text())
    for k in TUNING_KEYS:
        cfg.pop(k, None)
    cfg.update(GRID[cell])
    cfg["socket"] = {"enabled": True, "path": str(home / "ls.sock")}
    b = f"cell-{cell.lower()}"
    cfg["dbs"] = [
        {"dir": str(home / "idle"), "pattern": PROPERTY_NAME, "recursive": True, "watch": True,
         "replica": {"url": f"s3://{b}-idle/edgehost"}},
        {"path": str(home / "busy" / BUSY_SLUG / PROPERTY_NAME),
         "replica": {"url": f"s3://{b}-busy/edgehost/{BUSY_SLUG}/{PROPERTY_NAME}"}},
    ]
    path = home / "litestream.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def make_db(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, at REAL, note TEXT)")
    conn.executemany("INSERT INTO events(at, note) VALUES (?, ?)", [(time.time(), f"row {i}") for i in range(rows)])
    conn.close()


class Writer(threading.Thread):
    """One small INSERT into every busy database each `period` seconds."""

    def __init__(self, paths: dict[str, Path], period: float):
        super().__init__(daemon=True)
        self.conns = {c: sqlite3.connect(p, isolation_level=None, check_same_thread=False) for c, p in paths.items()}
        for conn in self.conns.values():
            conn.execute("PRAGMA busy_timeout=5000")
        self.written = collections.Counter()
        self.errors = collections.Counter()
        self.period = period
        self.halt = threading.Event()

    def run(self) -> None:
        tick = time.monotonic()
        while not self.halt.is_set():
            for cell, conn in self.conns.items():
                try:
                    conn.execute("INSERT INTO events(at, note) VALUES (?, ?)", (time.time(), "tick"))
                    self.written[cell] += 1
                except sqlite3.Error:
                    self.errors[cell] += 1
            tick += self.period
            self.halt.wait(max(0.0, tick - time.monotonic()))
        for conn in self.conns.values():
            conn.close()


def s3_url(cell: str, endpoint: str) -> str:
    return (f"s3://cell-{cell.lower()}-busy/edgehost/{BUSY_SLUG}/{PROPERTY_NAME}"
            f"?endpoint={endpoint}&forcePathStyle=true&region=us-east-1")


def row_count(path: Path) -> int:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()


def plan_files(cell: str, endpoint: str) -> tuple[int, dict[int, int]]:
    """How many LTX files `litestream restore -dry-run` says the latest restore uses, per level."""
    proc = subprocess.run([str(LITESTREAM), "restore", "-dry-run", "-o", "/nonexistent/dry-run.db", s3_url(cell, endpoint)],
                          env=ra.base_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"dry-run {cell}: {proc.stderr.strip()[-500:]}")
    levels = collections.Counter(int(lv) for lv in re.findall(r"^\s*(\d+)\s+[0-9a-f]{16}-[0-9a-f]{16}\.ltx\s", proc.stdout, re.M))
    return sum(levels.values()), dict(sorted(levels.items()))


def restore_plain(cell: str, endpoint: str, out: Path) -> float:
    started = time.monotonic()
    proc = subprocess.run([str(LITESTREAM), "restore", "-o", str(out), s3_url(cell, endpoint)], env=ra.base_env(),
                          capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"plain restore {cell}: {proc.stderr.strip()[-500:]}")
    return seconds


def engine_settings(cell: str, endpoint: str, home: Path):
    """A kit home with the repo's litestream.yml whose tenants' replica is the cell's busy bucket."""
    from edgehost.settings import load_settings

    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    env = {**ra.base_env(), "EDGEHOST_HOME": str(home), "EDGEHOST_DATA_DIR": str(home / "data"),
           "EDGEHOST_REPLICA_URL": f"s3://cell-{cell.lower()}-busy/edgehost", "EDGEHOST_S3_ENDPOINT": endpoint,
           "EDGEHOST_S3_REGION": "us-east-1", "EDGEHOST_S3_FORCE_PATH_STYLE": "true",
           "EDGEHOST_GLOBAL_DB_NAME": GLOBAL_NAME, "EDGEHOST_PROPERTY_DB_NAME": PROPERTY_NAME,
           "EDGEHOST_LITESTREAM_BIN": str(LITESTREAM)}
    return load_settings(home, env)


def restore_engine(settings, out: Path) -> float:
    from edgehost.engine import litestream
    from edgehost.ops.recovery import RestoreEngine

    started = time.monotonic()
    with RestoreEngine(settings, litestream.Litestream.from_settings(settings)) as engine:
        result = engine.restore(BUSY_SLUG, out)
    seconds = time.monotonic() - started
    if not result.ok:
        raise RuntimeError(f"engine restore: {result.error}")
    return seconds


def engine_available() -> str | None:
    try:
        from edgehost.ops.recovery import RestoreEngine  # noqa: F401
    except Exception as exc:  # an older checkout: the plain column only
        return f"{type(exc).__name__}: {exc}"
    return None


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: list[dict]) -> str:
    head = ("| cell | settings | idle req/DB/h | before the window | LIST | PUT | DELETE | GET | HEAD | restore s plain | restore s engine "
            "| files in plan (by level) | busy rows | check |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in results:
        per = r["idle_per_db_hour"]
        levels = ", ".join(f"L{k}:{v}" for k, v in r["plan_levels"].items())
        note = f" ({NOTES[r['cell']]})" if r["cell"] in NOTES else ""
        early = r.get("early_per_db_hour")
        before = f"{sum(early.values()):.1f}" if early is not None else "-"
        lines.append(f"| {r['cell']}{note} | {describe(r['cell'])} | {per['total']:.1f} | {before} | "
                     + " | ".join(f"{per.get(k, 0):.1f}" for k in KINDS)
                     + f" | {fmt(r['plain_s'], 2)} | {fmt(r['engine_s'], 2)} | {r['plan_files']} ({levels}) | "
                     f"{r['rows']} | {r['check']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0, help="measured window after the warm-up (the issue asks >= 15)")
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes not counted after litestream starts")
    ap.add_argument("--idle-dbs", type=int, default=5, help="idle databases per cell")
    ap.add_argument("--idle-writes", type=int, default=5,
                    help="commits into each idle database, 1.5 s apart, right after litestream starts (0: none, "
                         "the idle databases are only written before it starts, as before 2026-12-07)")
    ap.add_argument("--period", type=float, default=0.5, help="seconds between INSERTs into each busy database")
    ap.add_argument("--repeats", type=int, default=3, help="restores per method per cell (median reported)")
    ap.add_argument("--cells", default=",".join(GRID), help="comma-separated subset of " + ",".join(GRID))
    ap.add_argument("--out", default=str(BENCH / "results" / f"idle_grid-{datetime.date.today().isoformat()}.md"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = ap.parse_args()
    cells = [c.strip().upper() for c in args.cells.split(",") if c.strip()]
    no_engine = engine_available()
    if no_engine:
        print(f"RestoreEngine not importable ({no_engine}); the engine column stays empty", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="idle-grid-"))
    print(f"work dir {work}", file=sys.stderr, flush=True)
    moto = None
    procs: dict[str, subprocess.Popen] = {}
    writer = None
    results = []
    started_at = datetime.datetime.now(datetime.timezone.utc)
    try:
        port = ra.free_port()
        log_path = work / "moto.log"
        moto = subprocess.Popen([sys.executable, str(BENCH / "restore_all.py"), "--_moto", str(port)],
                                stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=ra.base_env())
        ra.wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        client = ra.s3(endpoint)
        for cell in cells:
            for kind in ("idle", "busy"):
                client.create_bucket(Bucket=f"cell-{cell.lower()}-{kind}")

        busy_paths = {}
        for cell in cells:
            home = work / f"cell-{cell}"
            for i in range(args.idle_dbs):
                make_db(home / "idle" / f"p{i}" / PROPERTY_NAME, 3)
            busy_paths[cell] = home / "busy" / BUSY_SLUG / PROPERTY_NAME
            make_db(busy_paths[cell], 3)
            config = cell_config(cell, home)
            env = {**ra.base_env(), "EDGEHOST_S3_ENDPOINT": endpoint, "EDGEHOST_S3_REGION": "us-east-1",
                   "EDGEHOST_S3_FORCE_PATH_STYLE": "true"}
            procs[cell] = subprocess.Popen([str(LITESTREAM), "replicate", "-config", str(config)], env=env,
                                           stdout=open(home / "litestream.log", "wb"), stderr=subprocess.STDOUT)
        writer = Writer(busy_paths, args.period)
        writer.start()
        # Idle databases as a tenant leaves them: a burst of separate commits while litestream runs, each
        # synced on its own (so the newest L1 file spans several txids), then nothing.
        if args.idle_writes:
            time.sleep(3)
            conns = [sqlite3.connect(work / f"cell-{cell}" / "idle" / f"p{i}" / PROPERTY_NAME, isolation_level=None)
                     for cell in cells for i in range(args.idle_dbs)]
            for _ in range(args.idle_writes):
                for conn in conns:
                    conn.execute("INSERT INTO events(at, note) VALUES (?, ?)", (time.time(), "burst"))
                time.sleep(1.5)
            for conn in conns:
                conn.close()
        print(f"{len(cells)} cells running; warm-up {args.warmup:g} min, then {args.minutes:g} min measured",
              file=sys.stderr, flush=True)
        # With a warm-up past the first hour, the minutes from 2 min to the window are counted apart: they hold
        # what Litestream does once after it starts (each level's newest file looked up, the first compaction
        # of each level), which the steady window after them does not.
        early_at = 2.0 if args.warmup > 2.0 else None
        early_mark = None
        if early_at is not None:
            time.sleep(early_at * 60)
            early_mark, early_start = log_path.stat().st_size, time.monotonic()
        time.sleep((args.warmup - (early_at or 0.0)) * 60)
        for cell, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"litestream of cell {cell} exited: {(work / f'cell-{cell}' / 'litestream.log').read_text()[-2000:]}")
        mark = log_path.stat().st_size
        window_start = time.monotonic()
        time.sleep(args.minutes * 60)
        time.sleep(0.5)  # moto logs after it answers
        until = log_path.stat().st_size
        measured = (time.monotonic() - window_start) / 60
        counts = bucket_counts(log_path, mark, until)
        early = bucket_counts(log_path, early_mark, mark) if early_mark is not None else {}
        early_minutes = (window_start - early_start) / 60 if early_mark is not None else None

        writer.halt.set()
        writer.join(30)
        time.sleep(2)  # let litestream see the last commit; its final sync on SIGTERM ships it
        for cell, p in procs.items():
            p.terminate()
        for cell, p in procs.items():
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                print(f"cell {cell}: litestream did not stop within 90 s; killed", file=sys.stderr)

        for cell in cells:
            c = counts.get(f"cell-{cell.lower()}-idle", collections.Counter())
            scale = 60 / measured / args.idle_dbs
            per = {k: v * scale for k, v in c.items()}
            per["total"] = sum(c.values()) * scale
            e = early.get(f"cell-{cell.lower()}-idle", collections.Counter())
            early_per = ({k: v * 60 / early_minutes / args.idle_dbs for k, v in e.items()} if early_minutes else None)
            expected = 3 + writer.written[cell]
            files, levels = plan_files(cell, endpoint)
            plain, engine, problems = [], [], []
            settings = engine_settings(cell, endpoint, work / f"engine-{cell}") if not no_engine else None
            for i in range(args.repeats):
                for label, fn, times in (("plain", lambda o: restore_plain(cell, endpoint, o), plain),
                                         ("engine", (lambda o: restore_engine(settings, o)) if settings else None, engine)):
                    if fn is None:
                        continue
                    out = work / "out" / f"{cell}-{label}-{i}.db"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        times.append(fn(out))
                        got = row_count(out)
                        if got != expected:
                            problems.append(f"{label}: {got} rows, expected {expected}")
                    except Exception as exc:
                        problems.append(f"{label}: {exc}")
                    for p in out.parent.glob(out.name + "*"):
                        p.unlink()
            r = {"cell": cell, "settings": describe(cell), "idle_counts": dict(c), "idle_per_db_hour": per,
                 "early_counts": dict(e), "early_per_db_hour": early_per,
                 "early_minutes": round(early_minutes, 2) if early_minutes else None,
                 "measured_minutes": round(measured, 2), "plain_s": statistics.median(plain) if plain else None,
                 "engine_s": statistics.median(engine) if engine else None, "plain_all": plain, "engine_all": engine,
                 "plan_files": files, "plan_levels": levels, "rows": expected,
                 "write_errors": writer.errors[cell], "check": "; ".join(problems) or "ok"}
            results.append(r)
            print(f"cell {cell}: idle {per['total']:.1f} req/DB/h {dict(c)}; restore plain {plain} engine {engine}; "
                  f"{files} files {levels}; {r['check']}", file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.halt.set()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        if moto is not None:
            moto.terminate()
            try:
                moto.wait(10)
            except subprocess.TimeoutExpired:
                moto.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    version = subprocess.run([str(LITESTREAM), "version"], capture_output=True, text=True).stdout.strip()
    header = (f"idle_grid: {len(cells)} cells at once on one moto server; {args.idle_dbs} idle DBs per cell; "
              f"{args.minutes:g}-minute window after a {args.warmup:g}-minute warm-up; busy DB: one INSERT every "
              f"{args.period:g} s for {args.warmup + args.minutes:g} min; restores: median of {args.repeats}; "
              f"litestream {version}; {os.cpu_count()} CPUs; started {started_at:%Y-%m-%d %H:%M} UTC")
    text = header + "\n\n" + table(results) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
