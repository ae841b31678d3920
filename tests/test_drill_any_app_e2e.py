"""The drill knows an app only by its contract (settings.app): another app, with its own tables,
migrations and smoke paths, drills green; a smoke path that answers 500 fails the drill, named."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap

import pytest

from edgehost.engine import layout
from procs import Proc, edgehost, edgehost_argv, pid_alive, start_supervisor, sync_db, wait_until

pytestmark = pytest.mark.e2e

NOTES_APP = textwrap.dedent('''
    """A tiny app that is not honestcam: notes in the global DB, items per shop."""
    import json, os, sqlite3
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    DATA = Path(os.environ["EDGEHOST_DATA_DIR"])
    (DATA.parent / "app.pid").write_text(str(os.getpid()))  # where the test finds it

    def rows(db, sql):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/up":
                status, body = 200, {"ok": True}
            elif self.path == "/notes":
                status, body = 200, {"notes": rows(DATA / "notes-global.db", "SELECT id, body FROM notes")}
            elif self.path.startswith("/shops/"):
                db = DATA / self.path.split("/")[2] / "shop.db"
                status, body = (200, {"items": rows(db, "SELECT id, name FROM items")}) if db.exists() else (404, {})
            elif self.path == "/slow":
                import time; time.sleep(120); status, body = 200, {}
            elif self.path == "/broken":
                status, body = 500, {"error": "boom"}
            else:
                status, body = 404, {}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((os.environ["EDGEHOST_PORTAL_HOST"], int(os.environ["EDGEHOST_PORTAL_PORT"])), Handler).serve_forever()
''')


def _notes_home(home, smoke: list[str]) -> None:
    (home.path / "notes_app.py").write_text(NOTES_APP)
    for kind, sql in (("global", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, "
                                 "created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));"),
                      ("property", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                   "updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));")):
        folder = home.path / "app-migrations" / kind
        folder.mkdir(parents=True)
        (folder / "0001_first.sql").write_text(sql)
    (home.path / "edgehost.toml").write_text(textwrap.dedent(f"""
        global_db_name = "notes-global.db"
        property_db_name = "shop.db"

        [portal]
        command = [{json.dumps(sys.executable)}, "notes_app.py"]

        [app]
        health_path = "/up"
        migrations_dir = "app-migrations"
        append_only = {{ notes = "created_at" }}
        overwrite = {{ items = ["id", "updated_at"] }}
        smoke = {json.dumps(smoke)}
    """))


def _write(settings, slug: str) -> None:
    with sqlite3.connect(settings.global_db) as conn:
        conn.executemany("INSERT INTO notes(body) VALUES (?)", [(f"note {i}",) for i in range(5)])
    with sqlite3.connect(layout.property_db(settings, slug).path) as conn:
        conn.executemany("INSERT INTO items(name) VALUES (?)", [(f"item {i}",) for i in range(3)])
    for ref in layout.local_databases(settings):
        sync_db(settings, ref)


def _drill_notes_app(home, smoke: list[str]) -> tuple[int, dict]:
    """Set the notes app up with these smoke paths, run it under `edgehost up`, write, drill."""
    _notes_home(home, smoke)
    assert edgehost(home, "property", "add", "corner-shop").returncode == 0
    up = start_supervisor(home)
    try:
        _write(home.settings(), "corner-shop")
        proc = edgehost(home, "drill", "--json")
        return proc.returncode, json.loads(proc.stdout)
    finally:
        up.stop()


def test_another_app_drills_green_by_its_contract(kit_home):
    code, report = _drill_notes_app(kit_home, ["/notes", "/shops/{slug}"])
    assert code == 0, report["failures"]
    by_name = {d["name"]: d for d in report["databases"]}
    assert set(by_name) == {"global", "corner-shop"}
    assert by_name["global"]["rows"]["notes"] == 5 and by_name["corner-shop"]["rows"]["items"] == 3
    for db in by_name.values():
        assert db["checks"]["content"] == "ok" and db["checks"]["answers"] == "ok" and db["ok"]
        assert db["checks"]["fresh"] == "ok"


def test_a_smoke_path_that_fails_on_the_restored_app_fails_the_drill_naming_it(kit_home):
    code, report = _drill_notes_app(kit_home, ["/notes", "/broken", "/shops/{slug}"])
    assert code == 1 and report["status"] == "fail"
    assert report["failures"] == ["global: answers: GET /broken answered 500"], report["failures"]


def test_a_killed_drill_leaves_no_portal_serving_scratch_data(kit_home):
    """The drill runs the restored app as the supervisor runs its services: under the parent-death guard."""
    _notes_home(kit_home, ["/slow"])
    assert edgehost(kit_home, "property", "add", "corner-shop").returncode == 0
    up = start_supervisor(kit_home)
    try:
        _write(kit_home.settings(), "corner-shop")
        drill = Proc(edgehost_argv("drill"), kit_home.environ(), kit_home.path / "drill.log")
        pid_files = lambda: list((kit_home.path / "state" / "drills").glob("drill-*/app.pid"))  # noqa: E731
        wait_until(lambda: pid_files() and pid_files()[0].read_text(), 60, what="the drill to boot the app")
        app_pid = int(pid_files()[0].read_text())
        assert pid_alive(app_pid)
        drill.popen.kill()  # SIGKILL to the drill alone: no cleanup of its own runs
        wait_until(lambda: not pid_alive(app_pid), 15, what="the app to die with the drill")
    finally:
        up.stop()
