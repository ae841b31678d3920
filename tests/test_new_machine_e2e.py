"""No command creates a database the replica already holds: a new machine on an existing replica.

Home A writes, stops. A fresh home B on the same bucket follows the documented new-machine steps
(config check, doctor, migrate, then up): B must hold every row, and so must the replica's latest.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from edgehost.engine import layout, litestream
from procs import KitHome, edgehost, plain_restore, rows, start_supervisor

pytestmark = pytest.mark.e2e


def _second_home(a: KitHome, tmp_path_factory) -> KitHome:
    path = tmp_path_factory.mktemp("b", numbered=True)
    shutil.copy(a.path / "litestream.yml", path / "litestream.yml")
    env = {**a.env, "EDGEHOST_HOME": str(path)}
    return KitHome(path, env)


def _write_some(home: KitHome) -> dict:
    url = home.settings().portal_url
    events = {}
    for slug in ("alpha", "bravo"):
        httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        events[slug] = [httpx.post(f"{url}/properties/{slug}/events", json={"kind": "k"}).json()["id"]
                        for _ in range(7)]
    for i in range(5):
        httpx.put(f"{url}/study/users/u{i}", json={"email": f"u{i}@x.y"}).raise_for_status()
    return events


def test_migrate_on_a_new_machine_restores_instead_of_creating_an_empty_db(s3_home, tmp_path_factory, tmp_path):
    a = s3_home
    up = start_supervisor(a)
    events = _write_some(a)
    assert up.stop() == 0, up.output()

    b = _second_home(a, tmp_path_factory)
    assert not b.settings().data_dir.exists()
    for step in (("config", "check"), ("migrate",)):
        proc = edgehost(b, *step)
        assert proc.returncode == 0, f"{step}: {proc.stderr}"
    settings = b.settings()
    assert len(rows(settings.global_db, "SELECT user_id FROM study_users")) == 5
    migrated = edgehost(b, "migrate")  # a second run does nothing more
    assert migrated.returncode == 0 and "every database in the replica is on disk" in migrated.stderr

    up = start_supervisor(b)
    try:
        url = settings.portal_url
        assert len(httpx.get(f"{url}/study/users").json()["users"]) == 5
        for slug, ids in events.items():
            assert [e["id"] for e in httpx.get(f"{url}/properties/{slug}/events").json()["events"]] == ids
    finally:
        assert up.stop() == 0, up.output()

    # and the replica's latest is still the real data, not an empty database B made
    repl = litestream.replication(settings)
    out = tmp_path / "global.db"
    proc = plain_restore(repl.restore_url(layout.global_db(settings)), out, b.environ())
    assert proc.returncode == 0, proc.stderr
    assert len(rows(out, "SELECT user_id FROM study_users")) == 5


def test_property_add_refuses_a_slug_the_replica_holds(s3_home, tmp_path_factory):
    up = start_supervisor(s3_home)
    _write_some(s3_home)
    assert up.stop() == 0

    b = _second_home(s3_home, tmp_path_factory)
    proc = edgehost(b, "property", "add", "alpha")
    assert proc.returncode == 2
    assert "already exists in the replica" in proc.stderr and "edgehost restore alpha --to" in proc.stderr
    assert not layout.property_db(b.settings(), "alpha").path.exists()
    assert edgehost(b, "property", "add", "charlie").returncode == 0


def test_a_standalone_portal_on_a_new_machine_restores_the_global_db(s3_home, tmp_path_factory):
    from procs import start_portal

    up = start_supervisor(s3_home)
    _write_some(s3_home)
    assert up.stop() == 0
    b = _second_home(s3_home, tmp_path_factory)
    portal, url = start_portal(b)
    try:
        assert len(httpx.get(f"{url}/study/users").json()["users"]) == 5
    finally:
        portal.stop()


def test_a_replica_outage_at_boot_delays_the_start_and_then_restores(s3_home, moto_s3, tmp_path_factory):
    """After a power cut the network is often late: a new machine waits for the replica, then restores."""
    import time

    from moto.server import ThreadedMotoServer

    from procs import free_port, wait_until

    port = free_port()
    late = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    late.start()
    s3_home.env["EDGEHOST_S3_ENDPOINT"] = f"http://127.0.0.1:{port}"  # same moto backend, its own port
    up = start_supervisor(s3_home)
    events = _write_some(s3_home)
    assert up.stop() == 0
    late.stop()  # the endpoint goes away; moto keeps the buckets in this process

    b = _second_home(s3_home, tmp_path_factory)
    up = start_supervisor(b, wait=False)
    try:
        wait_until(lambda: "until the replica answers" in up.output(), 30, what="up to wait for the replica")
        time.sleep(3)
        assert up.alive() and not b.settings().global_db.exists()
        late = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        late.start()
        url = b.settings().portal_url
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 90, what="the portal after the outage")
        assert len(httpx.get(f"{url}/study/users").json()["users"]) == 5
        assert [e["id"] for e in httpx.get(f"{url}/properties/alpha/events").json()["events"]] == events["alpha"]
    finally:
        assert up.stop() == 0, up.output()[-2000:]
        late.stop()


def test_a_replica_outage_on_a_machine_with_its_data_starts_at_once(s3_home):
    """The portal serves at once; litestream waits until the replica answers and the writer lease is
    this machine's (another may have taken it meanwhile), then uploads what was written."""
    from moto.server import ThreadedMotoServer

    from procs import free_port, service, wait_until

    up = start_supervisor(s3_home)
    _write_some(s3_home)
    assert up.stop() == 0
    port = free_port()
    s3_home.env["EDGEHOST_S3_ENDPOINT"] = f"http://127.0.0.1:{port}"  # nothing answers there yet
    settings = s3_home.settings()
    up = start_supervisor(s3_home, wait=False)
    late = None
    try:
        wait_until(lambda: service(settings, "portal")["state"] == "running", 60, what="the portal to serve")
        ls = service(settings, "litestream")
        assert ls["state"] == "held" and "waiting for the writer lease" in ls["reason"], ls
        assert len(httpx.get(f"{settings.portal_url}/study/users").json()["users"]) == 5
        assert "litestream once the replica answers and the writer lease is this machine's" in up.output()
        # Durable by default: stored here, 503 once its timeout passes without litestream ("stored_locally").
        offline = httpx.post(f"{settings.portal_url}/properties/alpha/events", json={"kind": "offline"}, timeout=30)
        assert offline.status_code == 503 and offline.json()["stored_locally"], offline.text
        added = offline.json()["id"]

        late = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # the same moto backend
        late.start()
        wait_until(lambda: service(settings, "litestream")["state"] == "running", 30, what="litestream after the outage")
        assert "writer lease confirmed" in up.output() or "writer lease held by this machine" in up.output()
        assert up.stop() == 0, up.output()[-2000:]  # the final sync landed: the offline write is in the replica
        up = None
        out = s3_home.path / "alpha-restored.db"
        ref = layout.property_db(settings, "alpha")
        proc = plain_restore(litestream.replication(settings).restore_url(ref), out, s3_home.environ())
        assert proc.returncode == 0, proc.stderr
        assert added in [r[0] for r in rows(out, "SELECT id FROM compliance_events")]
    finally:
        if up is not None:
            up.stop(timeout=90)
        if late is not None:
            late.stop()
