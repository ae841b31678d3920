"""One writer per replica: two homes (two "machines") on one bucket, with the real supervisor and litestream."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgehost.engine import layout, litestream
from procs import (machine, twin, Proc, Writer, edgehost, edgehost_argv, plain_restore, rows, service, start_supervisor,
                   supervisor_status, sync_db, wait_until)

sys.path.insert(0, str(Path(__file__).resolve().parent / "chaos"))
from chaos_kit import SwitchableProxy  # noqa: E402

pytestmark = pytest.mark.e2e




def test_a_second_machine_is_refused_and_a_take_over_fences_the_first(s3_home, tmp_path_factory, tmp_path):
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")
    sa, sb = a.settings(), b.settings()
    up_a = start_supervisor(a)
    up_b = None
    try:
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        before = [httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "a"}).json()["id"] for _ in range(10)]
        litestream.ControlSocket(sa.litestream_socket).sync(layout.property_db(sa, "acme").path, wait=True)

        # The old Mac comes back while the new one runs: refused, naming the holder and its freshness.
        refused = Proc(edgehost_argv("up"), b.environ(), b.path / "refused.log")
        assert refused.popen.wait(60) == 6, refused.output()
        out = refused.output()
        assert "writer lease held by host" in out and "machine aaaaaaaa" in out and "ago" in out
        assert not sb.global_db.exists(), "a refused machine must not create or restore anything"
        refused.stop()

        # --take-over: B becomes the writer; A notices at its next renewal and stops writing.
        writer = Writer(sa.portal_url, "acme", pause=0.01).start()
        up_b = Proc(edgehost_argv("up", "--take-over"), b.environ(), b.path / "up-b.log")
        wait_until(lambda: "writer lease taken over" in up_b.output(), 60, what="B to take the lease")
        wait_until(lambda: supervisor_status(sa)["lease"]["fenced"], 30, what="A to fence itself")
        # (A durable write can be a 503 before that too: litestream stopped, the event not off the machine.)
        wait_until(lambda: httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "late"}).json().get("read_only"),
                   30, what="A's portal to turn read-only")
        writer.stop()
        refusal = httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "late"}).json()
        assert refusal["read_only"] and "machine bbbbbbbb" in refusal["error"]
        assert httpx.get(f"{sa.portal_url}/properties/acme/events").status_code == 200  # reads go on
        # ... from a portal the supervisor counts as running, not one it restarts until it turns writable.
        wait_until(lambda: service(sa, "portal")["state"] == "running", 30, what="A's read-only portal to be running")
        assert service(sa, "litestream")["state"] == "held"
        status_a = edgehost(a, "status", "--json")
        assert status_a.returncode == 1 and json.loads(status_a.stdout)["lease"]["fenced"] is True
        assert "writer lease lost" in edgehost(a, "status").stderr
        assert "no longer writes to the replica" in up_a.output()

        # A write that reaches A's disk anyway (not through the portal) must not reach the replica.
        conn = sqlite3.connect(layout.property_db(sa, "acme").path)
        conn.execute("INSERT INTO compliance_events(occurred_at, kind, payload) VALUES ('2026-01-01', 'stray', '{}')")
        conn.commit()
        conn.close()

        wait_until(lambda: all(s["state"] == "running" for s in supervisor_status(sb)["services"]), 90,
                   what="B to run every service")
        after = [httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "b"}).json()["id"] for _ in range(5)]
        assert up_b.stop() == 0, up_b.output()[-3000:]
        up_b = None
    finally:
        if up_b is not None:
            up_b.stop()
        code_a = up_a.stop()
    assert code_a == 6, up_a.output()[-2000:]
    assert "final sync skipped" in up_a.output()

    # The replica holds one history: B's, which starts from what A had replicated.
    out = tmp_path / "acme.db"
    proc = plain_restore(litestream.replication(sb).restore_url(layout.property_db(sb, "acme")), out, b.environ())
    assert proc.returncode == 0, proc.stderr
    got = rows(out, "SELECT id, kind FROM compliance_events ORDER BY id")
    ids = [r[0] for r in got]
    assert set(before) <= set(ids) and ids[-5:] == after
    assert "stray" not in {r[1] for r in got}
    # B stopped cleanly and released the lease: A may start again without --take-over.
    again = start_supervisor(a, log_name="again.log")
    assert again.stop() == 0


def test_a_take_over_stopped_during_its_wait_never_writes(s3_home, tmp_path_factory):
    """`up --take-over` waits until the old holder has surely stopped writing; stopped (SIGTERM) in that
    wait, it must not restore, start litestream or push a final sync while the old holder may write."""
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")
    sa = a.settings()
    up_a = start_supervisor(a)
    try:
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "a"}).raise_for_status()
        up_b = Proc(edgehost_argv("up", "--take-over"), b.environ(), b.path / "up-b.log")
        wait_until(lambda: "waiting" in up_b.output() and "to stop writing" in up_b.output(), 60,
                   what="B to wait for A")
        up_b.stop()
        out = up_b.output()
        assert "starting litestream" not in out and "starting it for the final sync" not in out, out[-2000:]
        assert not b.settings().global_db.exists(), "nothing restored while the old holder may write"
    finally:
        up_a.stop()


def test_the_file_replica_has_the_same_lease(kit_home, tmp_path_factory):
    a = machine(kit_home, "c")
    b = twin(a, tmp_path_factory, "d")
    b.env["EDGEHOST_REPLICA_URL"] = a.settings().replica_url  # the same directory
    up_a = start_supervisor(a)
    try:
        refused = Proc(edgehost_argv("up"), b.environ(), b.path / "refused.log")
        assert refused.popen.wait(60) == 6
        assert "machine cccccccc" in refused.output()
        refused.stop()
    finally:
        assert up_a.stop() == 0
    up_b = start_supervisor(b)  # released on A's clean stop
    assert up_b.stop() == 0
    assert "writer lease released" in up_b.output()


def test_a_primary_cut_off_from_the_bucket_stops_replicating_before_its_lease_goes_stale(s3_home, tmp_path_factory, tmp_path):
    """The most common reason to fail over is the primary's network going down, not the primary. A
    cut-off primary keeps its portal (writes stay on its disk) but must stop litestream before another
    machine may find its lease stale; when its network returns it must neither upload its backlog
    over the new primary's history nor push it in a final sync."""
    proxy = SwitchableProxy(s3_home.env["EDGEHOST_S3_ENDPOINT"])
    a = machine(s3_home, "a")
    b = twin(a, tmp_path_factory, "b")  # B reaches the bucket directly
    for home in (a, b):  # stale 6 s after the last renewal; A stops litestream 3.5 s after it
        home.env.update({"EDGEHOST_LEASE_RENEW_SECONDS": "1", "EDGEHOST_LEASE_TTL_SECONDS": "6",
                         "EDGEHOST_DURABLE_PROPERTY_DBS": "false"})
    a.env["EDGEHOST_S3_ENDPOINT"] = proxy.endpoint
    sa, sb = a.settings(), b.settings()
    up_a = start_supervisor(a)
    up_b = None
    try:
        httpx.post(f"{sa.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        before = [httpx.post(f"{sa.portal_url}/properties/acme/events", json={"kind": "a"}).json()["id"] for _ in range(10)]
        sync_db(sa, layout.property_db(sa, "acme"))

        proxy.set_mode("refuse")  # A's uplink goes down; its portal goes on taking (local) writes
        cut = time.monotonic()
        cut_off = Writer(sa.portal_url, "acme", pause=0.2).start()  # all through the cut: many local txids
        wait_until(lambda: service(sa, "litestream")["state"] != "running", 15, what="A to stop litestream")
        stopped_after = time.monotonic() - cut
        assert stopped_after < 6, stopped_after  # before the lease can be stale anywhere
        assert "writer lease" in service(sa, "litestream")["reason"]
        assert service(sa, "portal")["state"] == "running"

        # B starts once A's lease is stale: no --take-over needed, and it restores what A replicated.
        wait_until(lambda: time.monotonic() - cut > 7, 15)
        up_b = start_supervisor(b, log_name="up-b.log")
        after = [httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "b"}).json()["id"] for _ in range(2)]
        sync_db(sb, layout.property_db(sb, "acme"))
        assert len(cut_off.stop()) > 20 and cut_off.errors == 0  # A's portal took every one

        proxy.set_mode("up")  # A's network returns: it finds itself fenced and uploads nothing
        wait_until(lambda: supervisor_status(sa)["lease"]["fenced"], 30, what="A to find itself fenced")
        assert service(sa, "litestream")["state"] == "held"
        time.sleep(3)  # room for any upload A would still make
        more = [httpx.post(f"{sb.portal_url}/properties/acme/events", json={"kind": "b"}).json()["id"] for _ in range(3)]
        sync_db(sb, layout.property_db(sb, "acme"))
        assert up_b.stop() == 0, up_b.output()[-3000:]
        up_b = None
    finally:
        if up_b is not None:
            up_b.stop()
        code_a = up_a.stop()
    assert code_a == 6, up_a.output()[-2000:]

    # The replica holds one history, B's, on top of what A replicated before its network went down.
    out = tmp_path / "acme.db"
    proc = plain_restore(litestream.replication(sb).restore_url(layout.property_db(sb, "acme")), out, b.environ())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rows(out, "PRAGMA integrity_check") == [("ok",)]
    got = rows(out, "SELECT id, kind FROM compliance_events ORDER BY id")
    assert [r[0] for r in got[:10]] == before and [r[0] for r in got[10:]] == after + more
    assert "w" not in {r[1] for r in got}  # none of A's writes from after the cut


def _slow_uplink(s3_home):
    """A home on a 40 KB/s uplink (renew 1 s, ttl 4 s: litestream may write for 2.5 s after a
    renewal), `up` running, and ~300 KB of new events on disk: a final sync of ~7 s ahead.
    (proxy, settings, up, the events' ids, the endpoint without the proxy)."""
    import secrets

    endpoint = s3_home.env["EDGEHOST_S3_ENDPOINT"]
    proxy = SwitchableProxy(endpoint)
    s3_home.env.update({"EDGEHOST_S3_ENDPOINT": proxy.endpoint, "EDGEHOST_MACHINE_ID": "a" * 8,
                        "EDGEHOST_LEASE_RENEW_SECONDS": "1", "EDGEHOST_LEASE_TTL_SECONDS": "4",
                        "EDGEHOST_DURABLE_PROPERTY_DBS": "false"})
    s = s3_home.settings()
    up = start_supervisor(s3_home)
    httpx.post(f"{s.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
    sync_db(s, layout.property_db(s, "acme"))
    proxy.upload_bps = 40_000  # small requests (the lease's) pass at once
    with httpx.Client(timeout=30) as client:
        ids = [client.post(f"{s.portal_url}/properties/acme/events",
                           json={"kind": "big", "payload": secrets.token_hex(2500)}).json()["id"] for _ in range(60)]
    return proxy, s, up, ids, endpoint


def test_a_final_sync_that_outlasts_the_lease_window_still_lands(s3_home, tmp_path):
    """Renewals go on while `up` stops: a final sync longer than the window after the last renewal
    (a slow uplink, many databases) lands, and the stop exits 0. Before, renewals ended with the
    stop, the watchdog SIGKILLed litestream mid-sync once the window passed, and the stop exited 5
    with the newest writes only on this disk."""
    proxy, s, up, ids, endpoint = _slow_uplink(s3_home)
    try:
        code = up.stop(timeout=120)
    finally:
        up.stop()
    out_text = up.output()
    assert code == 0, out_text[-3000:]
    took = re.search(r"final sync: \d+ database\(s\) replicated up to their local txid in ([0-9.]+)s", out_text)
    assert took and float(took.group(1)) > 2.5, out_text[-3000:]  # the premise: it outlasted the window
    assert "writer lease released" in out_text

    restored = tmp_path / "acme.db"
    s3_home.env["EDGEHOST_S3_ENDPOINT"] = endpoint  # straight to the bucket
    proc = plain_restore(litestream.replication(s).restore_url(layout.property_db(s, "acme")), restored, s3_home.environ())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r[0] for r in rows(restored, "SELECT id FROM compliance_events WHERE kind = 'big' ORDER BY id")] == ids


def test_a_replica_lost_during_the_final_sync_ends_the_stop_once_the_lease_lapses(s3_home):
    """The uplink drops in the middle of the final sync: renewals fail, the watchdog kills litestream
    once the window passes, and the stop ends then with exit 5 (the newest writes named as only on
    this disk), instead of retrying a dead control socket for the rest of its 40 s budget."""
    proxy, s, up, ids, endpoint = _slow_uplink(s3_home)
    try:
        up.signal(signal.SIGTERM)
        wait_until(lambda: "portal stopped" in up.output(), 30, what="the final sync to begin")
        proxy.set_mode("refuse")
        dropped = time.monotonic()
        code = up.popen.wait(60)
        ended_after = time.monotonic() - dropped
    finally:
        up.stop()
    out_text = up.output()
    assert code == 5, out_text[-3000:]
    assert "final sync did not land for acme" in out_text and "writer lease kept" in out_text
    assert ended_after < 15, (ended_after, out_text[-3000:])  # the window (2.5 s) and a stop, not the 40 s budget
