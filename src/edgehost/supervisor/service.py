"""One supervised child: its spec, its process group, its output, its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgehost.supervisor import guard
from edgehost.supervisor.guard import PID_MARKER
from edgehost.supervisor.logs import LogHub
from edgehost.supervisor.policy import Backoff


@dataclass
class ServiceSpec:
    """What to run and how to know it is up."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    ready: Callable[[], bool]
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    cwd: Path | None = None


class Service:
    """A child run through the parent-death guard, as the leader of its own process group."""

    STOPPED, STARTING, RUNNING, BACKOFF, FAILED, HELD = "stopped", "starting", "running", "backoff", "failed", "held"

    def __init__(self, spec: ServiceSpec, backoff: Backoff, hub: LogHub):
        self.spec = spec
        self.backoff = backoff
        self.hub = hub
        self.state = self.STOPPED
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.starts = 0
        self.started_at = 0.0  # monotonic
        self.started_wall = 0.0
        self.ready_once = False
        self.next_start_at = 0.0
        self.last_exit: int | None = None
        self.child_pid: int | None = None
        self.reason = ""  # why a FAILED service is not retried (a config problem), shown by status
        self.adopted = False  # a promoted standby's running portal, not yet told to take writes
        self.adopted_ready: Callable[[], bool] | None = None  # its readiness probe, instead of the spec's
        self._pump: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """The service's own pid (not the guard's) while it runs."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return self.child_pid

    def start(self) -> None:
        # The guard runs as a plain script in isolated mode without site-packages: it needs only the
        # standard library, and `-m edgehost.supervisor.guard` would import the kit first (~0.3 s).
        argv = [sys.executable, "-I", "-S", guard.__file__, str(self.spec.stop_timeout), "--", *self.spec.argv]
        self.proc = subprocess.Popen(
            argv,
            env=self.spec.env,
            cwd=self.spec.cwd,
            stdin=subprocess.PIPE,  # held open: EOF tells the guard the supervisor died
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.adopted, self.adopted_ready = False, None
        if self.starts:
            self.restarts += 1
        self.starts += 1
        self.child_pid = None
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.state = self.STARTING
        self._pump = threading.Thread(target=self._pump_output, args=(self.proc,), daemon=True,
                                      name=f"pump-{self.name}")
        self._pump.start()

    def _pump_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            text = raw.decode("utf-8", "replace")
            if text.startswith(PID_MARKER):
                self.child_pid = int(text[len(PID_MARKER):])
                continue
            self.hub.line(self.name, text)
        proc.stdout.close()

    def poll(self) -> int | None:
        """The exit code if the child has exited since it was started, else None."""
        if self.proc is None:
            return None
        return self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float, hurry: threading.Event | None = None, graceful: bool = True) -> int | None:
        """SIGTERM the group, wait up to `timeout` (less if hurried), then SIGKILL. Returns the exit code.

        `graceful=False`: SIGKILL at once. For a litestream that must not write to the replica any
        more: on SIGTERM it would push everything it has in a final sync.
        """
        if self.proc is None:
            return None
        if graceful and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                if hurry is not None and hurry.is_set():
                    break
                time.sleep(0.05)
        if graceful and self.proc.poll() is None:
            self.hub.line("edgehost", f"{self.name} did not stop in time: SIGKILL")
        # Always sweep the group: a grandchild must not outlive its service.
        self.signal(signal.SIGKILL)
        code = self.proc.wait()
        if self.proc.stdin:
            self.proc.stdin.close()
        if self._pump:
            self._pump.join(timeout=2)
        self.last_exit = code
        return code

    def release_pipes(self) -> None:
        if self.proc and self.proc.stdin:
            self.proc.stdin.close()

    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.state in (self.STARTING, self.RUNNING) else 0.0

    def describe(self) -> dict:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "group": self.proc.pid if self.pid else None,
            "restarts": self.restarts,
            "uptime_seconds": round(self.uptime(), 1),
            "last_exit": self.last_exit,
            "reason": self.reason,
        }
