"""The durable-ack path's hold on litestream's control socket, on a real unix-socket HTTP server that
answers as litestream's does: a client closed under a thread, and a socket missing for a moment."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from edgehost.engine.litestream import ControlSocket
from edgehost.errors import EnvironmentProblem
from edgehost.portal.durable import DurableAcks, NotReplicated


class _Litestream(BaseHTTPRequestHandler):
    """GET /info and POST /sync as litestream answers them: every sync replicated up to txid 7."""

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._answer({"version": "test"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer({"txid": 7, "replicated_txid": 7, "changed": True})

    def log_message(self, *args) -> None:
        pass


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(path: Path) -> _UnixHTTP:
    server = _UnixHTTP(str(path), _Litestream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_shared_client_closed_by_another_thread_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "ls.sock"
    server = _serve(path)
    try:
        sock = ControlSocket(path, timeout=2)
        sock._client().close()  # what another thread's drop does between our taking it and our request
        assert sock.info() == {"version": "test"}
    finally:
        server.shutdown()
        server.server_close()
    # A socket file nobody listens on (litestream killed): an environment problem, never a crash.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    sock = ControlSocket(tmp_path / "stale.sock", timeout=2)
    sock._client().close()
    with pytest.raises(EnvironmentProblem):
        sock.info()


def test_durable_writes_wait_out_a_moment_without_litestream_and_fail_fast_once_it_stays_away(tmp_path):
    path = tmp_path / "ls.sock"
    db = tmp_path / "honestcam.db"
    acks = DurableAcks(path, timeout=2.0, batch_ms=0)

    async def confirm() -> float:
        return await acks.confirm("acme", db)

    servers = []

    def litestream_back() -> None:
        time.sleep(0.6)
        servers.append(_serve(path))

    try:
        # No socket now (litestream restarting): the write waits, and is confirmed once it answers.
        threading.Thread(target=litestream_back, daemon=True).start()
        took = asyncio.run(confirm())
        assert 0.5 < took < 2.0, took
        server = servers.pop()
        server.shutdown()
        server.server_close()
        path.unlink()

        # Gone for good: the first write waits its timeout, the next ones (gone > timeout) fail at once.
        began = time.monotonic()
        with pytest.raises(NotReplicated):
            asyncio.run(confirm())
        assert time.monotonic() - began >= 1.9
        time.sleep(0.2)
        began = time.monotonic()
        with pytest.raises(NotReplicated, match="litestream is not running"):
            asyncio.run(confirm())
        assert time.monotonic() - began < 0.5
        assert acks.stats()["acme"]["acked"] == 1 and acks.stats()["acme"]["timeouts"] == 2
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        acks.close()
