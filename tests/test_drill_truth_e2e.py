"""Drill reports that tell the truth: a stalled replica fails the drill, one database's failure is
charged to it alone, scratch data is cleaned up, and the drill history travels with the replica."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time

import httpx
import pytest

from edgehost.engine import layout, litestream

from edgehost.ops import state
from edgehost.engine.replica import ReplicaStore
from procs import KitHome, Writer, edgehost, free_port, service, start_supervisor, sync_db, wait_until

pytestmark = pytest.mark.e2e


def _populate(settings, slugs, events=3):
    url = settings.portal_url
    for slug in slugs:
        httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        for j in range(events):
            httpx.post(f"{url}/properties/{slug}/events", json={"kind": "k", "payload": {"j": j}}).raise_for_status()
    httpx.put(f"{url}/study/users/u1", json={"email": "u1@x"}).raise_for_status()
    httpx.put(f"{url}/study/progress/u1", json={"progress": {"step": 1}}).raise_for_status()
    for ref in layout.local_databases(settings):
        sync_db(settings, ref)


def _drill(home, *args):
    proc = edgehost(home, "drill", "--json", *args)
    assert proc.stdout, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_a_stalled_replica_fails_the_drill_naming_the_database_and_its_gap(s3_home):
    s3_home.env["EDGEHOST_LAG_ALERT_SECONDS"] = "4"
    # The portal acknowledges while litestream is stopped (durable acks would hold the writer at one
    # unreplicated row, whose age at the drill may stay under the threshold).
    s3_home.env["EDGEHOST_DURABLE_PROPERTY_DBS"] = "false"
    up = start_supervisor(s3_home)
    writer = None
    stopped = None
    try:
        settings = s3_home.settings()
        _populate(settings, ["busy", "quiet"])
        writer = Writer(settings.portal_url, "busy", pause=0.1).start()
        time.sleep(1.5)
        stopped = service(settings, "litestream")["pid"]
        os.kill(stopped, signal.SIGSTOP)  # replication stalls; the portal keeps writing
        time.sleep(5)
        code, report = _drill(s3_home)
        print(f"\nstalled drill: {report['status']}, exit {code}, RPO {report.get('rpo_seconds')} s "
              f"({report.get('rpo_database')}); per database: "
              + ", ".join(f"{d['name']} {d['rpo_seconds']} s, missing {d.get('missing_rows')}" for d in report["databases"]))
        print("failures:", report["failures"])
        assert code == 1 and report["status"] == "fail", report["failures"]
        busy = next(d for d in report["databases"] if d["name"] == "busy")
        assert busy["checks"]["fresh"].startswith("stale: ") and busy["rpo_seconds"] > 4
        assert busy["missing_rows"]["compliance_events"] > 0
        assert report["rpo_database"] == "busy" and report["rpo_seconds"] == busy["rpo_seconds"]
        # the only failure is the stalled database, named with its gap
        assert [f.split(":")[0] for f in report["failures"]] == ["busy"]
        assert f"{busy['rpo_seconds']:.1f}s of writes missing" in report["failures"][0]
        assert all(d["rpo_seconds"] == 0 for d in report["databases"] if d["name"] != "busy")

        os.kill(stopped, signal.SIGCONT)
        stopped = None
        # litestream catches up (the writer still runs, so each sync may find one more transaction)
        busy_path = layout.property_db(settings, "busy").path
        sock = litestream.ControlSocket(settings.litestream_socket)
        target = sock.sync(busy_path, wait=True)["txid"]
        wait_until(lambda: sock.sync(busy_path, wait=True)["replicated_txid"] >= target, 30, what="litestream to catch up")
        code, report = _drill(s3_home)  # the writer still runs: what it writes after the drill starts is not "missing"
        print(f"resumed drill: {report['status']}, exit {code}, RPO {report['rpo_seconds']} s; per database: "
              + ", ".join(f"{d['name']} {d['rpo_seconds']} s, missing {d['missing_rows']}" for d in report["databases"]))
        assert code == 0 and report["status"] == "pass", report["failures"]
        assert report["rpo_seconds"] <= 4
        assert all(d["checks"]["fresh"] == "ok" for d in report["databases"])
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if writer is not None:
            writer.stop()
        up.stop()


def test_a_portal_error_on_one_database_is_charged_to_it_alone(s3_home):
    up = start_supervisor(s3_home)
    try:
        settings = s3_home.settings()
        slugs = ["a-broken", "b-fine", "c-fine", "d-fine"]
        _populate(settings, slugs)
        # A payload SQLite accepts as JSON that the portal cannot serialise (an out-of-range float):
        # its events endpoint answers 500, live and restored alike.
        bad = layout.property_db(settings, "a-broken")
        with sqlite3.connect(bad.path) as conn:
            conn.execute("INSERT INTO compliance_events(occurred_at, kind, payload) VALUES ('2026-01-01', 'k', '[1e999]')")
        assert httpx.get(f"{settings.portal_url}/properties/a-broken/events").status_code == 500
        sync_db(settings, bad)
        code, report = _drill(s3_home)
        assert code == 1 and report["status"] == "fail"
        by_name = {d["name"]: d for d in report["databases"]}
        assert not by_name["a-broken"]["ok"] and "500" in by_name["a-broken"]["checks"]["answers"]
        assert [f.split(":")[0] for f in report["failures"]] == ["a-broken"], report["failures"]
        assert all(by_name[s]["ok"] for s in slugs[1:] + ["global"])
    finally:
        up.stop()


def _second_home(tmp_path_factory, like):
    """Another machine's home (its own data and state) on the same replica as `like`."""
    home = tmp_path_factory.mktemp("h", numbered=True)
    shutil.copy(like.path / "litestream.yml", home / "litestream.yml")
    env = {**like.env, "EDGEHOST_HOME": str(home), "EDGEHOST_PORTAL_PORT": str(free_port()),
           "EDGEHOST_METRICS_PORT": str(free_port())}
    return KitHome(home, env)


def test_drills_clean_up_keep_n_reports_and_the_history_travels(s3_home, tmp_path_factory):
    s3_home.env["EDGEHOST_DRILL_KEEP_REPORTS"] = "1"
    up = start_supervisor(s3_home)
    try:
        settings = s3_home.settings()
        _populate(settings, ["acme"], events=12)
        drills = settings.state_dir / "drills"
        started = []
        for args in (["--report", str(drills / "latest.md")], ["--scenario", "accidental-delete"]):
            code, report = _drill(s3_home, *args)
            assert code == 0, report["failures"]
            started.append(report["started_at"])
        assert started[0] != started[1]  # a drill takes seconds: their start times name them apart
        # no scratch left: no restored data, no copy of acme's events, no scratch replica
        assert [p for p in drills.iterdir() if p.is_dir()] == []
        # the newest report only (KEEP_REPORTS=1), here, in the state DB and in the replica
        stem = f"drill-{started[1].replace(':', '')}"
        assert sorted(p.name for p in drills.iterdir() if p.name.startswith("drill-")) == [f"{stem}.json", f"{stem}.md"]
        assert (drills / "latest.md").exists() and (drills / "latest.json").exists()
        assert [d["started_at"] for d in state.drill_history(settings, replica=False)] == [started[1]]
        store = ReplicaStore.from_settings(settings)
        keys = [o.key for o in store.walk(state.REPLICA_DRILLS)]
        assert keys == [state.replica_key({"started_at": started[1]})]
        assert json.loads(store.read(keys[0]))["scenario"] == "accidental-delete"
    finally:
        stopped = up.stop()
    assert stopped == 0  # a clean stop releases the writer lease for the next machine

    # A new machine on the same replica: `up` restores the databases, and status knows the last drill.
    other = _second_home(tmp_path_factory, s3_home)
    assert not other.settings().kit_db.exists()
    up = start_supervisor(other)
    try:
        status = json.loads(edgehost(other, "status", "--json").stdout)
        last = status["last_drill"]
        assert (last["started_at"], last["scenario"], last["status"], last["source"]) == (
            started[1], "accidental-delete", "pass", "replica")
    finally:
        up.stop()


def test_status_takes_the_replicas_drills_from_the_supervisor_and_this_machines_own_at_once(s3_home, moto_s3):
    """`edgehost status` used to LIST the replica's drills on every call (a Class A request each, and
    boto3's import). The supervisor now reads them once an hour; status adds this machine's own, so a
    drill held only by the replica shows, and so does one this machine ran after that read."""
    from procs import supervisor_status

    settings = s3_home.settings()
    older = {"started_at": "2026-01-02T03:04:05+00:00", "finished_at": "2026-01-02T03:05:00+00:00",
             "scenario": "latest", "status": "pass", "databases": [{}], "failures": [], "host": "old-mac"}
    state.store_drill_in_replica(settings, older)  # as the machine before this one left it
    up = start_supervisor(s3_home)
    try:
        wait_until(lambda: supervisor_status(settings).get("last_drills") is not None, timeout=60)
        assert supervisor_status(settings)["last_drills"][0]["source"] == "replica"
        # The replica's copy is gone now: status can only know it from the supervisor.
        store = ReplicaStore.from_settings(settings)
        for obj in list(store.walk(state.REPLICA_DRILLS)):
            store.delete(obj.key)
        last = json.loads(edgehost(s3_home, "status", "--json").stdout)["last_drill"]
        assert (last["started_at"], last["host"], last["source"]) == (older["started_at"], "old-mac", "replica")
        # A drill this machine runs after the supervisor's read shows at once.
        newer = {**older, "started_at": "2026-03-04T05:06:07+00:00", "host": "this-mac", "scenario": "accidental-delete"}
        state.record_drill(settings, newer)
        last = json.loads(edgehost(s3_home, "status", "--json").stdout)["last_drill"]
        assert (last["started_at"], last["source"]) == (newer["started_at"], "local")
    finally:
        assert up.stop() == 0
