"""The reference portal's API, in process (the e2e tests drive it over real HTTP)."""

import pytest
from starlette.testclient import TestClient

from edgehost.portal import store
from edgehost.portal.app import create_app


@pytest.fixture
def client(kit_home):
    settings = kit_home.settings()
    store.ensure_global(settings)
    return TestClient(create_app(settings))


def test_properties_are_created_and_listed(client):
    assert client.post("/properties", json={"slug": "acme"}).status_code == 201
    assert client.post("/properties", json={"slug": "acme"}).status_code == 409
    assert client.post("/properties", json={"slug": "../etc"}).status_code == 400
    assert client.get("/properties").json() == {"properties": ["acme"]}


def test_events_are_appended_and_listed_in_order(client):
    client.post("/properties", json={"slug": "acme"})
    ids = [client.post("/properties/acme/events", json={"kind": "door", "payload": {"n": i}}).json()["id"] for i in range(3)]
    assert ids == sorted(ids)
    events = client.get("/properties/acme/events").json()["events"]
    assert [e["payload"]["n"] for e in events] == [0, 1, 2]
    assert [e["id"] for e in client.get(f"/properties/acme/events?after={ids[0]}").json()["events"]] == ids[1:]
    assert client.get("/properties/nope/events").status_code == 404
    assert client.post("/properties/acme/events", json={"payload": {}}).status_code == 400


def test_study_progress_is_overwritten_per_user(client):
    assert client.put("/study/progress/u1", json={"progress": {"step": 1}}).status_code == 404  # no such user
    client.put("/study/users/u1", json={"email": "u1@example.com"})
    client.put("/study/progress/u1", json={"progress": {"step": 1}})
    client.put("/study/progress/u1", json={"progress": {"step": 2}})
    assert client.get("/study/progress/u1").json()["progress"] == {"step": 2}
    assert len(client.get("/study/progress").json()["progress"]) == 1
    assert client.get("/study/users/u1").json()["email"] == "u1@example.com"


def test_healthz_opens_every_database(client, kit_home):
    client.post("/properties", json={"slug": "acme"})
    body = client.get("/healthz").json()
    assert body["ok"] is True
    assert set(body["databases"]) == {"global", "acme"}
    # a broken property DB turns health red and names it
    path = kit_home.settings().data_dir / "acme" / "honestcam.db"
    path.write_bytes(b"not a database at all" * 100)
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json()["databases"]["acme"]["ok"] is False


def test_with_access_configured_the_portal_refuses_requests_without_a_jwt(kit_home):
    settings = kit_home.settings(EDGEHOST_ACCESS_TEAM="myteam", EDGEHOST_ACCESS_AUD="a" * 64)
    store.ensure_global(settings)
    client = TestClient(create_app(settings), client=("127.0.0.1", 5000))
    assert client.get("/healthz").status_code == 200  # loopback health checks stay open
    resp = client.get("/properties")
    assert resp.status_code == 403
    assert client.post("/properties", json={"slug": "x"}).status_code == 403
    assert not (settings.data_dir / "x").exists()


def test_each_database_is_migrated_as_the_portal_first_opens_it_and_a_failing_one_fails_alone(kit_home, tmp_path):
    """The portal starts without a pass over every database: a tenant behind the latest migration gets
    it on its first request, and a tenant whose migration fails fails alone (its requests and /healthz
    say so) while the others are served."""
    import shutil
    import sqlite3

    from edgehost.engine import layout
    from edgehost.engine.sqlite import schema_version

    settings = kit_home.settings()
    store.ensure_global(settings)
    for slug in ("a1", "b2"):
        store.create_property(settings, slug)
    with sqlite3.connect(layout.property_db(settings, "b2").path) as conn:
        conn.execute("CREATE TABLE extra(y)")  # the new migration cannot apply here
    folder = tmp_path / "migrations"
    shutil.copytree(settings.app.migrations_dir, folder)
    (folder / "property" / "0099_extra.sql").write_text("CREATE TABLE extra(x);")
    settings = settings.with_changes(app__migrations_dir=folder, durable__property_dbs=False)  # no litestream here
    client = TestClient(create_app(settings), raise_server_exceptions=False)

    assert client.post("/properties/a1/events", json={"kind": "k"}).status_code == 201
    with sqlite3.connect(layout.property_db(settings, "a1").path) as conn:
        assert schema_version(conn) == 99
    assert client.post("/properties/b2/events", json={"kind": "k"}).status_code >= 500
    health = client.get("/healthz")
    assert health.status_code == 503
    dbs = health.json()["databases"]
    assert dbs["a1"]["ok"] and dbs["a1"]["schema_version"] == 99 and dbs["global"]["ok"]
    assert not dbs["b2"]["ok"] and "extra" in dbs["b2"]["error"]
    assert client.get("/properties/a1/events").json()["events"]  # a1 is served on
