"""`edgehost verify` against the real litestream and moto: healthy, corrupted, missing, stale."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from edgehost.engine import layout, litestream
from edgehost.engine.replica import ReplicaStore
from procs import CountingProxy, KitHome, Writer, edgehost, start_supervisor, wait_until

pytestmark = pytest.mark.e2e


def _setup(home, slugs, events=20):
    settings = home.settings()
    url = settings.portal_url
    for slug in slugs:
        httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        for i in range(events):
            httpx.post(f"{url}/properties/{slug}/events", json={"kind": "k", "payload": {"i": i}}).raise_for_status()
    httpx.put(f"{url}/study/users/u1", json={"email": "u@x"}).raise_for_status()
    httpx.put(f"{url}/study/progress/u1", json={"progress": {"a": 1}}).raise_for_status()
    sock = litestream.ControlSocket(settings.litestream_socket)
    for ref in layout.local_databases(settings):
        wait_until(lambda: str(ref.path) in {d["path"] for d in sock.list()}, 30, what="litestream to watch")
    return settings


def test_verify_passes_while_writers_run_and_reports_the_numbers(s3_home):
    up = start_supervisor(s3_home)
    try:
        settings = _setup(s3_home, ["acme", "beta"])
        writer = Writer(settings.portal_url, "acme", pause=0.002).start()
        proc = edgehost(s3_home, "verify", "--all", "--json")
        acked = writer.stop()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] and len(report["results"]) == 3
        for r in report["results"]:
            assert r["ok"] and [c["name"] for c in r["checks"]] == [
                "exists", "fresh", "history", "restore", "integrity", "foreign_keys", "schema", "sentinel", "content"]
            checks = {c["name"]: c["message"] for c in r["checks"]}
            assert checks["history"].startswith("one history: txids 0000000000000001-")
            assert checks["content"].startswith(f"content hash {r['hash'][:12]} equals live at txid {r['txid']}")
            assert r["rpo_seconds"] is not None and r["writer_wait_ms"] < 5000
            assert len(r["hash"]) == 64
        acme = next(r for r in report["results"] if r["name"] == "acme")
        assert acme["rows"]["compliance_events"] >= 20
        assert len(acked) > 0, writer.errors
    finally:
        assert up.stop() == 0


def test_verify_lists_the_bucket_once_though_the_sentinels_upload_after_the_listing(s3_home, moto_s3):
    """verify takes its one listing beside the pins, so (one database at a time here) every later
    sentinel reaches the bucket after it. Those files are named from litestream's local copies and
    fetched from the bucket: no database is listed on its own, and every check still passes."""
    up = start_supervisor(s3_home)
    proxy = CountingProxy(moto_s3.endpoint)
    try:
        slugs = ["acme", "beta", "gamma", "delta"]
        settings = _setup(s3_home, slugs, events=5)
        writer = Writer(settings.portal_url, "acme", pause=0.01).start()
        # A property created just now, verified last: the listing most likely predates its first
        # upload, so it is listed on its own (it must not fail as "no LTX files").
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "zeta"}).raise_for_status()
        via_proxy = KitHome(s3_home.path, {**s3_home.env, "EDGEHOST_S3_ENDPOINT": proxy.endpoint})
        proc = edgehost(via_proxy, "verify", "--all", "--parallel", "1", "--json")
        writer.stop()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] and len(report["results"]) == 2 + len(slugs)
        # The root's one listing page, the delimiter listing naming the databases and at most one
        # LIST of zeta alone; a LIST per database would make it 2 + 6.
        assert proxy.lists() <= 4, [r for r in proxy.requests if "list-type" in r[1]]
        sentinel_files = {f"{int(r['txid'], 16):016x}.ltx" for r in report["results"]}
        fetched = {target.split("?")[0].rsplit("-", 1)[-1] for method, target in proxy.requests if method == "GET"}
        assert sentinel_files <= fetched  # each pinned txid's file came from the bucket
    finally:
        proxy.close()
        assert up.stop() == 0


def test_a_flipped_byte_in_the_bucket_fails_naming_the_db(s3_home):
    up = start_supervisor(s3_home)
    try:
        settings = _setup(s3_home, ["acme", "beta"])
        edgehost(s3_home, "verify", "beta")  # make sure beta has been replicated
        store = ReplicaStore.from_settings(settings)
        corrupted: set[str] = set()
        # Litestream may upload a snapshot of the clean local DB after the corruption (its compaction
        # monitor snapshots a database with none since the last midnight UTC while another database
        # is still initialising), which makes the latest point whole again and verify rightly passes.
        # It takes at most one such snapshot a day, a compaction every 30 s: corrupt whatever appeared
        # and check again.
        for _attempt in range(3):
            fresh = sorted(o.key for o in store.walk("beta") if o.key.endswith(".ltx") and o.key not in corrupted)
            for key in fresh:  # corrupt every copy litestream could restore from
                data = bytearray(store.read(key))
                mid = len(data) // 2
                data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
                store.write(key, bytes(data))
            corrupted.update(fresh)
            proc = edgehost(s3_home, "verify", "acme", "beta", "--json")
            # A snapshot, or a compaction (L1 every 30 s, made from litestream's local copies), uploaded
            # since is clean and covers the corrupted range: corrupt it too and ask again.
            clean = [o.key for o in store.walk("beta") if o.key.endswith(".ltx") and "/0000/" not in o.key
                     and o.key not in corrupted]
            if not clean:
                break
        assert proc.returncode == 1
        results = {r["name"]: r for r in json.loads(proc.stdout)["results"]}
        assert results["acme"]["ok"]
        assert not results["beta"]["ok"]
        assert results["beta"]["failed_check"] in ("restore", "integrity", "content")
        human = edgehost(s3_home, "verify", "beta")
        assert "FAIL beta:" in human.stderr.replace("\n", " ")
    finally:
        up.stop()


def test_a_tenant_missing_from_the_replica_fails(s3_home):
    up = start_supervisor(s3_home)
    try:
        settings = _setup(s3_home, ["acme"])
        store = ReplicaStore.from_settings(settings)
        # hold litestream so it cannot put the tenant back, then remove it from the bucket
        from edgehost.supervisor import SupervisorClient

        client = SupervisorClient(settings.supervisor_socket)
        client.hold("litestream")
        for obj in list(store.walk("acme")):
            store.delete(obj.key)
        client.release("litestream")
        # litestream notices the replica is behind; verify must not pass before it re-seeds it,
        # and a stopped litestream must make it fail: check the stopped case deterministically.
        client.hold("litestream")
        proc = edgehost(s3_home, "verify", "acme", "--json")
        assert proc.returncode == 1
        result = json.loads(proc.stdout)["results"][0]
        assert result["failed_check"] in ("fresh", "restore")
        client.release("litestream")
    finally:
        up.stop()


def test_stopped_litestream_makes_verify_say_stale_and_rpo_grow(s3_home):
    s3_home.env["EDGEHOST_DURABLE_PROPERTY_DBS"] = "false"  # writes acknowledged while litestream is stopped
    up = start_supervisor(s3_home)
    try:
        settings = _setup(s3_home, ["acme"])
        assert edgehost(s3_home, "verify", "acme").returncode == 0
        from edgehost.supervisor import SupervisorClient

        SupervisorClient(settings.supervisor_socket).hold("litestream")
        for i in range(5):
            httpx.post(f"{settings.portal_url}/properties/acme/events", json={"kind": "late"}).raise_for_status()
        first = json.loads(edgehost(s3_home, "verify", "acme", "--json").stdout)["results"][0]
        time.sleep(2)
        proc = edgehost(s3_home, "verify", "acme", "--json")
        second = json.loads(proc.stdout)["results"][0]
        assert proc.returncode == 1
        assert first["failed_check"] == second["failed_check"] == "fresh"
        assert "stale" in second["detail"]
        assert second["rpo_seconds"] > first["rpo_seconds"]
    finally:
        up.stop()
