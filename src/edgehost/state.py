"""The kit's own state database: the history of drills (what `edgehost status` shows last)."""

from __future__ import annotations

import json
from contextlib import closing
from typing import Any

from .settings import Settings
from .sqlite import Migration, connect, migrate

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
]


def _open(settings: Settings):
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(settings.kit_db, create=True)
    migrate(conn, _MIGRATIONS, settings.kit_db)
    return conn


def record_drill(settings: Settings, report: dict[str, Any]) -> int:
    with closing(_open(settings)) as conn:
        cur = conn.execute(
            "INSERT INTO drills(started_at, finished_at, scenario, status, rto_seconds, databases, failed, report) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (report["started_at"], report["finished_at"], report["scenario"], report["status"],
             report.get("rto_seconds"), len(report.get("databases", [])), len(report.get("failures", [])),
             json.dumps(report, default=str)),
        )
        return int(cur.lastrowid)


def drill_history(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The latest drills, newest first (without their full reports)."""
    if not settings.kit_db.exists():
        return []
    with closing(_open(settings)) as conn:
        rows = conn.execute(
            "SELECT id, started_at, finished_at, scenario, status, rto_seconds, databases, failed "
            "FROM drills ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    keys = ("id", "started_at", "finished_at", "scenario", "status", "rto_seconds", "databases", "failed")
    return [dict(zip(keys, row)) for row in rows]
