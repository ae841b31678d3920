"""Bad requests get a 4xx JSON answer and write nothing; a full disk is a 503 with Retry-After.

Each case here answered 500, or stored a row that broke every later read, before the portal
validated its requests (issue 13). The rows are counted in the database files themselves.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from starlette.testclient import TestClient

from edgehost.portal import store
from edgehost.portal.app import create_app

from procs import Proc, edgehost_argv, wait_until


@pytest.fixture(autouse=True)
def _no_durable_acks(kit_home):
    # These tests run the portal without litestream: durable writes would answer 503 (test_durable.py).
    kit_home.env["EDGEHOST_DURABLE_PROPERTY_DBS"] = "false"


@pytest.fixture
def portal(kit_home):
    settings = kit_home.settings()
    store.ensure_global(settings)
    store.create_property(settings, "acme")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.put("/study/users/u1", json={"email": "u1@example.com"})
        yield client, settings


def rows(settings) -> dict[str, int]:
    """Rows in the files, read without the portal."""
    out = {}
    with sqlite3.connect(settings.data_dir / "acme" / "honestcam.db") as conn:
        out["events"] = conn.execute("SELECT COUNT(*) FROM compliance_events").fetchone()[0]
    with sqlite3.connect(settings.global_db) as conn:
        out["users"] = conn.execute("SELECT COUNT(*) FROM study_users").fetchone()[0]
        out["progress"] = conn.execute("SELECT COUNT(*) FROM study_progress").fetchone()[0]
    return out


def send(client, method: str, path: str, raw: bytes | str) -> httpx.Response:
    body = raw.encode() if isinstance(raw, str) else raw
    return client.request(method, path, content=body, headers={"content-type": "application/json"})


BAD_BODIES = [
    ("POST", "/properties/acme/events", r'{"kind": "door", "payload": "\ud800"}'),  # a lone surrogate
    ("POST", "/properties/acme/events", '{"kind": "door", "payload": {"n": NaN}}'),
    ("POST", "/properties/acme/events", '{"kind": "door", "payload": Infinity}'),
    ("POST", "/properties/acme/events", '{"kind": "door", "payload": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("POST", "/properties/acme/events", '{"kind": "door", "actor": {"name": "x"}}'),
    ("POST", "/properties/acme/events", '{"kind": "door", "occurred_at": ["2026"]}'),
    ("POST", "/properties/acme/events", '{"kind": "door", "occurred_at": 123456789012345678901234567890}'),
    ("POST", "/properties/acme/events", '{"kind": "door", "occurred_at": "yesterday"}'),
    ("POST", "/properties/acme/events", '{"kind": "door", "occurred_at": "2026-11-23T10:00:00"}'),  # no zone
    ("POST", "/properties/acme/events", '{"kind": 5}'),
    ("POST", "/properties/acme/events", '["not", "an", "object"]'),
    ("POST", "/properties/acme/events", b'{"kind": "door", "payload": "\xff"}'),  # not UTF-8
    ("PUT", "/study/users/u2", '{"email": {"a": 1}}'),
    ("PUT", "/study/users/u2", '{"display_name": ["x"]}'),
    ("PUT", "/study/users/u2", r'{"display_name": "\udfff"}'),
    ("PUT", "/study/progress/u1", '{"progress": NaN}'),
    ("PUT", "/study/progress/u1", '{"progress": -Infinity}'),
    ("PUT", "/study/progress/u1", r'{"progress": {"\ud800": 1}}'),
    ("POST", "/properties/acme/events", '{"kind": "k", "payload": 1e400}'),  # a float literal that overflows
    ("POST", "/properties/acme/events", r'{"kind": "\u0000"}'),  # SQLite's length() stops at NUL
    ("PUT", "/study/users/u2", r'{"email": "a\u0000b"}'),
    ("PUT", "/study/users/%00", '{"email": "x"}'),  # the same in the path
    ("PUT", "/study/users/%ED%A0%80", '{"email": "x"}'),  # not UTF-8 once percent-decoded
    ("PUT", "/study/progress/%00", '{"progress": 1}'),
]


@pytest.mark.parametrize("method,path,raw", BAD_BODIES, ids=[f"{i}" for i in range(len(BAD_BODIES))])
def test_a_bad_body_is_a_4xx_json_answer_and_writes_nothing(portal, method, path, raw):
    client, settings = portal
    before = rows(settings)
    resp = send(client, method, path, raw)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:200])
    assert resp.headers["content-type"].startswith("application/json") and resp.json()["error"]
    assert rows(settings) == before
    # ...and every read still answers.
    for read in ("/properties/acme/events", "/study/users", "/study/progress", "/healthz"):
        assert client.get(read).status_code == 200, read


@pytest.mark.parametrize("query", ["after=123456789012345678901234567890", "limit=123456789012345678901234567890",
                                   "limit=-1", "limit=0", "after=-5", "after=x", "limit=1e3", "limit=10001"])
def test_bad_paging_is_400(portal, query):
    client, _ = portal
    resp = client.get(f"/properties/acme/events?{query}")
    assert resp.status_code == 400 and "must be a whole number" in resp.json()["error"]


def test_limit_bounds_the_page(portal):
    client, _ = portal
    for i in range(5):
        assert client.post("/properties/acme/events", json={"kind": "door", "payload": {"n": i}}).status_code == 201
    assert len(client.get("/properties/acme/events?limit=2").json()["events"]) == 2
    assert len(client.get("/properties/acme/events?limit=10000").json()["events"]) == 5


def test_a_valid_event_keeps_its_fields(portal):
    client, settings = portal
    resp = client.post("/properties/acme/events", json={"kind": "door", "actor": "ana", "payload": {"big": 10**30},
                                                        "occurred_at": "2026-11-23T10:00:00Z"})
    assert resp.status_code == 201, resp.text
    event = client.get("/properties/acme/events").json()["events"][-1]
    assert event["payload"] == {"big": 10**30} and event["occurred_at"] == "2026-11-23T10:00:00Z"
    assert rows(settings)["events"] == 1


def test_unknown_routes_and_methods_answer_json(portal):
    client, _ = portal
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/json")
    assert missing.json()["error"]
    wrong = client.delete("/study/users")
    assert wrong.status_code == 405 and wrong.json()["error"] and "GET" in wrong.headers["allow"]


def test_a_body_over_the_limit_is_413_and_writes_nothing(kit_home):
    kit_home.env["EDGEHOST_PORTAL_MAX_BODY_BYTES"] = "4096"
    settings = kit_home.settings()
    store.ensure_global(settings)
    store.create_property(settings, "acme")
    with TestClient(create_app(settings)) as client:
        big = json.dumps({"kind": "door", "payload": "x" * 5000})
        resp = send(client, "POST", "/properties/acme/events", big)
        assert resp.status_code == 413 and "4096" in resp.json()["error"]
        # Streamed without a Content-Length, it is cut off as it arrives.
        chunks = (big[i:i + 1000].encode() for i in range(0, len(big), 1000))
        resp = client.post("/properties/acme/events", content=chunks, headers={"content-type": "application/json"})
        assert resp.status_code == 413
        assert rows(settings)["events"] == 0
        assert send(client, "POST", "/properties/acme/events", '{"kind": "door"}').status_code == 201


def test_a_full_disk_is_503_with_retry_after_and_the_portal_goes_on(portal):
    client, settings = portal
    conns = client.app.state.connections
    path = settings.data_dir / "acme" / "honestcam.db"
    client.post("/properties/acme/events", json={"kind": "door"})
    with conns.use(path) as conn:  # the portal's own long-lived connection: cap the file where it is now
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
    answers = [client.post("/properties/acme/events", json={"kind": "door", "payload": "x" * 3000}) for _ in range(20)]
    full = [a for a in answers if a.status_code == 503]
    assert full, [a.status_code for a in answers]
    assert full[0].headers["retry-after"] == "60" and "storage is full" in full[0].json()["error"]
    assert all(a.status_code in (201, 503) for a in answers)
    stored = rows(settings)["events"]
    assert stored == 1 + sum(a.status_code == 201 for a in answers)  # a 503 wrote nothing
    assert client.get("/properties/acme/events?limit=10000").status_code == 200


def test_a_tenant_whose_first_open_waits_on_a_lock_does_not_hold_up_the_others(portal):
    """Another process holds tenant `slow`'s file exclusively (as a long checkpoint or a stray tool
    would), so the portal's first open of it waits in SQLite's busy handler for up to 5 s. Meanwhile
    `acme`, already open, and `fresh`, opened for the first time, must answer: the portal used to open
    every database under one lock, so every request of every tenant waited behind that one open."""
    import threading

    client, settings = portal
    for slug in ("slow", "fresh"):
        store.create_property(settings, slug)
    assert client.get("/properties/acme/events").status_code == 200
    holder = sqlite3.connect(settings.data_dir / "slow" / "honestcam.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO compliance_events (occurred_at, kind) VALUES ('2026-01-01T00:00:00Z', 'x')")
    slow: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: slow.append(client.get("/properties/slow/events")))
    try:
        waiting.start()
        time.sleep(0.5)  # the slow tenant's open is in the busy handler now
        assert waiting.is_alive()
        assert client.get("/properties/acme/events").status_code == 200
        assert client.get("/properties/fresh/events").status_code == 200
        assert waiting.is_alive(), "the other tenants were answered only after the slow open ended"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        waiting.join(10)
    assert slow and slow[0].status_code in (200, 503)


def test_one_connection_per_database_reopened_when_the_file_is_replaced(portal):
    client, settings = portal
    conns = client.app.state.connections
    for _ in range(3):
        client.post("/properties/acme/events", json={"kind": "door"})
        client.get("/study/users")
    assert len(conns._open) == 2  # the property's DB and the global DB, each opened once
    first = conns._open[settings.data_dir / "acme" / "honestcam.db"].conn
    # The file is swapped underneath (as restore --in-place does): the next request uses the new file.
    path = settings.data_dir / "acme" / "honestcam.db"
    replacement = settings.data_dir / "acme" / "new.db"
    with conns.use(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, the WAL empty
    src, dst = sqlite3.connect(path), sqlite3.connect(replacement)
    src.backup(dst)
    dst.execute("DELETE FROM compliance_events")
    dst.commit()
    dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    src.close(), dst.close()
    replacement.replace(path)
    assert client.get("/properties/acme/events").json()["events"] == []
    assert client.post("/properties/acme/events", json={"kind": "after-swap"}).status_code == 201
    assert conns._open[path].conn is not first
    assert rows(settings)["events"] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
fields = st.sampled_from(["kind", "payload", "actor", "occurred_at", "email", "display_name", "progress", "slug", "x"])


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(st.sampled_from([("POST", "/properties/acme/events"), ("PUT", "/study/users/u9"), ("PUT", "/study/progress/u1"),
                        ("POST", "/properties")]),
       st.dictionaries(fields, json_values, max_size=4) | json_values)
def test_any_json_body_is_never_a_5xx_and_writes_only_when_2xx(portal, target, body):
    client, settings = portal
    before = rows(settings)
    resp = send(client, *target, json.dumps(body))
    assert resp.status_code < 500, (resp.status_code, resp.text[:200])
    after = rows(settings)
    if resp.status_code >= 300:
        assert after == before
    for read in ("/properties/acme/events?limit=10000", "/study/users", "/study/progress"):
        assert client.get(read).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.e2e
def test_the_served_portal_refuses_a_large_upload_before_reading_it(kit_home):
    """Over real HTTP (uvicorn): a 10 MB event is refused with 413 and nothing is written."""
    settings = kit_home.settings()
    store.ensure_global(settings)
    store.create_property(settings, "acme")
    proc = Proc(edgehost_argv("portal"), kit_home.environ(), kit_home.path / "portal.log")
    try:
        url = settings.portal_url
        wait_until(lambda: _ok(f"{url}/healthz"), 30, what="portal")
        started = time.monotonic()
        resp = httpx.post(f"{url}/properties/acme/events", content=b'{"kind": "door", "payload": "' + b"x" * 10_000_000
                          + b'"}', headers={"content-type": "application/json"}, timeout=30)
        assert resp.status_code == 413 and resp.json()["error"]
        assert time.monotonic() - started < 30
        assert rows(settings)["events"] == 0
        assert httpx.get(f"{url}/nowhere").json()["error"]
    finally:
        proc.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
