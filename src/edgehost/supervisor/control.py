"""The supervisor's control socket (unix, mode 0600) and its metrics endpoint (127.0.0.1)."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx

from edgehost.engine import loopback
from edgehost.errors import EnvironmentProblem

Handler = Callable[[str, str], tuple[int, Any]]  # (method, path) -> (status, json body | text | Page)


@dataclass(frozen=True)
class Page:
    """A body that is neither JSON nor Prometheus text (the status page's HTML)."""

    body: str | bytes
    content_type: str = "text/html; charset=utf-8"


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _handler_class(handle: Handler, content_type: str = "application/json"):
    class _H(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            status, body = handle(method, self.path)
            if isinstance(body, Page):
                data = body.body.encode() if isinstance(body.body, str) else body.body
                kind = body.content_type
            elif isinstance(body, str):
                data, kind = body.encode(), "text/plain; version=0.0.4"
            else:
                data, kind = json.dumps(body).encode(), content_type
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._reply("POST")

        def address_string(self) -> str:
            return "local"

        def log_message(self, *args: Any) -> None:
            pass

    return _H


class ControlServer:
    """HTTP over a unix socket that only the kit's user can open."""

    def __init__(self, path: Path, handle: Handler, poll_interval: float = 0.5):
        self.path = Path(path)
        self.poll_interval = poll_interval  # how soon close() returns: serve_forever looks this often
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o177)  # the socket is born 0600
        try:
            self.server = _UnixHTTPServer(str(self.path), _handler_class(handle))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.thread = threading.Thread(target=lambda: self.server.serve_forever(self.poll_interval), daemon=True,
                                       name="control")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


class MetricsServer:
    def __init__(self, port: int, handle: Handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler_class(handle))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="metrics")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SupervisorClient:
    """What `edgehost status` and `edgehost restore --in-place` use to talk to a running `edgehost up`."""

    def __init__(self, path: Path, timeout: float = 120.0):
        self.path = Path(path)
        self.timeout = timeout

    def _call(self, method: str, url: str) -> dict[str, Any]:
        if not self.path.exists():
            raise EnvironmentProblem(f"no supervisor running (no control socket at {self.path}); start it with: edgehost up")
        try:
            with loopback.client(uds=str(self.path), base_url="http://edgehost", timeout=self.timeout) as client:
                resp = client.request(method, url)
        except httpx.HTTPError as exc:
            raise EnvironmentProblem(f"supervisor control socket {self.path}: {exc or type(exc).__name__}") from None
        body = resp.json()
        if resp.status_code >= 400:
            raise EnvironmentProblem(f"supervisor: {body.get('error', resp.status_code)}")
        return body

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def hold(self, service: str) -> dict[str, Any]:
        """Stop a service and keep it stopped until `release`."""
        return self._call("POST", f"/services/{service}/hold")

    def release(self, service: str) -> dict[str, Any]:
        """Start a held service again and wait until it is ready."""
        return self._call("POST", f"/services/{service}/release")
