"""Real subprocesses for the end-to-end tests: the portal, litestream, the supervisor."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edgehost import litestream


class Proc:
    """A child in its own process group, with its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
        self.argv = argv
        self.log_path = log
        self._log = open(log, "ab")
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until(fn, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def edgehost_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgehost", *args]


def start_portal(home, log_name: str = "portal.log") -> tuple[Proc, str]:
    settings = home.settings()
    proc = Proc(edgehost_argv("portal"), home.environ(), home.path / log_name)
    url = settings.portal_url
    wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 30, what=f"portal at {url}")
    return proc, url


def start_litestream(home, log_name: str = "litestream.log") -> Proc:
    settings = home.settings()
    binary = litestream.find_binary()
    env, _ = litestream.child_environ(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    proc = Proc([str(binary), "replicate", "-config", str(settings.litestream_config)], env, home.path / log_name)
    sock = litestream.ControlSocket(settings.litestream_socket)
    wait_until(sock.alive, 30, what="litestream control socket")
    return proc


def plain_restore(url: str, out: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """`litestream restore -o OUT URL` with no edgehost code in between."""
    binary = litestream.find_binary()
    env = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
    return subprocess.run([str(binary), "restore", *extra, "-o", str(out), url], env=env,
                          capture_output=True, text=True, timeout=120)


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
