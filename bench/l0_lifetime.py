"""How long Litestream keeps L0 files (the every-sync restore points) of a database being written, in
the replica and beside the database, when its L0 retention check does not run.

    .venv/bin/python bench/l0_lifetime.py                    # levels 4s, l0-retention 6s, 40 s of writes
    .venv/bin/python bench/l0_lifetime.py --level 10 --retention 15 --seconds 60

The real `litestream replicate` (0.5.x) replicates one database to a local file replica with one
compaction level (--level seconds), `l0-retention` --retention seconds and an L0 retention check once
an hour (so it never runs here). A writer commits every 0.2 s for --seconds, then stops; every 5 s the
L0 files in the replica and in `.<db>-litestream/ltx/0` are counted, and after 15 s idle once more.

If L0 files were pruned only by the retention check, the counts would grow with every sync for the
whole run. Litestream 0.5.17 also prunes them at each L1 compaction (`DB.Compact` calls
`EnforceL0RetentionByTime`), so they level off at --retention to --retention + --level seconds of
syncs; after the writes stop nothing is pruned until the next check (docs/durable.md, "Under
sustained load"; docs/litestream-tuning.md).
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import restore_all as ra  # noqa: E402


def count(directory: Path) -> int:
    return len(list(directory.glob("*.ltx"))) if directory.is_dir() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--level", type=float, default=4.0, help="the L1 interval, seconds")
    ap.add_argument("--retention", type=float, default=6.0, help="l0-retention, seconds")
    ap.add_argument("--seconds", type=float, default=40.0, help="how long the writer commits")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="l0-lifetime-") as tmp:
        home = Path(tmp)
        db_path, replica = home / "a.db", home / "replica"
        (home / "litestream.yml").write_text(
            f"levels:\n  - interval: {args.level:g}s\nl0-retention: {args.retention:g}s\n"
            f"l0-retention-check-interval: 1h\ndbs:\n  - path: {db_path}\n    replica:\n"
            f"      url: file://{replica}\n")
        db = sqlite3.connect(db_path, isolation_level=None)
        db.execute("PRAGMA journal_mode = wal")
        db.execute("CREATE TABLE t (x)")
        log = (home / "litestream.log").open("w")
        proc = subprocess.Popen([str(ra.LITESTREAM), "replicate", "-config", str(home / "litestream.yml")],
                                stdout=log, stderr=subprocess.STDOUT)
        remote, local = replica / "ltx" / "0", home / ".a.db-litestream" / "ltx" / "0"
        try:
            t0, commits, next_report, peak = time.monotonic(), 0, 5.0, 0
            while (elapsed := time.monotonic() - t0) < args.seconds:
                db.execute("INSERT INTO t VALUES (?)", (time.time(),))
                commits += 1
                time.sleep(0.2)
                if elapsed >= next_report:
                    r, lo = count(remote), count(local)
                    peak = max(peak, r)
                    print(f"{elapsed:5.1f} s, {commits} commits: L0 files in the replica {r}, beside the "
                          f"database {lo}, L1 files {count(replica / 'ltx' / '1')}", flush=True)
                    next_report += 5.0
            time.sleep(15)
            print(f"15 s after the last commit: L0 files in the replica {count(remote)}, beside the database "
                  f"{count(local)}")
            print(f"peak {peak} L0 files over {args.seconds:g} s of commits; pruned only by the check, they "
                  f"would be ~{args.seconds:.0f} (one sync a second)")
        finally:
            proc.terminate()
            proc.wait(30)
            db.close()


if __name__ == "__main__":
    main()
