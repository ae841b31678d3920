"""`edgehost drill`: the whole rehearsal on 20 tenants, the accidental-delete scenario, and failures."""

from __future__ import annotations

import json

import httpx
import pytest

from edgehost.engine import layout, litestream
from edgehost.engine.replica import ReplicaStore
from procs import edgehost, start_supervisor, wait_until

pytestmark = pytest.mark.e2e


def _populate(settings, n_tenants, events=5):
    url = settings.portal_url
    for i in range(n_tenants):
        slug = f"prop-{i:02d}"
        httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        for j in range(events + i % 3):
            httpx.post(f"{url}/properties/{slug}/events", json={"kind": "k", "payload": {"j": j}}).raise_for_status()
    for u in ("u1", "u2"):
        httpx.put(f"{url}/study/users/{u}", json={"email": f"{u}@x"}).raise_for_status()
        httpx.put(f"{url}/study/progress/{u}", json={"progress": {"step": 1}}).raise_for_status()
    sock = litestream.ControlSocket(settings.litestream_socket)
    for ref in layout.local_databases(settings):
        wait_until(lambda: str(ref.path) in {d["path"] for d in sock.list()}, 30, what="litestream to watch")
        sock.sync(ref.path, wait=True)


def test_a_drill_of_20_tenants_restores_boots_and_compares(s3_home, tmp_path):
    up = start_supervisor(s3_home)
    try:
        settings = s3_home.settings()
        _populate(settings, 20)
        # the live portal keeps changing after the restore point: still a pass (append-only prefix,
        # overwrites changed since)
        httpx.post(f"{settings.portal_url}/properties/prop-00/events", json={"kind": "late"}).raise_for_status()
        report_md = tmp_path / "drill.md"
        proc = edgehost(s3_home, "drill", "--report", str(report_md), "--json")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        assert report["status"] == "pass"
        assert len(report["databases"]) == 21
        assert all(db["ok"] and db["checks"]["answers"] == "ok" for db in report["databases"])
        assert report["rto_seconds"] > 0 and report["restore_seconds"] <= report["rto_seconds"]
        assert "PASS" in report_md.read_text() and json.loads(report_md.with_suffix(".json").read_text())["status"] == "pass"
        status = json.loads(edgehost(s3_home, "status", "--json").stdout)
        assert status["last_drill"]["status"] == "pass" and status["last_drill"]["databases"] == 21
    finally:
        assert up.stop() == 0


def test_accidental_delete_scenario_brings_the_rows_back(s3_home):
    up = start_supervisor(s3_home)
    try:
        settings = s3_home.settings()
        _populate(settings, 2, events=30)
        before = (settings.data_dir / "prop-01" / "honestcam.db").read_bytes()
        proc = edgehost(s3_home, "drill", "--scenario", "accidental-delete", "--slug", "prop-01", "--json")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        assert report["status"] == "pass"
        checks = report["databases"][0]["checks"]
        assert checks == {"restore_by_time": "ok", "restore_by_txid": "ok"}
        assert "deleted" in report["notes"][0]
        # the live database was only read
        assert len(httpx.get(f"{settings.portal_url}/properties/prop-01/events").json()["events"]) == 31
        del before
    finally:
        up.stop()


def test_a_drill_fails_on_a_corrupted_replica_and_cannot_run_without_one(s3_home, kit_home):
    proc = edgehost(kit_home, "drill")
    assert proc.returncode == 3 and "holds no databases" in proc.stderr

    up = start_supervisor(s3_home)
    try:
        settings = s3_home.settings()
        _populate(settings, 2)
        # Hold litestream first: a compaction or snapshot it writes after the corruption would hand
        # the drill clean copies again.
        from edgehost.supervisor import SupervisorClient

        SupervisorClient(settings.supervisor_socket).hold("litestream")
        store = ReplicaStore.from_settings(settings)
        for obj in list(store.walk("prop-01")):
            if obj.key.endswith(".ltx"):
                data = bytearray(store.read(obj.key))
                data[len(data) // 2] ^= 0xFF
                store.write(obj.key, bytes(data))
        proc = edgehost(s3_home, "drill", "--json")
        assert proc.returncode == 1, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["status"] == "fail"
        assert any(f.startswith("prop-01:") for f in report["failures"])
    finally:
        up.stop()
