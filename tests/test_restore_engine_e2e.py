"""The restore engine and the local mirror against a real S3 endpoint (moto over HTTP) written by the
real litestream with short intervals, so every level (L0, L1, L2, snapshots) is in the bucket.

What a user would notice: every database restores to exactly what plain `litestream restore` gives
at latest, at a txid and at a time; `restore --all` LISTs the bucket once (counted at the endpoint,
not reported by the kit); a file compacted away between the listing and the download costs a new
listing of that database, not the restore; the mirror restores with the endpoint unreachable.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgehost.engine import layout, litestream
from edgehost.engine.bucket import list_root, plan_files
from edgehost.engine.replica import ReplicaStore
from edgehost.engine.sqlite import content_hash
from edgehost.ops.recovery import RestoreEngine
from procs import (S3_KEYS, SHIPPED_SNAPSHOT, SHIPPED_TUNING, CountingProxy, KitHome, edgehost, free_port,
                   plain_restore, retune, start_litestream, wait_until)

pytestmark = pytest.mark.e2e

SLUGS = ["acme", "beta", "gamma", "delta"]
SHORT = {
    SHIPPED_TUNING: "levels:\n  - interval: 2s\n  - interval: 6s\nl0-retention: 6s\nl0-retention-check-interval: 1s",
    SHIPPED_SNAPSHOT: "snapshot:\n  interval: 8s\n  retention: 1h",
}


def _make_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, at REAL, pad BLOB)")
    conn.close()


class _Writers(threading.Thread):
    """Commits into every database, round robin, ~40 a second in all, some with a page of padding."""

    def __init__(self, paths: list[Path]):
        super().__init__(daemon=True)
        self.paths, self.halt = paths, threading.Event()

    def run(self) -> None:
        conns = [sqlite3.connect(p, isolation_level=None) for p in self.paths]
        i = 0
        while not self.halt.is_set():
            conns[i % len(conns)].execute("INSERT INTO events(at, pad) VALUES (?, randomblob(?))",
                                          (time.time(), 3000 if i % 7 == 0 else 10))
            i += 1
            time.sleep(0.025)
        for c in conns:
            c.close()


def _write_for(home: KitHome, seconds: float) -> None:
    settings = home.settings()
    paths = [settings.global_db] + [layout.property_db(settings, s).path for s in SLUGS]
    proc = start_litestream(home)
    writers = _Writers(paths)
    try:
        writers.start()
        time.sleep(seconds)
    finally:
        writers.halt.set()
        writers.join(10)
        time.sleep(1.5)  # the last writes synced
        assert proc.stop() == 0, proc.output()


@pytest.fixture(scope="module")
def bucket(tmp_path_factory, moto_s3):
    """~20 s of writes into the global DB and four tenants, replicated with every level present;
    litestream stopped afterwards, so the bucket stands still. A counting proxy fronts the endpoint."""
    path = tmp_path_factory.mktemp("e", numbered=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "litestream.yml", path / "litestream.yml")
    retune(path / "litestream.yml", SHORT)
    home = KitHome(path, {"EDGEHOST_HOME": str(path), "EDGEHOST_PORTAL_PORT": str(free_port()),
                          "EDGEHOST_METRICS_PORT": str(free_port()),
                          "EDGEHOST_REPLICA_URL": f"s3://{moto_s3.new_bucket()}/edgehost",
                          "EDGEHOST_S3_ENDPOINT": moto_s3.endpoint, "EDGEHOST_S3_REGION": moto_s3.region, **S3_KEYS})
    settings = home.settings()
    for p in [settings.global_db] + [layout.property_db(settings, s).path for s in SLUGS]:
        _make_db(p)
    mid = time.time()
    _write_for(home, 10)
    mid = datetime.fromtimestamp(mid + 6, timezone.utc)
    _write_for(home, 10)
    proxy = CountingProxy(moto_s3.endpoint)
    yield home, settings, mid, proxy
    proxy.close()


def _urls(settings) -> dict[str, str]:
    repl = litestream.replication(settings)
    return {key: repl.restore_url(layout.ref_for(settings, key)) for key in [layout.GLOBAL, *SLUGS]}


def _env(settings) -> dict[str, str]:
    return litestream.child_environ(settings)[0]


def _plain(settings, key: str, out: Path, *extra: str) -> str:
    proc = plain_restore(_urls(settings)[key], out, _env(settings), *extra)
    assert proc.returncode == 0, proc.stderr
    return content_hash(sqlite3.connect(out))


def _hashes(root: Path, settings) -> dict[str, str]:
    out = {}
    for key in [layout.GLOBAL, *SLUGS]:
        conn = sqlite3.connect(root / layout.ref_for(settings, key).relpath)
        out[key] = content_hash(conn)
        conn.close()
    return out


def _via(home: KitHome, proxy: CountingProxy, *args: str) -> dict:
    proxy.reset()
    proc = edgehost(KitHome(home.path, {**home.env, "EDGEHOST_S3_ENDPOINT": proxy.endpoint}), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_level_is_in_the_bucket_and_the_plan_is_litestreams_own(bucket, tmp_path):
    home, settings, mid, _ = bucket
    store = ReplicaStore.from_settings(settings, settings.replica_url)
    listing = list_root(store)
    levels = {f.level for f in listing.files("acme/honestcam.db")}
    assert {0, 1, 2, 9} <= levels, levels
    env = _env(settings)
    for key, url in _urls(settings).items():
        rel = layout.ref_for(settings, key).relpath
        files = listing.files(rel)
        txids = sorted({f.max_txid for f in files})
        for txid in (txids[-1], txids[len(txids) // 2], txids[len(txids) // 3]):
            proc = plain_restore(url, tmp_path / "dry.db", env, "-dry-run", "-txid", f"{txid:016x}")
            theirs = sorted(re.findall(r"^(\d+)\s+([0-9a-f]{16}-[0-9a-f]{16}\.ltx)", proc.stdout, re.M))
            mine = plan_files(files, txid)
            if not theirs:  # not a point litestream can land on: the plan must say so too
                assert mine is None, (key, txid, proc.stdout, proc.stderr)
                continue
            assert mine is not None and sorted((str(f.level), f.name) for f in mine) == theirs, (key, txid)


def test_restore_all_equals_plain_litestream_at_latest_and_at_a_time_with_one_listing(bucket, tmp_path):
    home, settings, mid, proxy = bucket
    report = _via(home, proxy, "restore", "--all", "--to", str(tmp_path / "latest"))
    assert report["ok"] and len(report["results"]) == 1 + len(SLUGS)
    # The endpoint saw one listing of the root (one page here) and the delimiter listing that names
    # the databases; no database was LISTed on its own.
    assert proxy.lists() <= 3, proxy.requests
    assert proxy.gets() == report["requests"]["gets"] > 0
    mine = _hashes(tmp_path / "latest", settings)
    for key in mine:
        assert mine[key] == _plain(settings, key, tmp_path / f"plain-{key}.db"), key

    at = mid.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    report = _via(home, proxy, "restore", "--all", "--at", at, "--to", str(tmp_path / "at"))
    assert report["ok"] and all(r["seconds_before_at"] >= 0 for r in report["results"])
    assert proxy.lists() <= 3
    mine = _hashes(tmp_path / "at", settings)
    for key in mine:
        assert mine[key] == _plain(settings, key, tmp_path / f"plain-at-{key}.db", "-timestamp", at), key
    assert mine != _hashes(tmp_path / "latest", settings)


def test_restore_at_a_txid_equals_plain_litestream(bucket, tmp_path):
    home, settings, _, proxy = bucket
    for key in [layout.GLOBAL, *SLUGS]:
        engine = RestoreEngine(settings, litestream.Litestream.from_settings(settings))
        index = engine.index(key)
        engine.close()
        point = index.point(len(index) // 2)
        args = ["--global"] if key == layout.GLOBAL else [key]
        report = _via(home, proxy, "restore", *args, "--txid", point.txid, "--to", str(tmp_path / key))
        assert report["results"][0]["txid"] == point.txid
        conn = sqlite3.connect(tmp_path / key / layout.ref_for(settings, key).relpath)
        assert content_hash(conn) == _plain(settings, key, tmp_path / f"plain-{key}.db", "-txid", point.txid)


def test_a_file_compacted_away_after_the_listing_costs_a_new_listing_not_the_restore(bucket, tmp_path, moto_s3):
    home, settings, _, _ = bucket
    # A copy of the bucket's state that litestream keeps writing to: listing, then compaction, then GET.
    live = KitHome(tmp_path / "h", {**home.env, "EDGEHOST_HOME": str(tmp_path / "h"),
                                    "EDGEHOST_REPLICA_URL": f"s3://{moto_s3.new_bucket()}/edgehost"})
    live.path.mkdir()
    # Snapshots every 3 s kept 3 s: litestream itself deletes the snapshot (and the files above it)
    # that the listing planned, as retention does with the shipped settings once a day.
    text = (home.path / "litestream.yml").read_text()
    old = "snapshot:\n  interval: 8s\n  retention: 1h"
    assert old in text
    (live.path / "litestream.yml").write_text(text.replace(old, "snapshot:\n  interval: 3s\n  retention: 3s"))
    lsettings = live.settings()
    for p in [lsettings.global_db] + [layout.property_db(lsettings, s).path for s in SLUGS]:
        _make_db(p)
    _write_for(live, 3)
    engine = RestoreEngine(lsettings, litestream.Litestream.from_settings(lsettings))
    try:
        engine.keys()  # the listing
        point = engine.resolve("acme")
        planned = plan_files(engine.listing(engine.locate("acme")[0]).files("acme/honestcam.db"), int(point.txid, 16))
        store = ReplicaStore.from_settings(lsettings, lsettings.replica_url)
        proc = start_litestream(live)
        writers = _Writers([layout.property_db(lsettings, "acme").path])
        writers.start()
        try:
            present = lambda: {f.key for f in list_root(store).files("acme/honestcam.db")}  # noqa: E731
            wait_until(lambda: any(f.key not in present() for f in planned), 40, interval=0.5,
                       what="litestream's compaction to delete a planned file")
        finally:
            writers.halt.set()
            writers.join(10)
            time.sleep(1.5)
            assert proc.stop() == 0, proc.output()
        result = engine.restore("acme", tmp_path / "acme.db")
        assert result.ok, result.error
        assert engine.stats.relists == 1
        assert int(result.txid, 16) > int(point.txid, 16)  # the point chosen afresh from the new listing
    finally:
        engine.close()
    url = litestream.replication(lsettings).restore_url(layout.property_db(lsettings, "acme"))
    assert plain_restore(url, tmp_path / "plain.db", _env(lsettings), "-txid", result.txid).returncode == 0
    assert content_hash(sqlite3.connect(tmp_path / "acme.db")) == content_hash(sqlite3.connect(tmp_path / "plain.db"))


def test_the_mirror_restores_with_the_bucket_unreachable_and_keeps_what_the_bucket_deleted(bucket, tmp_path):
    home, settings, mid, proxy = bucket
    mirror = tmp_path / "usb" / "edgehost-mirror"
    first = _via(home, proxy, "mirror", "--to", str(mirror))
    assert first["fetched"] == first["listed"] > 0 and first["list_pages"] >= 1
    assert proxy.lists() == first["list_pages"] <= 2 and proxy.gets() == first["fetched"]
    again = _via(home, proxy, "mirror", "--to", str(mirror))
    assert again["fetched"] == 0 and proxy.gets() == 0  # nothing new: nothing downloaded

    # No network: the endpoint is a closed port.
    offline = KitHome(home.path, {**home.env, "EDGEHOST_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    proc = edgehost(offline, "restore", "--all", "--from", str(mirror), "--to", str(tmp_path / "from-mirror"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert _hashes(tmp_path / "from-mirror", settings) == _hashes(_restore_all(home, tmp_path / "from-bucket"), settings)
    at = mid.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # mtimes are the LTX timestamps: --at lands on the same points
    proc = edgehost(offline, "restore", "--all", "--from", str(mirror), "--at", at, "--to", str(tmp_path / "m-at"), "--json")
    assert proc.returncode == 0, proc.stderr
    from_bucket = _via(home, proxy, "restore", "--all", "--at", at, "--to", str(tmp_path / "b-at"))
    assert [r["txid"] for r in json.loads(proc.stdout)["results"]] == [r["txid"] for r in from_bucket["results"]]
    # Plain litestream reads the mirror as a file replica.
    assert plain_restore((mirror / "acme" / "honestcam.db").as_uri(), tmp_path / "p.db", {}).returncode == 0

    # The bucket loses a database (a mistaken delete): the mirror keeps it through the grace period.
    client = ReplicaStore.from_settings(settings, settings.replica_url)
    gone = [o.key for o in client.walk("gamma")]
    for key in gone:
        client.delete(key)
    kept = _via(home, proxy, "mirror", "--to", str(mirror))
    assert kept["pending_delete"] == len(gone) and kept["deleted"] == 0
    assert (mirror / "gamma" / "honestcam.db" / "ltx").is_dir()
    later = _via(home, proxy, "mirror", "--to", str(mirror), "--grace", "0s")
    assert later["deleted"] == len(gone) and later["pending_delete"] == 0
    assert not any((mirror / "gamma").rglob("*.ltx"))


def test_the_mirror_refuses_the_data_dir_the_replica_and_a_foreign_directory(kit_home, tmp_path):
    settings = kit_home.settings()
    for bad, says in ((settings.data_dir / "m", "outside the data dir"),
                      (Path(settings.replica_url.removeprefix("file://")), "the replica itself")):
        proc = edgehost(kit_home, "mirror", "--to", str(bad))
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    proc = edgehost(kit_home, "mirror", "--to", str(tmp_path / "photos"))
    assert proc.returncode == 2 and "not an edgehost mirror" in proc.stderr
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"x"
    proc = edgehost(kit_home, "restore", "--all", "--from", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def _restore_all(home: KitHome, out: Path) -> Path:
    proc = edgehost(home, "restore", "--all", "--to", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_plan_the_listing_cannot_make_falls_back_to_litestreams_own_restore_and_says_so(bucket, tmp_path, monkeypatch):
    home, settings, _, _ = bucket
    import edgehost.ops.recovery as recovery

    monkeypatch.setattr(recovery, "plan_files", lambda files, txid: None)  # as if the chain had a gap
    with RestoreEngine(settings, litestream.Litestream.from_settings(settings)) as engine:
        result = engine.restore("delta", tmp_path / "delta.db")
        assert result.ok, result.error
        assert "straight from the bucket" in result.note and engine.stats.fallbacks == 1 and engine.refresh_stats().gets == 0
    assert content_hash(sqlite3.connect(tmp_path / "delta.db")) == _plain(settings, "delta", tmp_path / "plain.db")


def test_mirror_watch_follows_new_tenants_and_stops_cleanly(kit_home, tmp_path):
    import httpx

    from procs import Proc, edgehost_argv, start_supervisor, sync_db

    up = start_supervisor(kit_home)
    mirror = tmp_path / "nas" / "mirror"
    watch = Proc(edgehost_argv("mirror", "--to", str(mirror), "--watch", "--interval", "1s"), kit_home.environ(),
                 tmp_path / "mirror.log")
    try:
        settings = kit_home.settings()
        httpx.post(f"{settings.portal_url}/properties", json={"slug": "late"}).raise_for_status()
        httpx.post(f"{settings.portal_url}/properties/late/events", json={"kind": "k"}).raise_for_status()
        txid = sync_db(settings, layout.property_db(settings, "late"))["txid"]
        wait_until(lambda: any(int(p.name.split("-")[1][:16], 16) >= txid
                               for p in (mirror / "late" / "honestcam.db" / "ltx" / "0").glob("*.ltx")),
                   30, interval=0.2, what="the watching mirror to fetch the new tenant's latest file")
        assert watch.alive()
    finally:
        code = watch.stop(20)
        assert up.stop() == 0
    assert code == 0, watch.output()
    proc = edgehost(kit_home, "restore", "late", "--from", str(mirror), "--to", str(tmp_path / "r"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["txid"] == f"{txid:016x}"


def test_a_mirror_round_with_the_bucket_unreachable_fails_and_deletes_nothing(bucket, tmp_path):
    home, settings, _, _ = bucket
    mirror = tmp_path / "m"
    assert edgehost(home, "mirror", "--to", str(mirror)).returncode == 0
    files = sorted(p for p in mirror.rglob("*.ltx"))
    offline = KitHome(home.path, {**home.env, "EDGEHOST_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    proc = edgehost(offline, "mirror", "--to", str(mirror), "--grace", "0s", "--json")
    assert proc.returncode == 1 and "list failed" in json.loads(proc.stdout)["errors"][0]
    assert sorted(p for p in mirror.rglob("*.ltx")) == files


def test_a_cancelled_mirror_round_stops_listing_and_deletes_nothing(bucket, tmp_path):
    """A promotion cancels the standby's round in flight: what that round saw is not the whole bucket,
    so nothing it did not see may be taken for deleted, whatever the grace."""
    from edgehost.ops.mirror import mirror_once

    home, settings, _, _ = bucket
    mirror = tmp_path / "m"
    assert edgehost(home, "mirror", "--to", str(mirror)).returncode == 0
    one = next(mirror.rglob("*.ltx"))
    stray = one.with_name("00000000ffffff00-00000000ffffff00.ltx")  # in the mirror, not in the bucket
    shutil.copy(one, stray)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 3  # asked before the walk, then at each object: stops after two objects

    ls = litestream.Litestream.from_settings(settings)
    report = mirror_once(settings, ls, mirror, grace=0, cancel=cancel)
    assert report.cancelled and any(" cancelled after " in e for e in report.errors), report.errors
    assert report.listed == 0 and report.deleted == 0 and stray.exists()
    untouched = mirror_once(settings, ls, mirror, grace=0, cancel=lambda: True)  # cancelled before it began
    assert untouched.cancelled and untouched.listed == 0 and untouched.deleted == 0 and stray.exists()
    assert mirror_once(settings, ls, mirror, grace=0).deleted == 1 and not stray.exists()  # a whole round does
