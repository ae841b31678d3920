"""Real subprocesses for the end-to-end tests: the portal, litestream, the supervisor."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgehost.engine import litestream
from edgehost.settings import Settings, load_settings


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


# The shipped litestream.yml's tuning block and its snapshot block, as tests rewrite them (`retune`).
SHIPPED_TUNING = "levels:\n  - interval: 10m\n  - interval: 1h\nl0-retention: 15m\nl0-retention-check-interval: 1h"
SHIPPED_SNAPSHOT = "snapshot:\n  interval: 24h\n  retention: 168h"


def retune(config: Path, replacements: dict[str, str]) -> None:
    """Rewrite blocks of a copy of the shipped litestream.yml (each must be there as shipped)."""
    text = config.read_text()
    for old, new in replacements.items():
        assert old in text, "the shipped litestream.yml changed shape; update tests/procs.py SHIPPED_*"
        text = text.replace(old, new)
    config.write_text(text)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, and not one this process handed out before: the
    kernel may give a port it just freed again, and one home got the same port for its portal and its
    metrics (the portal then crash-looped on EADDRINUSE)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class KitHome:
    """A kit home directory (litestream.yml from the repo, data/, state/) and its environment."""

    path: Path
    env: dict[str, str]

    def __post_init__(self) -> None:
        # Each home's litestream serves its metrics on a port of its own: parallel supervisors on the
        # shipped default (9465) would read each other's counters.
        self.env.setdefault("EDGEHOST_LITESTREAM_METRICS_PORT", str(free_port()))

    def settings(self, **extra_env: str) -> Settings:
        return load_settings(self.path, {**self.env, **extra_env})

    def environ(self) -> dict[str, str]:
        """A full process environment for subprocesses run in this home."""
        return {**os.environ, **self.env}



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


def supervisor_status(settings) -> dict:
    from edgehost.supervisor import SupervisorClient

    return SupervisorClient(settings.supervisor_socket, timeout=5).status()


def service(settings, name: str) -> dict:
    return next(s for s in supervisor_status(settings)["services"] if s["name"] == name)


def start_supervisor(home, log_name: str = "up.log", wait: bool = True) -> Proc:
    """`edgehost up` as launchd would run it, waiting until every service is running."""
    settings = home.settings()
    proc = Proc(edgehost_argv("up"), home.environ(), home.path / log_name)
    if wait:
        def ready():
            if not proc.alive():
                raise AssertionError(f"edgehost up exited {proc.popen.returncode}:\n{proc.output()}")
            return all(s["state"] == "running" for s in supervisor_status(settings)["services"])

        wait_until(ready, 60, interval=0.2, what="edgehost up to run every service")
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no files, so it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return True


class Writer:
    """Posts events to one property in a thread and records every id the portal acknowledged."""

    def __init__(self, url: str, slug: str, pause: float = 0.0):
        import threading

        self.url, self.slug, self.pause = url, slug, pause
        self.acked: list[int] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self._stop.is_set():
                try:
                    ack = self._send(client, i)
                    if ack is not None:
                        self.acked.append(ack)
                    else:
                        self.errors += 1
                except httpx.HTTPError:
                    self.errors += 1
                    time.sleep(0.05)
                i += 1
                if self.pause:
                    time.sleep(self.pause)

    def _send(self, client: httpx.Client, i: int):
        """One write; what identifies it when the portal acknowledged it, else None."""
        resp = client.post(f"{self.url}/properties/{self.slug}/events", json={"kind": "w", "payload": {"i": i}})
        return resp.json()["id"] if resp.status_code == 201 else None

    def start(self) -> "Writer":
        self._thread.start()
        return self

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(10)
        return self.acked


def litestream_reset(settings, ref) -> None:
    """`litestream reset` of one database (litestream must be held): what its own hint says to run."""
    env, _ = litestream.child_environ(settings)
    proc = subprocess.run([str(litestream.find_binary()), "reset", "-config", str(settings.litestream_config),
                           str(ref.path)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def edgehost(home, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one `edgehost` command in a home, as a user would."""
    return subprocess.run(edgehost_argv(*args), env=home.environ(), capture_output=True, text=True, timeout=timeout)


def sync_db(settings, ref) -> dict:
    """Wait until litestream watches `ref`, then force a sync and wait for the upload."""
    sock = litestream.ControlSocket(settings.litestream_socket)
    wait_until(lambda: str(ref.path) in {d["path"] for d in sock.list()}, 30, what=f"litestream to watch {ref.path}")
    result = sock.sync(ref.path, wait=True)
    assert result["replicated_txid"] >= result["txid"], result
    return result


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 endpoint that records each request line the
    clients send ("GET /bucket?list-type=2&prefix=... HTTP/1.1"): the endpoint's own count of what
    a command asked, with no trust in the command's report of itself."""

    _REQUEST = re.compile(rb"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.1\r\n")

    def __init__(self, upstream: str):
        host, port = upstream.rsplit("//", 1)[-1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.requests: list[tuple[str, str]] = []
        self.times: list[float] = []  # time.time() each request line was seen, beside `requests`
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def lists(self) -> int:
        return sum(1 for method, target in self.requests if method == "GET" and "list-type=2" in target)

    def gets(self) -> int:
        return sum(1 for method, target in self.requests if method == "GET" and "list-type=2" not in target)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.times.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        buf = b""
        try:
            while data := src.recv(65536):
                if count:
                    buf += data
                    last = 0
                    for m in self._REQUEST.finditer(buf):
                        with self._lock:
                            self.requests.append((m.group(1).decode(), m.group(2).decode()))
                            self.times.append(time.time())
                        last = m.end()
                    buf = buf[last:][-8192:]  # a request line split between reads completes next time
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._listener.close()


class Receiver:
    """A local HTTP endpoint standing in for ntfy, a webhook and healthchecks: records every request;
    `fail_next` answers that many requests with 500 first."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        self.fail_next = 0
        self._lock = threading.Lock()
        receiver = self

        class _H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    failing = receiver.fail_next > 0
                    receiver.fail_next -= 1 if failing else 0
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                              "failed": failing, "at": time.time()})
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def got(self, path: str) -> list[dict]:
        """The requests that reached `path` and were answered 200."""
        with self._lock:
            return [r for r in self.requests if r["path"] == path and not r["failed"]]

    def notices(self, path: str = "/hook") -> list[dict]:
        """The webhook notices received (JSON bodies), in order."""
        import json

        return [json.loads(r["body"]) for r in self.got(path)]


def machine(home: KitHome, name: str) -> KitHome:
    """A home as one "machine" of several on one replica: its own id, a writer lease renewed every second."""
    home.env.update({"EDGEHOST_MACHINE_ID": name * 8, "EDGEHOST_LEASE_RENEW_SECONDS": "1",
                     "EDGEHOST_LEASE_TTL_SECONDS": "30"})
    return home


def twin(a: KitHome, tmp_path_factory, name: str) -> KitHome:
    """A second machine with A's settings and replica, its own home, ports and machine id."""
    import shutil

    path = tmp_path_factory.mktemp("m", numbered=True)
    shutil.copy(a.path / "litestream.yml", path / "litestream.yml")
    env = {**a.env, "EDGEHOST_HOME": str(path), "EDGEHOST_PORTAL_PORT": str(free_port()),
           "EDGEHOST_METRICS_PORT": str(free_port())}
    return machine(KitHome(path, env), name)


def power_cut(services: list[dict], supervisor: subprocess.Popen) -> None:
    """kill -9 a whole `edgehost up`: every service's process group (from its status), then the supervisor."""
    for svc in services:
        if svc.get("group"):
            try:
                os.killpg(svc["group"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(10)
