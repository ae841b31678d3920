"""The drill's measuring and bookkeeping on real files: staleness against a pinned live snapshot,
the overwrite comparison, report and scratch pruning, and the history kept in a file replica."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from edgehost.ops import drill, state

from edgehost.engine import layout
from edgehost.errors import BadInput, EdgehostError
from edgehost.portal import store
from edgehost.engine.sqlite import connect


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _event(conn, when: datetime) -> None:
    conn.execute("INSERT INTO compliance_events(occurred_at, kind, created_at) VALUES (?, 'k', ?)",
                 (_stamp(when), _stamp(when)))


@pytest.fixture
def home(kit_home):
    settings = kit_home.settings()
    store.ensure_global(settings)
    store.create_property(settings, "acme")
    return settings


def test_staleness_counts_only_what_live_held_when_pinned(home, tmp_path):
    live = layout.property_db(home, "acme").path
    now = datetime.now(timezone.utc)
    with closing(connect(live)) as conn:
        for age in (60, 50, 40, 30):
            _event(conn, now - timedelta(seconds=age))
    restored = tmp_path / "restored.db"
    shutil.copy(live, restored)  # the replica held the four events...
    with closing(connect(live)) as conn:  # ...live went on writing: two of these existed when pinned
        _event(conn, now - timedelta(seconds=20))
        _event(conn, now - timedelta(seconds=10))
    pin = drill.pin_live(layout.property_db(home, "acme"), None)
    with closing(connect(live)) as conn:
        _event(conn, now)  # written after the pin: not missing
    st = drill.measure_staleness(restored, live, pin, pin.at, "")
    assert st.missing == {"compliance_events": 2}
    assert 20 <= st.rpo_seconds < 22
    assert st.oldest_missing_at.startswith(_stamp(now - timedelta(seconds=20))[:19])
    assert st.newest_restored_at  # the newest dated row it held (here: the schema's, applied just now)

    caught_up = drill.measure_staleness(live, live, pin, pin.at, "")
    assert caught_up.rpo_seconds == 0.0 and caught_up.missing == {}
    # against an --at point, only the writes before it count
    at = now - timedelta(seconds=15)
    st = drill.measure_staleness(restored, live, pin, at, "")
    assert st.missing == {"compliance_events": 1} and 4.9 <= st.rpo_seconds <= 5.1


def test_staleness_of_overwritten_rows(home, tmp_path):
    store.put_user(home, "u1", "a@x", None)
    store.put_progress(home, "u1", {"step": 1})
    restored = tmp_path / "restored.db"
    shutil.copy(home.global_db, restored)
    time.sleep(0.01)
    store.put_progress(home, "u1", {"step": 2})  # rewritten after the restore point
    pin = drill.pin_live(layout.global_db(home), None)
    st = drill.measure_staleness(restored, home.global_db, pin, pin.at, "")
    assert st.missing == {"study_progress": 1} and st.rpo_seconds is not None and st.rpo_seconds < 5


def test_compare_overwrites_excuses_rows_live_rewrote_later():
    restored = [{"user_id": "u1", "progress": 1, "updated_at": "2026-01-01T00:00:00.000Z"}]
    newer = [{"user_id": "u1", "progress": 2, "updated_at": "2026-01-01T00:00:05.000Z"}]
    same_time = [{"user_id": "u1", "progress": 2, "updated_at": "2026-01-01T00:00:00.000Z"}]
    assert drill.compare_overwrites(restored, newer, "user_id") == "ok"
    assert "differs from live" in drill.compare_overwrites(restored, same_time, "user_id")
    assert "not live" in drill.compare_overwrites(restored, [], "user_id")


def test_keep_reports_setting(home, kit_home):
    assert drill.keep_reports(home) == 12
    assert drill.keep_reports(kit_home.settings(EDGEHOST_DRILL_KEEP_REPORTS="3")) == 3
    for bad in ("0", "many"):
        with pytest.raises(BadInput, match="EDGEHOST_DRILL_KEEP_REPORTS"):
            drill.keep_reports(kit_home.settings(EDGEHOST_DRILL_KEEP_REPORTS=bad))


def test_old_scratch_is_pruned_but_not_kept_or_fresh_ones(tmp_path):
    old, kept, fresh = tmp_path / "drill-old", tmp_path / "drill-kept", tmp_path / "drill-fresh"
    for d in (old, kept, fresh):
        (d / "data").mkdir(parents=True)
    (kept / drill.KEPT_MARKER).touch()
    day_ago = time.time() - 2 * drill.STALE_SCRATCH_SECONDS
    for d in (old, kept):
        os.utime(d, (day_ago, day_ago))
    (tmp_path / "drill-2026-01-01T000000+0000.md").write_text("a report")
    assert drill.prune_scratch(tmp_path) == [old]
    assert kept.exists() and fresh.exists() and (tmp_path / "drill-2026-01-01T000000+0000.md").exists()


def _report(started: datetime, status: str = "pass") -> drill.DrillReport:
    report = drill.DrillReport("full", started.isoformat(timespec="seconds"), finished_at=started.isoformat(),
                               status=status, rto_seconds=1.5, rpo_seconds=0.0)
    report.databases.append(drill.DrillDatabase("acme", restored=True))
    return report


def test_reports_are_pruned_to_n_and_the_history_comes_back_from_the_replica(home, kit_home, tmp_path):
    settings = kit_home.settings(EDGEHOST_DRILL_KEEP_REPORTS="2")
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(3):
        drill.save(settings, _report(t0 + timedelta(days=i), "fail" if i == 1 else "pass"), None)
    root = settings.state_dir / "drills"
    assert sorted(p.name for p in root.iterdir()) == [
        "drill-2026-01-02T000000+0000.json", "drill-2026-01-02T000000+0000.md",
        "drill-2026-01-03T000000+0000.json", "drill-2026-01-03T000000+0000.md"]
    replica = settings.replica_url.removeprefix("file://")
    assert sorted(os.listdir(f"{replica}/_edgehost/drills")) == ["20260102T000000Z.json", "20260103T000000Z.json"]
    local = state.drill_history(settings)
    assert [(d["status"], d["source"]) for d in local] == [("pass", "local"), ("fail", "local")]

    # a new machine (empty state dir), same replica
    new = kit_home.settings(EDGEHOST_STATE_DIR=str(tmp_path / "new-state"))
    history = state.drill_history(new)
    assert [(d["started_at"], d["status"], d["source"], d["databases"]) for d in history] == [
        ("2026-01-03T00:00:00+00:00", "pass", "replica", 1), ("2026-01-02T00:00:00+00:00", "fail", "replica", 1)]
    assert state.drill_history(new, limit=1)[0]["started_at"] == "2026-01-03T00:00:00+00:00"
    assert state.drill_history(new, replica=False) == []
    # its own newer drill merges in front
    drill.save(new, _report(t0 + timedelta(days=5)), None)
    assert [d["source"] for d in state.drill_history(new, limit=3)] == ["local", "replica", "replica"]


def test_an_unreachable_replica_leaves_the_local_history(home, kit_home):
    drill.save(home, _report(datetime(2026, 1, 1, tzinfo=timezone.utc)), None)
    broken = kit_home.settings(EDGEHOST_REPLICA_URL="s3://edgehost-nowhere/x", EDGEHOST_S3_ENDPOINT="http://127.0.0.1:9",
                               AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    history = state.drill_history(broken)
    assert [d["source"] for d in history] == ["local"]
    assert json.loads(json.dumps(history))  # plain data for `status --json`
    # The supervisor's hourly read asks for the error instead: it must not keep an answer without the
    # replica for an hour (a new Mac booting before its network is up would show "no drill" meanwhile).
    with pytest.raises((EdgehostError, OSError)):
        state.drill_history(broken, strict=True)
