"""verify's pin when litestream refuses the sync: the error says what litestream answered, and the
writers paused for each try are released (the database takes writes again)."""

from __future__ import annotations

import json
import socketserver
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from edgehost.engine.litestream import ControlSocket
from edgehost.engine.sqlite import connect
from edgehost.errors import EdgehostError
from edgehost.ops.verify import PAUSE_TRIES, pin_after_sentinel


class _Refusing(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        type(self).calls += 1
        body = json.dumps({"error": "database not found: /x/honestcam.db"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _UnixHTTP(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_a_refused_sync_is_named_and_the_writers_are_released(tmp_path):
    _Refusing.calls = 0
    db = tmp_path / "honestcam.db"
    connect(db, create=True).close()
    path = tmp_path / "ls.sock"
    server = _UnixHTTP(str(path), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EdgehostError) as err:
            pin_after_sentinel(db, ControlSocket(path, timeout=2))
    finally:
        server.shutdown()
        server.server_close()
    assert "database not found" in str(err.value) and "\n" not in str(err.value), err.value
    assert _Refusing.calls == PAUSE_TRIES
    other = sqlite3.connect(db, timeout=0)
    other.execute("CREATE TABLE after_verify(x)")  # no lock left behind
    other.close()
