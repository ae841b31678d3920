"""Reports that tell the truth: verify's checks say what they found, txids are hex everywhere, and a
replica holding two histories of one database is named as such (history.py)."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import httpx
import pytest

from edgehost.engine import layout, litestream
from edgehost.engine.history import SLACK_SECONDS, history, ltx_range
from edgehost.engine.replica import ReplicaObject, ReplicaStore
from edgehost.supervisor import SupervisorClient
from procs import edgehost, litestream_reset, plain_restore, rows, start_supervisor, sync_db, wait_until
from test_replication_errors_e2e import SLUG, _db, _events, _status, _switch

HEX16 = re.compile(r"[0-9a-f]{16}")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _f(level, lo, hi, seconds=None):
    """A `litestream ltx -json` entry, written `seconds` after T0 (no time when None)."""
    entry = {"level": level, "min_txid": f"{lo:016x}", "max_txid": f"{hi:016x}", "size": 100}
    if seconds is not None:
        entry["timestamp"] = (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return entry


# --- history(): the pure function ---------------------------------------------------------------


def test_one_history_with_compactions_snapshots_and_pruned_l0_is_one_history():
    files = ([_f(9, 1, 3, 0), _f(9, 1, 40, 86041)]  # yesterday's snapshot and today's
             + [_f(1, 1, 10, 300), _f(1, 11, 25, 600), _f(1, 26, 44, 86300)]
             + [_f(2, 1, 25, 3600)]
             + [_f(0, t, t, 86000 + t) for t in range(30, 47)])  # L0 pruned below 30
    assert history(files) == []
    # An L0 upload finishing a moment after the snapshot taken at its txid is one history too.
    assert history([_f(9, 1, 3, 10), _f(0, 1, 1, 11), _f(0, 2, 2, 11), _f(0, 3, 3, 12)]) == []


def test_a_late_compaction_covering_txid_1_is_one_history():
    # Seen in a power-cut chaos run: L2 0000000000000001-0000000000000001 written after L0 2-2.
    assert history([_f(0, 1, 1, 10), _f(1, 1, 1, 12), _f(0, 2, 2, 11), _f(0, 3, 3, 13), _f(2, 1, 1, 18),
                    _f(2, 2, 3, 30)]) == []


def test_txids_beginning_again_at_1_after_a_snapshot_are_a_second_history():
    """The state `litestream reset` leaves when the stuck run's snapshot stays in the replica."""
    old = [_f(9, 1, 7, 0)]
    new = [_f(0, 1, 1, 11), _f(0, 2, 2, 11), _f(0, 3, 3, 12), _f(1, 1, 2, 12)]
    [split] = history(old + new)
    assert split.kind == "restart"
    assert (split.older.min_txid, split.older.max_txid, split.older.levels) == (1, 7, (9,))
    assert (split.newer.min_txid, split.newer.max_txid, split.newer.levels, split.newer.files) == (1, 3, (0, 1), 4)
    assert split.detail == (
        "txids 0000000000000001-0000000000000007 (1 file: snapshot, written 2026-03-01T12:00:00Z) and "
        "txids 0000000000000001-0000000000000003 (4 files: L0, L1, written 2026-03-01T12:00:11Z to "
        "2026-03-01T12:00:12Z): txids begin again at 1: L0 0000000000000001-0000000000000001 was written "
        "11s after snapshot 0000000000000001-0000000000000007")
    # Still seen once the new history has passed the old snapshot's txid.
    grown = old + [_f(0, t, t, 10 + t) for t in range(1, 13)]
    assert [s.kind for s in history(grown)] == ["restart"]


def test_keys_overwritten_by_a_second_history_and_levels_that_skip_or_overlap():
    # auto-recover under an older history: L0 1-5 rewritten later over the old run's 1-12
    files = [_f(0, t, t, 100 + t) for t in range(1, 6)] + [_f(0, t, t, t) for t in range(6, 13)]
    [split] = history(files)
    assert split.kind == "restart" and "begin again at 1" in split.evidence
    assert (split.older.min_txid, split.older.max_txid) == (6, 12)
    assert (split.newer.min_txid, split.newer.max_txid) == (1, 5)
    # the new run's first files already pruned: within L0, txids still go back in time
    [split] = history([_f(0, t, t, 100 + t) for t in range(4, 8)] + [_f(0, t, t, t) for t in range(8, 13)])
    assert "go back: L0 0000000000000004-0000000000000004 was written" in split.evidence
    # without times, only the shape of each level shows it
    [gap] = history([_f(0, 1, 1), _f(0, 2, 2), _f(0, 40, 40), _f(0, 41, 41)])
    assert gap.kind == "gap" and gap.evidence == "L0 skips txids 0000000000000003-0000000000000027"
    assert (gap.older.max_txid, gap.newer.min_txid) == (2, 40)
    [overlap] = history([_f(1, 1, 50), _f(1, 1, 20), _f(1, 21, 30)])
    assert overlap.kind == "overlap"
    assert overlap.evidence == ("L1 files 0000000000000001-0000000000000014 and "
                                "0000000000000001-0000000000000032 overlap")
    assert (overlap.older.max_txid, overlap.newer.max_txid, overlap.older.files) == (30, 50, 2)


def test_every_listing_format_reads_the_same():
    when = T0 + timedelta(seconds=3)
    entry = ltx_range(_f(0, 2, 2, 3))
    assert ltx_range(ReplicaObject("0000/0000000000000002-0000000000000002.ltx", 10, when)) == entry  # S3 key
    assert ltx_range(ReplicaObject("ltx/0/0000000000000002-0000000000000002.ltx", 10, when)) == entry  # file key
    assert ltx_range(SimpleNamespace(level=0, min_txid=2, max_txid=2, listed_at=when)) == entry  # restore.LtxFile
    assert ltx_range(ReplicaObject("_edgehost/lease.json", 10, when)) is None
    assert ltx_range(ReplicaObject("0009/0000000000000001-000000000000000a.ltx", 10, when)).label == \
        "snapshot 0000000000000001-000000000000000a"


# --- the real thing -----------------------------------------------------------------------------


def _listing(settings, ref):
    """The database's LTX files twice: from `litestream ltx -json` and from one listing of the bucket."""
    repl = litestream.replication(settings)
    env, _ = litestream.child_environ(settings)
    from_litestream = litestream.ltx_files(litestream.find_binary(), repl.restore_url(ref), env)
    from_bucket = list(ReplicaStore.from_settings(settings, repl.replica_url(ref)).walk())
    return from_litestream, from_bucket


@pytest.mark.e2e
def test_verify_status_and_history_describe_a_healthy_replica_as_found(kit_home):
    up = start_supervisor(kit_home)
    try:
        settings = kit_home.settings()
        url = settings.portal_url
        httpx.post(f"{url}/properties", json={"slug": "acme"}).raise_for_status()
        for i in range(5):
            httpx.post(f"{url}/properties/acme/events", json={"kind": "k", "payload": {"i": i}}).raise_for_status()
        ref = layout.property_db(settings, "acme")
        sync_db(settings, ref)

        proc = edgehost(kit_home, "verify", "acme", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [result] = json.loads(proc.stdout)["results"]
        checks = {c["name"]: c for c in result["checks"]}
        assert list(checks) == ["exists", "fresh", "history", "restore", "integrity", "foreign_keys", "schema",
                                "sentinel", "content"]
        assert all(c["level"] == "ok" for c in checks.values())
        txid = result["txid"]
        assert HEX16.fullmatch(txid)
        # what was found, in words that say so
        assert checks["exists"]["message"].startswith(f"{ref.path} on disk (")
        assert checks["fresh"]["message"] in (f"replica at txid {txid} = live txid",) or \
            checks["fresh"]["message"].endswith(f", past live txid {txid}")
        assert checks["history"]["message"].startswith("one history: txids 0000000000000001-")
        assert checks["restore"]["message"].startswith(f"restored txid {txid} in ")
        assert checks["integrity"]["message"] == "integrity_check: ok"
        assert checks["foreign_keys"]["message"] == "foreign_key_check: no rows break a foreign key"
        assert re.fullmatch(r"schema equals live \(\d+ objects\)", checks["schema"]["message"])
        assert re.fullmatch(r"sentinel [0-9a-f]{16} in the restored copy", checks["sentinel"]["message"])
        assert checks["content"]["message"] == (f"content hash {result['hash'][:12]} equals live at txid {txid} "
                                               f"({sum(result['rows'].values())} rows)")
        for c in checks.values():
            assert not re.search(r"!=|not on disk|stale|differs|not in", c["message"]), c

        code, report = _status(kit_home)
        assert code == 0, report
        for db in report["databases"]:
            assert HEX16.fullmatch(db["local_txid"]) and HEX16.fullmatch(db["replicated_txid"]), db
        acme = _db(report, "acme")
        assert int(acme["local_txid"], 16) >= int(txid, 16)
        # The supervisor refreshes its gauges every few seconds: wait for acme's, then check it is a number.
        metrics = wait_until(lambda: (lambda t: t if 'local_txid{db="acme"}' in t else None)(
            httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics").text), 30, what="acme's gauges")
        assert re.search(r'edgehost_replication_local_txid\{db="acme"\} \d+(\.0)?\n', metrics), metrics  # numbers

        from_litestream, from_bucket = _listing(settings, ref)
        assert from_litestream and history(from_litestream) == [] and history(from_bucket) == []
    finally:
        assert up.stop() == 0, up.output()[-3000:]


@pytest.mark.e2e
def test_a_replica_holding_two_histories_fails_verify_naming_the_db_and_both_ranges(kit_home, moto_s3, tmp_path):
    """Replica switch with the kit's record of the old replica gone, then `litestream reset` (its
    hint) without deleting the stuck run's snapshot: the new run starts again at txid 1 beneath it."""
    up, settings, ref, bucket, acked = _switch(kit_home, moto_s3, noticed=False)
    url = settings.portal_url
    s3 = moto_s3.client()
    try:
        wait_until(lambda: _db(_status(kit_home)[1], SLUG)["state"] == "error", 30, interval=0.5, what="acme stuck")
        [snap] = [o for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"edgehost/{SLUG}/").get("Contents", [])]
        assert "/0009/" in snap["Key"], snap
        old_max = int(snap["Key"].rsplit("-", 1)[1][:16], 16)
        # Someone notices later than this: keep the two runs further apart than the upload slack.
        time.sleep(max(0.0, SLACK_SECONDS + 2 - (time.time() - snap["LastModified"].timestamp())))
        supervisor = SupervisorClient(settings.supervisor_socket)
        supervisor.hold("litestream")
        try:
            litestream_reset(settings, ref)
        finally:
            supervisor.release("litestream")
        for _ in range(2):
            acked += _events(url, 1, "recovered")
            sync_db(settings, ref)

        proc = edgehost(kit_home, "verify", SLUG, "--json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        [result] = json.loads(proc.stdout)["results"]
        assert result["failed_check"] == "history" and not result["ok"]
        detail = result["detail"]
        assert detail.startswith(f"{SLUG}: the replica holds more than one history: ")
        assert f"txids 0000000000000001-{old_max:016x} (1 file: snapshot, written " in detail
        assert "and txids 0000000000000001-" in detail and "txids begin again at 1: " in detail
        # every other check passed: the restore of the pinned txid comes from the new run alone
        assert [c["name"] for c in result["checks"] if c["level"] == "fail"] == ["history"]

        # points says so too, instead of a window whose earliest comes after its latest
        pts = edgehost(kit_home, "points", SLUG, "--json")
        assert pts.returncode == 1 and "txids begin again at 1" in json.loads(pts.stdout)["histories"][0]
        assert "more than one history" in edgehost(kit_home, "points", SLUG).stderr

        from_litestream, from_bucket = _listing(settings, ref)
        for listing in (from_litestream, from_bucket):
            split = history(listing)[0]
            assert split.kind == "restart"
            assert (split.older.min_txid, split.older.max_txid, split.older.levels) == (1, old_max, (9,))
            assert split.newer.min_txid == 1 and 0 in split.newer.levels

        # Why it is a failure: the latest restore is the stuck run's snapshot and lacks the newest rows.
        out = tmp_path / "latest.db"
        r = plain_restore(litestream.replication(settings).restore_url(ref), out, kit_home.environ())
        assert r.returncode == 0, r.stderr
        restored = [x[0] for x in rows(out, "SELECT id FROM compliance_events ORDER BY id")]
        assert set(acked) - set(restored), "the latest restore should lack the rows written after the reset"
    finally:
        up.stop()
