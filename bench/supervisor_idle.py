"""What an idle supervisor costs: CPU seconds per minute of `edgehost up` and of litestream with N idle
property databases (file replica), read from /proc after the start has settled.

    .venv/bin/python bench/supervisor_idle.py [N] [SECONDS]      (default 50 databases, 60 s)
    S3=1 .venv/bin/python bench/supervisor_idle.py 1000 5        (replica on a moto S3 server, as with R2)

Also prints the start-to-healthy time of `edgehost up` with those N databases on disk and how long
`edgehost status --json` takes (median of 3).

Run it against another checkout with PYTHONPATH=<checkout>/src to compare two versions.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            todo += children(p)
        except OSError:
            pass
    return found


def name(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    home = Path(tempfile.mkdtemp(prefix="idle-"))
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    port = free_port()
    env = {**os.environ, "EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(port),
           "EDGEHOST_METRICS_PORT": "0"}
    moto = None
    if os.environ.get("S3"):  # the replica in a bucket: litestream's snapshots and L0 files leave this disk
        sys.path.insert(0, str(REPO / "bench"))
        import restore_all as ra
        moto_port = free_port()
        moto = subprocess.Popen([sys.executable, str(REPO / "bench" / "restore_all.py"), "--_moto", str(moto_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ra.base_env())
        ra.wait_port(moto_port)
        endpoint = f"http://127.0.0.1:{moto_port}"
        ra.s3(endpoint).create_bucket(Bucket="idle-bench")
        env.update(ra.CREDS, EDGEHOST_REPLICA_URL="s3://idle-bench/edgehost", EDGEHOST_S3_ENDPOINT=endpoint,
                   EDGEHOST_S3_REGION="us-east-1", EDGEHOST_S3_FORCE_PATH_STYLE="true")
    subprocess.run([sys.executable, "-m", "edgehost", "property", "add", "p0000"], env=env, check=True,
                   capture_output=True)
    template = home / "data" / "p0000" / "honestcam.db"
    for i in range(1, n):  # the same schema, copied: `property add` a thousand times would take minutes
        (home / "data" / f"p{i:04d}").mkdir()
        shutil.copy(template, home / "data" / f"p{i:04d}" / "honestcam.db")
    for db in (home / "data").glob("*/honestcam.db"):
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO compliance_events(occurred_at, kind) VALUES ('2026-01-01T00:00:00Z', 'k')")
    # One client, built before the clock starts: a client per probe loads the CA bundle each time
    # (~60 ms of CPU here), which the start being timed would share the two cores with.
    probe = httpx.Client(timeout=1, verify=False)
    t0 = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "edgehost", "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if probe.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        healthy = time.monotonic() - t0
        time.sleep(15 + n / 50)  # first syncs and snapshots done
        procs = {p: name(p) for p in tree(up.pid)}
        litestream = [p for p, cmd in procs.items() if cmd.split()[0].endswith("/litestream")]
        before = {p: cpu_seconds(p) for p in procs}
        time.sleep(seconds)
        after = {p: cpu_seconds(p) for p in procs}
        per_min = lambda pids: sum(after[p] - before[p] for p in pids) * 60 / seconds  # noqa: E731
        took = []
        for _ in range(3):
            t = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "edgehost", "status", "--json"], env=env, capture_output=True)
            took.append(time.monotonic() - t)
        print(f"{n} idle databases, {seconds:.0f} s: supervisor {per_min([up.pid]):.2f} CPU-s/min, "
              f"litestream {per_min(litestream):.2f} CPU-s/min; start to healthy {healthy:.2f} s; "
              f"`status --json` {sorted(took)[1]:.2f} s (median of 3, exit {proc.returncode})")
    finally:
        up.terminate()
        up.wait(120)
        if moto is not None:
            moto.terminate()
            moto.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
