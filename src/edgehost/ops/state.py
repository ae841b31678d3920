"""The kit's own state database, and the history of drills (what `edgehost status` shows last).

Each drill's JSON report is kept here and in the replica (`_edgehost/drills/<time>.json` under the
replica root), so a new machine restored from the replica still knows when the last drill ran and
what it found.
"""

from __future__ import annotations

import json
import threading
from contextlib import closing
from datetime import datetime, timezone
from typing import Any, Callable

from edgehost.errors import EdgehostError, EnvironmentProblem
from edgehost.settings import Settings
from edgehost.engine.sqlite import Migration, connect, migrate

REPLICA_DRILLS = "_edgehost/drills"  # under the replica root; "_edgehost" can never be a property slug
REPLICA_TIMEOUT = 10.0  # seconds `drill_history` waits for the replica before answering from this machine
REPLICA_DRILLS_EVERY = 3600.0  # seconds between the supervisor's reads of the drills the replica holds (one LIST)

_MIGRATIONS = [
    Migration(1, "0001_drills.sql", """
        CREATE TABLE drills (
            id          INTEGER PRIMARY KEY,
            started_at  TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            scenario    TEXT NOT NULL,
            status      TEXT NOT NULL,   -- pass | fail | error
            rto_seconds REAL,
            databases   INTEGER NOT NULL,
            failed      INTEGER NOT NULL,
            report      TEXT NOT NULL    -- the JSON report
        );
    """),
    Migration(2, "0002_verifies.sql", """
        CREATE TABLE verifies (
            id          INTEGER PRIMARY KEY,
            finished_at TEXT NOT NULL,
            status      TEXT NOT NULL,   -- pass | fail
            databases   INTEGER NOT NULL,
            failed      INTEGER NOT NULL,
            summary     TEXT NOT NULL    -- the failures, one per line
        );
    """),
]

_SUMMARY_KEYS = ("id", "started_at", "finished_at", "scenario", "status", "rto_seconds", "databases", "failed",
                 "rpo_seconds", "host", "source")


def _open(settings: Settings):
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.kit_db, create=True)
    migrate(conn, _MIGRATIONS, settings.kit_db)
    return conn


def record_drill(settings: Settings, report: dict[str, Any], keep: int | None = None) -> int:
    """Add a drill to this machine's history; with `keep`, only the newest `keep` drills stay."""
    with closing(_open(settings)) as conn:
        cur = conn.execute(
            "INSERT INTO drills(started_at, finished_at, scenario, status, rto_seconds, databases, failed, report) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (report["started_at"], report["finished_at"], report["scenario"], report["status"],
             report.get("rto_seconds"), len(report.get("databases", [])), len(report.get("failures", [])),
             json.dumps(report, default=str)),
        )
        if keep is not None:
            conn.execute("DELETE FROM drills WHERE id NOT IN (SELECT id FROM drills ORDER BY id DESC LIMIT ?)",
                         (max(1, keep),))
        return int(cur.lastrowid)


def record_verify(settings: Settings, databases: int, failures: list[str], keep: int = 100) -> int:
    """Add a verify run to this machine's history (the supervisor alerts on a failed one)."""
    with closing(_open(settings)) as conn:
        cur = conn.execute(
            "INSERT INTO verifies(finished_at, status, databases, failed, summary) VALUES (?, ?, ?, ?, ?)",
            (datetime.now(timezone.utc).isoformat(timespec="seconds"), "fail" if failures else "pass",
             databases, len(failures), "\n".join(failures)))
        conn.execute("DELETE FROM verifies WHERE id NOT IN (SELECT id FROM verifies ORDER BY id DESC LIMIT ?)", (keep,))
        return int(cur.lastrowid)


def last_checks(settings: Settings) -> dict[str, Any]:
    """The newest drill and verify on this machine, and when each last passed (ISO times, or None)."""
    out: dict[str, Any] = {"drill": None, "drill_passed_at": None, "verify": None, "verify_passed_at": None}
    if not settings.kit_db.exists():
        return out
    with closing(_open(settings)) as conn:
        row = conn.execute("SELECT id, finished_at, status, failed, scenario FROM drills ORDER BY id DESC LIMIT 1").fetchone()
        if row:
            out["drill"] = {"id": row[0], "finished_at": row[1], "status": row[2], "failed": row[3], "scenario": row[4]}
        out["drill_passed_at"] = conn.execute("SELECT max(finished_at) FROM drills WHERE status = 'pass'").fetchone()[0]
        row = conn.execute("SELECT id, finished_at, status, failed, summary FROM verifies ORDER BY id DESC LIMIT 1").fetchone()
        if row:
            out["verify"] = {"id": row[0], "finished_at": row[1], "status": row[2], "failed": row[3], "summary": row[4]}
        out["verify_passed_at"] = conn.execute("SELECT max(finished_at) FROM verifies WHERE status = 'pass'").fetchone()[0]
    return out


def replica_key(report: dict[str, Any]) -> str:
    """Where a drill's report lives in the replica: `_edgehost/drills/<started, UTC>.json`."""
    started = datetime.fromisoformat(report["started_at"]).astimezone(timezone.utc)
    return f"{REPLICA_DRILLS}/{started.strftime('%Y%m%dT%H%M%SZ')}.json"


def _replica_store(settings: Settings):
    from edgehost.engine.replica import ReplicaStore

    return ReplicaStore.from_settings(settings)


def _replica_reports(store) -> list[str]:
    """The keys of the drill reports in the replica, newest first (one LIST)."""
    return sorted((obj.key for obj in store.walk(REPLICA_DRILLS) if obj.key.endswith(".json")), reverse=True)


def store_drill_in_replica(settings: Settings, report: dict[str, Any], keep: int | None = None) -> str:
    """Write a drill's JSON report into the replica; with `keep`, delete all but the newest `keep` there."""
    store = _replica_store(settings)
    key = replica_key(report)
    store.write(key, (json.dumps(report, indent=2, default=str) + "\n").encode())
    if keep is not None:
        for old in _replica_reports(store)[max(1, keep):]:
            store.delete(old)
    return key


def _summary(report: dict[str, Any], source: str, row_id: int | None = None) -> dict[str, Any]:
    return {"id": row_id, "started_at": report.get("started_at", ""), "finished_at": report.get("finished_at", ""),
            "scenario": report.get("scenario", ""), "status": report.get("status", "error"),
            "rto_seconds": report.get("rto_seconds"), "databases": len(report.get("databases") or []),
            "failed": len(report.get("failures") or []), "rpo_seconds": report.get("rpo_seconds"),
            "host": report.get("host", ""), "source": source}


def _local_history(settings: Settings, limit: int) -> list[dict[str, Any]]:
    if not settings.kit_db.exists():
        return []
    with closing(_open(settings)) as conn:
        rows = conn.execute(
            "SELECT id, started_at, finished_at, scenario, status, rto_seconds, databases, failed, "
            "json_extract(report, '$.rpo_seconds'), json_extract(report, '$.host') "
            "FROM drills ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [dict(zip(_SUMMARY_KEYS, (*row[:9], row[9] or "", "local"))) for row in rows]


def _replica_history(settings: Settings, limit: int, known: set[str]) -> list[dict[str, Any]]:
    """The newest `limit` drills the replica holds: one LIST, then one GET per report not in `known`."""
    store = _replica_store(settings)
    out = []
    for key in _replica_reports(store)[:limit]:
        if key in known:
            continue
        try:
            out.append(_summary(json.loads(store.read(key)), "replica"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not a report this kit wrote: skip it
    return out


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() in a daemon thread, or EnvironmentProblem when it takes longer than `seconds`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # handed back to the caller below
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise EnvironmentProblem(f"the replica did not answer within {seconds:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def drill_history(settings: Settings, limit: int = 20, replica: bool = True,
                  strict: bool = False) -> list[dict[str, Any]]:
    """The latest drills, newest first (without their full reports): this machine's, merged with
    the ones kept in the replica (one LIST, at most `limit` GETs) unless `replica` is False.

    An unreachable replica leaves this machine's history alone, unless `strict` (then its error
    is raised: the supervisor keeps what it last read rather than an answer without the replica).
    Each entry says where it came from (`source`: local or replica) and which machine ran it (`host`).
    """
    local = _local_history(settings, limit)
    remote: list[dict[str, Any]] = []
    if replica:
        known = set()
        for entry in local:
            try:
                known.add(replica_key(entry))
            except (ValueError, KeyError, TypeError):
                pass
        try:
            remote = _within(REPLICA_TIMEOUT, lambda: _replica_history(settings, limit, known))
        except (EdgehostError, OSError):
            if strict:
                raise
            remote = []  # unreachable or not configured: this machine's history still answers
    return merge_drills(local, remote, limit=limit)


def merge_drills(*groups: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Drill summaries from several sources, newest first."""
    merged = [d for group in groups for d in group]
    merged.sort(key=lambda d: _started(d["started_at"]), reverse=True)
    return merged[:limit]


def _started(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
