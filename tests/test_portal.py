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
