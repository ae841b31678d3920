"""The supervisor's figures: start-to-healthy against `litestream replicate -exec`, its RSS, and the
time from kill -9 of the portal to the portal serving again.

    .venv/bin/python bench/supervisor.py
    RUNS=9 KILLS=0 .venv/bin/python bench/supervisor.py     # start-to-healthy only
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from edgehost.engine.litestream import find_binary  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} not healthy in {timeout}s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def home_env(home: Path, port: int) -> dict[str, str]:
    shutil.copy(REPO / "litestream.yml", home / "litestream.yml")
    return {**os.environ, "EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(port), "EDGEHOST_METRICS_PORT": "0"}


def edgehost_up(runs: int) -> tuple[list[float], int, int, list[float]]:
    starts, kills = [], []
    sup_rss = guard_rss = 0
    for i in range(runs):
        home = Path(tempfile.mkdtemp(prefix="bench-up-"))
        port = free_port()
        env = home_env(home, port)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "edgehost", "up"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        starts.append(wait_healthy(f"http://127.0.0.1:{port}/healthz") - t0)
        if i == 0:
            time.sleep(3)
            sup_rss = rss_kib(proc.pid)
            guard_rss = sum(rss_kib(g) for g in children(proc.pid))
            from edgehost.supervisor import SupervisorClient

            client = SupervisorClient(home / "state" / "supervisor.sock")
            for _ in range(int(os.environ.get("KILLS", "5"))):
                portal = next(s for s in client.status()["services"] if s["name"] == "portal")
                t_kill = time.monotonic()
                os.kill(portal["pid"], signal.SIGKILL)
                time.sleep(0.05)
                kills.append(wait_healthy(f"http://127.0.0.1:{port}/healthz") - t_kill)
                time.sleep(35)  # past healthy_after, so each kill starts from the first backoff step
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(90)
        shutil.rmtree(home, ignore_errors=True)
    return starts, sup_rss, guard_rss, kills


def replicate_exec(runs: int) -> list[float]:
    starts = []
    for _ in range(runs):
        home = Path(tempfile.mkdtemp(prefix="bench-exec-"))
        port = free_port()
        env = home_env(home, port)
        (home / "data").mkdir()
        (home / "state").mkdir()
        env.update({"EDGEHOST_DATA_DIR": str(home / "data"), "EDGEHOST_REPLICA_URL": (home / "replica").as_uri(),
                    "EDGEHOST_GLOBAL_DB_NAME": "honestcam-study.db", "EDGEHOST_PROPERTY_DB_NAME": "honestcam.db",
                    "EDGEHOST_S3_ENDPOINT": "", "EDGEHOST_S3_REGION": "", "EDGEHOST_S3_FORCE_PATH_STYLE": "",
                    "EDGEHOST_LITESTREAM_SOCKET": str(home / "state" / "ls.sock")})
        env.pop("AWS_CA_BUNDLE", None)
        t0 = time.monotonic()
        proc = subprocess.Popen([str(find_binary()), "replicate", "-config", str(home / "litestream.yml"), "-exec",
                                 f"{sys.executable} -m edgehost portal"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        starts.append(wait_healthy(f"http://127.0.0.1:{port}/healthz") - t0)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(90)
        shutil.rmtree(home, ignore_errors=True)
    return starts


def main() -> None:
    runs = int(os.environ.get("RUNS", "5"))
    exec_starts = replicate_exec(runs)
    up_starts, sup_rss, guard_rss, kills = edgehost_up(runs)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"start to /healthz 200, median of {runs}: edgehost up {med(up_starts):.2f}s, "
          f"litestream replicate -exec {med(exec_starts):.2f}s, ratio {med(up_starts) / med(exec_starts):.2f}")
    print(f"  edgehost up runs: {', '.join(f'{x:.2f}' for x in up_starts)}")
    print(f"  replicate -exec runs: {', '.join(f'{x:.2f}' for x in exec_starts)}")
    print(f"supervisor RSS {sup_rss / 1024:.1f} MiB; its guards together {guard_rss / 1024:.1f} MiB")
    if kills:
        print(f"kill -9 portal -> serving again: {', '.join(f'{x:.2f}s' for x in kills)} (median {med(kills):.2f}s)")


if __name__ == "__main__":
    main()
