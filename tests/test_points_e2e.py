"""Which points a restore can land on, and saying so: `edgehost points --around`, `restore --at/--txid`
against a real replica written by the real litestream with short intervals, so that what the
shipped litestream.yml does over minutes and days (L0 files expire, compaction boundaries remain,
old snapshots go) happens within seconds."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgehost.engine import layout, litestream
from edgehost.ops.restore import PointIndex, list_ltx_files, parse_rfc3339, replica_store_for
from procs import SHIPPED_SNAPSHOT, SHIPPED_TUNING, edgehost, plain_restore, retune, rows, start_litestream

pytestmark = pytest.mark.e2e

# The shipped file's structure with every interval scaled down: L1 every 2 s, L2 every 6 s, L0 kept
# 6 s after compaction, a snapshot every 6 s kept 16 s (so the oldest history goes while we watch).
# As with the shipped file, every sync stays restorable back to the L1 boundary after the L0
# deletion threshold (here 4-6 s), then only L1 boundaries back to the oldest snapshot (10-16 s).
SHORT = {
    SHIPPED_TUNING: "levels:\n  - interval: 2s\n  - interval: 6s\nl0-retention: 6s\nl0-retention-check-interval: 1s",
    SHIPPED_SNAPSHOT: "snapshot:\n  interval: 6s\n  retention: 16s",
}


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Writer(threading.Thread):
    """20 commits a second into acme's events; remembers when each started and was acknowledged."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db, self.rows, self.halt = db, [], threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None)
        while not self.halt.is_set():
            started = time.time()
            rowid = conn.execute("INSERT INTO events(at) VALUES (?)", (started,)).lastrowid
            self.rows.append((rowid, started, time.time()))
            time.sleep(0.05)
        conn.close()


def _make_db(path: Path, sql: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(sql)
    conn.close()


@pytest.fixture(scope="module")
def history(tmp_path_factory, moto_s3):
    """24 s of writes replicated to S3 with the short config, then litestream stopped: a still replica."""
    import shutil

    from procs import S3_KEYS, KitHome, free_port

    path = tmp_path_factory.mktemp("p", numbered=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "litestream.yml", path / "litestream.yml")
    home = KitHome(path, {"EDGEHOST_HOME": str(path), "EDGEHOST_PORTAL_PORT": str(free_port()),
                          "EDGEHOST_METRICS_PORT": str(free_port()),
                          "EDGEHOST_REPLICA_URL": f"s3://{moto_s3.new_bucket()}/edgehost",
                          "EDGEHOST_S3_ENDPOINT": moto_s3.endpoint, "EDGEHOST_S3_REGION": moto_s3.region, **S3_KEYS})
    retune(home.path / "litestream.yml", SHORT)
    settings = home.settings()
    acme = layout.property_db(settings, "acme")
    _make_db(acme.path, "CREATE TABLE events(id INTEGER PRIMARY KEY, at REAL)")
    _make_db(settings.global_db, "CREATE TABLE users(id INTEGER PRIMARY KEY)")
    proc = start_litestream(home)
    writer = _Writer(acme.path)
    try:
        writer.start()
        time.sleep(24)
    finally:
        writer.halt.set()
        writer.join(10)
        time.sleep(1.2)
        assert proc.stop() == 0, proc.output()
    repl = litestream.replication(settings)
    env, _ = litestream.child_environ(settings)
    return home, settings, repl.restore_url(acme), env, writer.rows


def _restore(home, tmp_path, *args: str) -> dict:
    out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
    proc = edgehost(home, "restore", *args, "--to", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    report["dir"] = out
    return report


def _events(db: Path) -> list[tuple[int, float]]:
    return rows(db, "SELECT id, at FROM events ORDER BY id")


def test_points_lists_exactly_what_restores_and_at_lands_on_the_newest_point_before_t(history, tmp_path):
    home, settings, url, env, written = history
    index = PointIndex.from_url(url, env, "acme")
    summary = json.loads(edgehost(home, "points", "acme", "--json").stdout)
    assert summary["restorable_points"] == len(index) > 5
    tiers = {t["level"]: t for t in summary["tiers"]}
    # The newest points are every sync (L0); older ones only compaction boundaries (L1).
    assert 0 in tiers and 1 in tiers, summary["tiers"]
    assert tiers[1]["to_time"] < tiers[0]["from_time"]
    times = [index.time(i) for i in range(len(index))]
    assert times == sorted(times)

    # Old history: only L1 boundaries, ~2 s apart. Take T just before a boundary. A boundary's time is
    # its newest sync's, so two can be 1 s apart, or less under load: stay within the gap.
    cls = [p.files[0].level for p in index.points]
    i = max(k for k in range(len(index) - 1) if cls[k] == cls[k + 1] == 1)
    t_old = times[i + 1] - min(timedelta(milliseconds=300), (times[i + 1] - times[i]) / 2)
    listed = json.loads(edgehost(home, "points", "acme", "--around", _iso(t_old), "--count", "2", "--json").stdout)
    txids = [p["txid"] for p in listed["points"]]
    assert txids == [index.point(k).txid for k in range(max(0, i - 1), min(len(index), i + 3))]
    assert listed["lands"]["txid"] == index.point(i).txid
    assert all(0 not in p["levels"] for p in listed["points"] if p["txid"] <= listed["lands"]["txid"])
    # every point it lists restores, to exactly that txid and its stated sync time
    counts = []
    for point in listed["points"]:
        report = _restore(home, tmp_path, "acme", "--txid", point["txid"])
        result = report["results"][0]
        assert (result["txid"], result["synced_at"]) == (point["txid"], point["synced_at"])
        got = _events(report["dir"] / "acme" / "honestcam.db")
        synced = parse_rfc3339(point["synced_at"]).timestamp()
        # the point holds every write acknowledged before it was synced, and nothing begun after
        assert [r[0] for r in got] == list(range(1, len(got) + 1))
        assert all(at < synced for _, at in got)
        assert len(got) >= sum(1 for _, _, ack in written if ack < synced - 0.2)
        counts.append(len(got))
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    # and the txids between them, which it does not list, litestream cannot restore either
    between = [t for t in range(int(txids[0], 16) + 1, int(txids[-1], 16)) if f"{t:016x}" not in txids]
    assert between
    for t in between[:3]:
        r = plain_restore(url, tmp_path / f"x{t}.db", home.environ(), "-txid", f"{t:016x}")
        assert r.returncode != 0 and "no matching backup files" in r.stderr, (t, r.stdout)
    refused = edgehost(home, "restore", "acme", "--txid", f"{between[0]:x}", "--to", str(tmp_path / "no"))
    assert refused.returncode == 2 and "not a restorable point" in refused.stderr
    assert listed["points"][0]["txid"] in refused.stderr or listed["points"][1]["txid"] in refused.stderr

    # --at T lands on the boundary before T, as litestream's own -timestamp does, never after T
    report = _restore(home, tmp_path, "acme", "--at", _iso(t_old))
    result = report["results"][0]
    assert result["txid"] == listed["lands"]["txid"]
    assert result["seconds_before_at"] == listed["lands"]["seconds_before"]
    # the L1 boundary before T, however far back the compaction put it
    assert result["seconds_before_at"] == pytest.approx((t_old - times[i]).total_seconds(), abs=0.002)
    got = _events(report["dir"] / "acme" / "honestcam.db")
    assert all(at < t_old.timestamp() for _, at in got)
    missing = sum(1 for rid, _, ack in written if ack < t_old.timestamp()) - len(got)
    assert missing > 10  # what `--at` cannot bring back, and why the report states the point
    theirs = plain_restore(url, tmp_path / "lit.db", home.environ(), "-json", "-timestamp", _iso(t_old))
    assert theirs.returncode == 0 and json.loads(theirs.stdout)["txid"] == result["txid"]
    human = edgehost(home, "restore", "acme", "--at", _iso(t_old), "--to", str(tmp_path / "human"))
    assert human.returncode == 0
    assert f"txid {result['txid']}, synced {result['synced_at']}" in human.stderr and "before --at" in human.stderr

    # Recent history: every sync, ~1 s apart. (Litestream's own -timestamp refuses a time after its
    # newest file's S3 LastModified, which has whole seconds: compare a little further back.)
    j = min(k for k in range(len(index)) if cls[k] == 0)
    assert (times[-1] - times[j + 1]).total_seconds() > 1.0, [index.point(k) for k in range(j, len(index))]
    t_new = times[j] + (times[j + 1] - times[j]) / 2
    report = _restore(home, tmp_path, "acme", "--at", _iso(t_new))
    result = report["results"][0]
    assert result["txid"] == index.point(j).txid and 0 in result["levels"]
    assert 0 < result["seconds_before_at"] < 1.5
    theirs = plain_restore(url, tmp_path / "lit2.db", home.environ(), "-json", "-timestamp", _iso(t_new))
    assert theirs.returncode == 0, theirs.stderr
    assert json.loads(theirs.stdout)["txid"] == result["txid"]
    shown = edgehost(home, "points", "acme", "--around", _iso(t_new))
    assert shown.returncode == 0 and f"{index.point(j).txid}" in shown.stderr and "lands here" in shown.stderr


def test_at_names_the_point_of_every_database_and_refuses_times_before_the_window(history, tmp_path):
    home, settings, url, env, written = history
    index = PointIndex.from_url(url, env, "acme")
    # After the last write: each database lands on its newest point (litestream's own -timestamp
    # refuses a time after its newest file).
    now = datetime.now(timezone.utc)
    report = _restore(home, tmp_path, "--all", "--at", _iso(now))
    assert report["ok"] and {r["name"] for r in report["results"]} == {"acme", "global"}
    for result in report["results"]:
        assert len(result["txid"]) == 16 and result["newest"] and result["synced_at"]
        assert result["seconds_before_at"] == pytest.approx(
            (now - parse_rfc3339(result["synced_at"])).total_seconds(), abs=0.002)
        assert result["seconds_before_at"] > 0
    acme = next(r for r in report["results"] if r["name"] == "acme")
    assert acme["txid"] == index.point(len(index) - 1).txid
    assert len(_events(report["dir"] / "acme" / "honestcam.db")) == len(written)

    # The oldest history is gone with its snapshot: compacted files may remain below the oldest
    # snapshot kept, but no restore can start there, so points does not list them.
    files = list_ltx_files(replica_store_for(url, env))
    listed = {p.txid for p in index.points}
    stranded = sorted({f.max_txid for f in files if f.max_txid not in listed and f.max_txid < index.points[0].txid})
    for t in stranded[:2]:
        r = plain_restore(url, tmp_path / f"s{t}.db", home.environ(), "-txid", f"{t:016x}")
        assert r.returncode != 0, t
    before = index.time(0) - timedelta(seconds=1)
    proc = edgehost(home, "restore", "acme", "--at", _iso(before), "--to", str(tmp_path / "old"))
    assert proc.returncode == 2 and "point-in-time window" in proc.stderr and index.point(0).txid in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "old").exists()

    shown = edgehost(home, "points", "--global")
    assert shown.returncode == 0 and "restorable points" in shown.stderr and "0:00:00" not in shown.stderr


def test_points_says_what_it_found_when_there_is_nothing(kit_home):
    settings = kit_home.settings()
    replica = Path(settings.replica_url.removeprefix("file://"))
    (replica / "ghost" / settings.property_db_name / "ltx" / "0").mkdir(parents=True)
    proc = edgehost(kit_home, "points", "ghost")
    assert proc.returncode == 0, proc.stderr
    assert "no restorable point" in proc.stderr and "no LTX files" in proc.stderr and "0:00:00" not in proc.stderr
    data = json.loads(edgehost(kit_home, "points", "ghost", "--json").stdout)
    assert data["restorable_points"] == 0 and data["points"] == [] and data["lands"] is None
    refused = edgehost(kit_home, "restore", "ghost", "--at", "-1m")
    assert refused.returncode == 2 and "no restorable point" in refused.stderr
