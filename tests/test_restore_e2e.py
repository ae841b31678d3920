"""`edgehost restore` and `edgehost points` against a real replica written by the real litestream."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from edgehost.engine import layout, litestream
from edgehost.engine.sqlite import connect, content_hash, user_tables
from procs import edgehost, plain_restore, rows, start_supervisor, supervisor_status, sync_db

pytestmark = pytest.mark.e2e


def _events(url, slug, n, kind="k"):
    return [httpx.post(f"{url}/properties/{slug}/events", json={"kind": kind, "payload": {"i": i}}).json()["id"]
            for i in range(n)]


@pytest.fixture
def running(s3_home):
    up = start_supervisor(s3_home)
    yield s3_home, s3_home.settings()
    assert up.stop() == 0, up.output()


def test_an_accidental_delete_is_undone_by_time_and_by_txid(running, tmp_path):
    home, settings = running
    url = settings.portal_url
    httpx.post(f"{url}/properties", json={"slug": "acme"}).raise_for_status()
    ids = _events(url, "acme", 40)
    ref = layout.property_db(settings, "acme")
    good_txid = sync_db(settings, ref)["txid"]
    time.sleep(1.5)
    before_delete = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.5)
    conn = connect(ref.path)
    conn.execute("DELETE FROM compliance_events WHERE id > 5")  # the accidental DELETE
    conn.close()
    sync_db(settings, ref)
    assert len(httpx.get(f"{url}/properties/acme/events").json()["events"]) == 5

    proc = edgehost(home, "restore", "acme", "--at", before_delete, "--to", str(tmp_path / "by-time"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["results"][0]["ok"]
    restored = tmp_path / "by-time" / "acme" / "honestcam.db"
    assert [r[0] for r in rows(restored, "SELECT id FROM compliance_events ORDER BY id")] == ids

    proc = edgehost(home, "restore", "acme", "--txid", f"{good_txid:x}", "--to", str(tmp_path / "by-txid"))
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in rows(tmp_path / "by-txid" / "acme" / "honestcam.db",
                               "SELECT id FROM compliance_events ORDER BY id")] == ids

    points = json.loads(edgehost(home, "points", "acme", "--json").stdout)
    assert int(points["latest_txid"], 16) > good_txid
    assert points["earliest_time"] <= before_delete


def test_restore_all_of_30_tenants_equals_the_live_data(running, tmp_path):
    home, settings = running
    url = settings.portal_url
    slugs = [f"t{i:02d}" for i in range(30)]
    for i, slug in enumerate(slugs):
        httpx.post(f"{url}/properties", json={"slug": slug}).raise_for_status()
        _events(url, slug, 1 + i % 4)
    httpx.put(f"{url}/study/users/u1", json={"email": "u@x"}).raise_for_status()
    for ref in layout.local_databases(settings):
        sync_db(settings, ref)

    proc = edgehost(home, "restore", "--all", "--parallel", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["results"]) == 31
    root = Path(report["root"])
    for ref in layout.local_databases(settings):
        live, copy = connect(ref.path), connect(root / ref.relpath)
        # Litestream's own bookkeeping tables may move on after the last sync; the data may not.
        bookkeeping = frozenset(t for t in user_tables(live) if t.startswith("_litestream"))
        assert content_hash(live, bookkeeping) == content_hash(copy, bookkeeping), ref.label
        live.close()
        copy.close()


def test_in_place_restore_swaps_keeps_the_old_file_and_replication_goes_on(running, tmp_path):
    home, settings = running
    url = settings.portal_url
    httpx.post(f"{url}/properties", json={"slug": "acme"}).raise_for_status()
    first = _events(url, "acme", 10)
    ref = layout.property_db(settings, "acme")
    txid = sync_db(settings, ref)["txid"]
    later = _events(url, "acme", 10, kind="later")
    sync_db(settings, ref)
    portal_pid = next(s["pid"] for s in supervisor_status(settings)["services"] if s["name"] == "portal")

    proc = edgehost(home, "restore", "acme", "--txid", f"{txid:x}", "--in-place")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # the portal was restarted and serves the restored data
    portal = next(s for s in supervisor_status(settings)["services"] if s["name"] == "portal")
    assert portal["state"] == "running" and portal["pid"] != portal_pid
    assert [e["id"] for e in httpx.get(f"{url}/properties/acme/events").json()["events"]] == first
    # the old database is kept, with every row
    kept = list((settings.data_dir / "_replaced").glob("*/acme/honestcam.db.replaced"))
    assert len(kept) == 1
    assert [r[0] for r in rows(kept[0], "SELECT id FROM compliance_events ORDER BY id")] == first + later
    # writes after the swap reach the replica: a later plain restore has them
    after = _events(url, "acme", 3, kind="after")
    sync_db(settings, ref)
    out = tmp_path / "after.db"
    r = plain_restore(litestream.replication(settings).restore_url(ref), out, home.environ())
    assert r.returncode == 0, r.stderr
    got = [row[0] for row in rows(out, "SELECT id FROM compliance_events ORDER BY id")]
    assert got == first + after  # the restored history, then the new writes; none of the undone ones
    assert rows(out, "SELECT count(*) FROM compliance_events WHERE kind = 'later'") == [(0,)]


def test_bad_input_is_refused_with_one_line_and_nothing_written(s3_home, tmp_path):
    settings = s3_home.settings()
    up = start_supervisor(s3_home)
    try:
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "acme"}).raise_for_status()
        sync_db(settings, layout.property_db(settings, "acme"))
    finally:
        up.stop()
    existing = tmp_path / "exists"
    (existing / "acme").mkdir(parents=True)
    (existing / "acme" / "honestcam.db").write_bytes(b"keep me")
    cases = [
        (["restore", "nope", "--to", str(tmp_path / "a")], 2, "unknown in the replica"),
        (["restore", "Bad/slug"], 2, "invalid property slug"),
        (["restore", "acme", "--at", "2001-01-01T00:00:00Z", "--to", str(tmp_path / "b")], 2, "point-in-time window"),
        (["restore", "acme", "--at", "2999-01-01T00:00:00Z"], 2, "in the future"),
        (["restore", "acme", "--at", "-1h", "--txid", "1"], 2, "exclude each other"),
        (["restore", "acme", "--at", "yesterday"], 2, "invalid time"),
        (["restore", "acme", "--to", str(existing)], 2, "already exists"),
        (["restore", "acme", "--in-place"], 3, "no supervisor running"),
    ]
    for args, code, message in cases:
        proc = edgehost(s3_home, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (existing / "acme" / "honestcam.db").read_bytes() == b"keep me"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    before = sorted(p.name for p in settings.data_dir.rglob("*"))
    assert before == sorted(p.name for p in settings.data_dir.rglob("*"))

    dry = edgehost(s3_home, "restore", "--all", "--dry-run")
    assert dry.returncode == 0 and "plan: restore 2 database(s) at latest" in dry.stderr
    assert not (settings.state_dir / "restores").exists()

    no_keys = {k: v for k, v in s3_home.env.items() if not k.startswith("AWS_")}
    import subprocess, sys, os
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.run([sys.executable, "-m", "edgehost", "restore", "acme"], env={**env, **no_keys},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "credentials missing" in proc.stderr
