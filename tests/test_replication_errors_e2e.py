"""A database whose Litestream local state does not match its replica: what litestream 0.5.17 does,
what `edgehost status` shows, and the recovery that works.

The user's sequence: replicate to the local file replica, `edgehost restore SLUG --in-place` (which
leaves the database's `.<db>-litestream/ltx/0` starting at the replica's last txid, not at 1),
stop, switch the replica to an empty S3 bucket, `edgehost up` again. Litestream then tries to upload
L0 file 1, which is not on disk: it logs "monitor error ... LTX file is missing" every backoff and
uploads nothing, while `/list` says "replicating" and `/debug/sync-status` has no error. At start it
still writes one snapshot of the database into the new bucket, at the old txid.
"""

from __future__ import annotations

import json
import time
import os

import httpx
import pytest

from edgehost.engine import layout, litestream
from edgehost.supervisor import SupervisorClient
from procs import S3_KEYS, edgehost, litestream_reset, plain_restore, rows, start_supervisor, sync_db, wait_until

pytestmark = pytest.mark.e2e

SLUG = "acme"
PAD = 1500  # each event on its own overflow pages, so a restore that mixes two histories shows it


def _events(url: str, n: int, kind: str) -> list[int]:
    return [httpx.post(f"{url}/properties/{SLUG}/events",
                       json={"kind": kind, "payload": {"i": i, "pad": os.urandom(PAD // 2).hex()}}).json()["id"]
            for i in range(n)]


def _status(home) -> tuple[int, dict]:
    proc = edgehost(home, "status", "--json", timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _db(report: dict, name: str) -> dict:
    return next(d for d in report["databases"] if d["name"] == name)


def _switch(home, moto_s3, noticed: bool):
    """The user's sequence: file replica, in-place restore, stop, switch to a new S3 bucket, up again.

    With noticed=False the kit's record of the previous replica is gone (a wiped state dir), so
    litestream meets the new replica with the old local state, as before the kit moved it aside.
    """
    # A stuck database makes every stop of litestream wait out the final sync: keep that short here.
    # Writes go on while replication is stuck: acknowledged asynchronously (durable acks would be 503s).
    (home.path / "edgehost.toml").write_text("litestream_stop_timeout = 8\n[durable]\nproperty_dbs = false\n")
    settings = home.settings()
    url = settings.portal_url
    ref = layout.property_db(settings, SLUG)
    up = start_supervisor(home, "up-file.log")
    try:
        httpx.post(f"{url}/properties", json={"slug": SLUG}).raise_for_status()
        acked = []
        for _ in range(3):  # a few transactions, so the replica's last txid is past 1
            acked += _events(url, 3, "before")
            sync_db(settings, ref)
        proc = edgehost(home, "restore", SLUG, "--in-place")
        assert proc.returncode == 0, proc.stderr
        acked += _events(url, 3, "after-restore")
        sync_db(settings, ref)
    finally:
        assert up.stop() == 0, up.output()[-3000:]
    meta_l0 = ref.path.parent / f".{ref.path.name}-litestream" / "ltx" / "0"
    assert not (meta_l0 / "0000000000000001-0000000000000001.ltx").exists(), sorted(os.listdir(meta_l0))

    if not noticed:
        (home.settings().state_dir / "replica-url").unlink()
    bucket = moto_s3.new_bucket()
    home.env.update({"EDGEHOST_REPLICA_URL": f"s3://{bucket}/edgehost", "EDGEHOST_S3_ENDPOINT": moto_s3.endpoint,
                     "EDGEHOST_S3_REGION": moto_s3.region, **S3_KEYS})
    settings = home.settings()
    up = start_supervisor(home, "up-s3.log")
    acked += _events(url, 4, "on-s3")
    return up, settings, ref, bucket, acked


def test_a_database_litestream_cannot_replicate_shows_as_an_error_in_status(kit_home, moto_s3):
    from procs import Receiver

    receiver = Receiver()  # a webhook: the error is also an alert, sent once
    kit_home.env["EDGEHOST_WEBHOOK_URL"] = f"{receiver.url}/hook"
    up, settings, ref, _, _ = _switch(kit_home, moto_s3, noticed=False)
    try:
        code, report = wait_until(lambda: (lambda c, r: (c, r) if _db(r, SLUG)["state"] == "error" else None)(
            *_status(kit_home)), 30, interval=0.5, what="status to report acme's error")
        acme, glob = _db(report, SLUG), _db(report, "global")
        assert code == 1
        assert report["failing"] == [SLUG]
        assert "open ltx file" in acme["error"] and "0000000000000001-0000000000000001.ltx" in acme["error"]
        assert acme["caught_up"] is False and int(acme["replicated_txid"], 16) < int(acme["local_txid"], 16)
        assert len(acme["local_txid"]) == len(acme["replicated_txid"]) == 16  # hex, as litestream prints txids
        assert glob["state"] == "replicating" and glob["caught_up"] is True and glob["error"] == ""
        for key in ("name", "path", "state", "local_txid", "replicated_txid", "last_sync_at", "lag_seconds",
                    "wal_bytes", "error", "caught_up"):
            assert key in acme
        assert {"lagging", "litestream_error", "lag_alert_seconds", "services", "supervisor"} <= report.keys()

        human = edgehost(kit_home, "status")
        assert human.returncode == 1
        assert f"{SLUG}:" in human.stderr and "ltx file" in human.stderr

        # What litestream itself says: why status has to ask with a waited sync.
        sock = litestream.ControlSocket(settings.litestream_socket)
        listed = {d["path"]: d for d in sock.list()}[str(ref.path)]
        assert listed["status"] == "replicating"
        diag = {d["path"]: d for d in sock.sync_status()}[str(ref.path)]
        assert not diag.get("error")
        local = sock.sync(ref.path, wait=False)
        assert local["replicated_txid"] < local["txid"]
        with pytest.raises(Exception, match="replica sync: open ltx file"):
            sock.sync(ref.path, wait=True, timeout=5)
        log = up.output()
        assert 'msg="monitor error"' in log and "LTX file is missing" in log and "litestream reset" in log

        def errors():
            return [(n["kind"], n["database"]) for n in receiver.notices() if n["event"] == "replication_error"]

        wait_until(lambda: errors() == [("alert", SLUG)], 30, interval=0.5, what="the replication-error alert")
        assert "open ltx file" in next(n["summary"] for n in receiver.notices() if n["event"] == "replication_error")
        time.sleep(6)  # more status polls see the same error: nothing more is sent
        assert errors() == [("alert", SLUG)]
    finally:
        up.stop()
        receiver.close()


def test_resetting_local_state_and_dropping_the_stuck_snapshot_restores_replication(kit_home, moto_s3, tmp_path):
    """Litestream's hint (`litestream reset`) alone is not enough: the stuck run's snapshot, at the
    old history's txid, stays in the bucket and the new history's files get stacked on it."""
    from procs import Receiver

    receiver = Receiver()  # the error's alert, and its recovery once fixed
    kit_home.env["EDGEHOST_WEBHOOK_URL"] = f"{receiver.url}/hook"
    up, settings, ref, bucket, acked = _switch(kit_home, moto_s3, noticed=False)
    url = settings.portal_url
    s3 = moto_s3.client()
    prefix = f"edgehost/{SLUG}/"
    try:
        wait_until(lambda: _db(_status(kit_home)[1], SLUG)["state"] == "error", 30, interval=0.5,
                   what="acme stuck")

        def errors():
            return [n["kind"] for n in receiver.notices() if n["event"] == "replication_error" and n["database"] == SLUG]

        wait_until(lambda: errors() == ["alert"], 30, interval=0.5, what="the error's alert")
        supervisor = SupervisorClient(settings.supervisor_socket)
        supervisor.hold("litestream")
        try:
            litestream_reset(settings, ref)
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
            # Nothing reached the bucket but snapshots the stuck run took: copies of the local database.
            assert keys and all("/0009/" in k for k in keys), keys
            for key in keys:
                s3.delete_object(Bucket=bucket, Key=key)
        finally:
            supervisor.release("litestream")

        points = []
        for i in range(5):
            acked += _events(url, 1, "recovered")
            points.append((sync_db(settings, ref)["txid"], list(acked)))
        code, report = _status(kit_home)
        acme = _db(report, SLUG)
        assert code == 0, report
        assert acme["state"] == "replicating" and acme["caught_up"] and acme["error"] == ""
        wait_until(lambda: errors() == ["alert", "recovery"], 30, interval=0.5, what="the error's one alert and recovery")

        url_s3 = litestream.replication(settings).restore_url(ref)
        out = tmp_path / "latest.db"
        r = plain_restore(url_s3, out, kit_home.environ())
        assert r.returncode == 0, r.stderr
        assert rows(out, "PRAGMA integrity_check") == [("ok",)]
        assert [x[0] for x in rows(out, "SELECT id FROM compliance_events ORDER BY id")] == acked
        assert rows(out, "SELECT id, payload FROM compliance_events ORDER BY id") == \
            rows(ref.path, "SELECT id, payload FROM compliance_events ORDER BY id")
        txid, want = points[1]
        r = plain_restore(url_s3, tmp_path / "earlier.db", kit_home.environ(), "-txid", f"{txid:016x}")
        assert r.returncode == 0, r.stderr
        assert [x[0] for x in rows(tmp_path / "earlier.db", "SELECT id FROM compliance_events ORDER BY id")] == want
    finally:
        assert up.stop() == 0, up.output()[-3000:]


class _FakeSocket:
    """Litestream's control socket answers as 0.5.17 gave them, for the cases too slow to stage."""

    def __init__(self, positions: dict, waited: dict, diag: dict):
        self.positions, self.waited, self.diag, self.waited_calls = positions, waited, diag, []

    def info(self):
        return {"started_at": "2026-01-01T00:00:00.123456789Z"}

    def list(self):
        return [{"path": p, "status": "replicating"} for p in self.positions]

    def sync_status(self):
        return [{"path": p, "operation": "sync", "error": e} for p, e in self.diag.items()]

    def sync(self, db, wait=True, timeout=30):
        from edgehost.errors import EnvironmentProblem

        if wait:
            self.waited_calls.append(str(db))
            raise EnvironmentProblem(f"litestream /sync: {self.waited[str(db)]}")
        txid, replicated = self.positions[str(db)]
        return {"status": "no_change", "path": str(db), "txid": txid, "replicated_txid": replicated}


def test_status_tells_stuck_from_ahead_from_unreachable(kit_home):
    from edgehost.ops import status
    from edgehost.engine.sqlite import connect

    settings = kit_home.settings()
    slugs = ["ahead", "diag", "down", "ok", "stuck"]
    for slug in slugs:
        db = layout.property_db(settings, slug).path
        db.parent.mkdir(parents=True)
        connect(db, create=True).close()
    path = {slug: str(layout.property_db(settings, slug).path) for slug in slugs}
    sock = _FakeSocket(
        positions={path["ahead"]: (1, 4), path["diag"]: (3, 3), path["down"]: (9, 7), path["ok"]: (5, 5),
                   path["stuck"]: (5, 0)},
        waited={path["down"]: "sync database: replica sync: write ltx file: operation error S3: PutObject, "
                              "dial tcp 127.0.0.1:9: connect: connection refused",
                path["stuck"]: "sync database: replica sync: open ltx file /x/.honestcam.db-litestream/ltx/0/"
                               "0000000000000001-0000000000000001.ltx: open /x: no such file or directory"},
        diag={path["diag"]: "ensure wal exists: disk I/O error"})
    got = {d.name: d for d in status.replication_status(settings, sock=sock, now=1767225700.0)}
    assert sorted(sock.waited_calls) == sorted([path["down"], path["stuck"]])  # only the stalled ones
    assert got["ok"].state == "replicating" and got["ok"].caught_up and got["ok"].error == ""
    assert got["stuck"].state == "error" and got["stuck"].error.startswith("sync database: replica sync: open ltx file")
    assert got["down"].state == "replicating" and got["down"].error == "" and got["down"].lag_seconds > 0
    assert got["ahead"].state == "error" and "another history" in got["ahead"].error and not got["ahead"].caught_up
    assert got["diag"].state == "error" and got["diag"].error == "sync: ensure wal exists: disk I/O error"
    metrics = status.prometheus_text(list(got.values()), [])
    from prometheus_client.parser import text_string_to_metric_families

    errors = {s.labels["db"]: s.value for f in text_string_to_metric_families(metrics)
              if f.name == "edgehost_replication_error" for s in f.samples}
    assert errors["stuck"] == 1 and errors["ok"] == 0


def test_a_replica_switch_the_kit_sees_moves_the_old_state_aside_and_keeps_replicating(kit_home, moto_s3, tmp_path):
    up, settings, ref, _, acked = _switch(kit_home, moto_s3, noticed=True)
    try:
        assert "the replica changed" in up.output()
        sync_db(settings, ref)
        code, report = _status(kit_home)
        acme = _db(report, SLUG)
        assert code == 0, report
        assert acme["state"] == "replicating" and acme["caught_up"] and acme["error"] == ""
    finally:
        assert up.stop() == 0, up.output()[-3000:]
    out = tmp_path / "latest.db"
    proc = plain_restore(litestream.replication(settings).restore_url(ref), out, kit_home.environ())
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in rows(out, "SELECT id FROM compliance_events ORDER BY id")] == sorted(acked)
    kept = list((settings.data_dir / "_replaced").glob("*-replica-switch/acme/.honestcam.db-litestream"))
    assert kept, "the old local state must be kept, not deleted"
