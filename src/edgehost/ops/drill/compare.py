"""The restored copy against live, by the app contract's tables: pinning live, content, staleness (RPO)."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from edgehost.engine import litestream
from edgehost.engine.layout import DatabaseRef
from edgehost.engine.sqlite import connect, user_tables
from edgehost.errors import EdgehostError
from edgehost.ops.drill.report import DrillDatabase
from edgehost.settings import AppContract


# The kit's own tables are append-only too (verify's sentinels, the migrations record); the app's come
# from its contract (settings.app: honestcam's by default).
KIT_APPEND_ONLY = {"_edgehost_verify": "written_at", "schema_versions": "applied_at"}


@dataclass(frozen=True)
class Tables:
    """Which tables the drill can date: append-only (table -> dated column) and overwritten per key
    (table -> (key column, dated column))."""

    append_only: dict[str, str]
    overwrite: dict[str, tuple[str, str]]

    @classmethod
    def of(cls, app: AppContract) -> "Tables":
        return cls({**app.append_only, **KIT_APPEND_ONLY}, {t: tuple(kd) for t, kd in app.overwrite.items()})


DEFAULT_TABLES = Tables.of(AppContract())


SOCKET_TIMEOUT = 2.0  # a litestream that does not answer its control socket in this long is stalled


def compare_overwrites(restored: list[dict], live: list[dict], key: str, since: str | None = None,
                       dated: str = "updated_at") -> str:
    """Last-write-wins rows match live unless live rewrote them after the restored version.

    A row may differ where live's `updated_at` is newer than the restored row's (live changed it
    after the restore point), or, when `since` is given, newer than `since`.
    """
    live_by = {r[key]: r for r in live}
    for row in restored:
        other = live_by.get(row[key])
        if other is None:
            return f"{key} {row[key]!r} is in the restored copy but not live"
        if other == row:
            continue
        changed = _jd(str(other.get(dated, "")))
        bounds = [_jd(str(row.get(dated, "")))] + ([_jd(since)] if since is not None else [])
        if changed is not None and any(b is not None and changed > b for b in bounds):
            continue
        return f"{key} {row[key]!r} differs from live and live has not changed it since"
    return "ok"


def _jd(text: str | None) -> float | None:
    """A timestamp (ISO 8601, 'Z' or an offset) as a Julian day number, like SQLite's julianday()."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp() / 86400.0 + 2440587.5


def _iso(jd: float) -> str:
    return datetime.fromtimestamp((jd - 2440587.5) * 86400.0, timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class LivePin:
    """One live database as it stood when the restore point was decided."""

    at: datetime  # when the read snapshot was taken
    txid: int | None  # litestream's local txid just before it (None: litestream did not answer)
    tails: dict[str, int]  # append-only table -> highest rowid in the snapshot
    rows: dict[str, dict[Any, tuple[float | None, str]]]  # overwrite table -> key -> (dated, digest)


def _digest(row: tuple) -> str:
    return hashlib.sha256(repr(row).encode()).hexdigest()


def _dated_rows(conn: sqlite3.Connection, table: str, key: str, dated: str) -> dict[Any, tuple[float | None, str]]:
    rows = conn.execute(f'SELECT "{key}", julianday("{dated}"), * FROM "{table}"')
    return {r[0]: (r[1], _digest(r[2:])) for r in rows}


def pin_live(ref: DatabaseRef, sock: litestream.ControlSocket | None, tables: Tables = DEFAULT_TABLES) -> LivePin:
    """Litestream's local txid, then one read snapshot of the live DB: its append-only tails and
    its overwritten rows. The snapshot holds at least everything up to that txid."""
    txid = None
    if sock is not None:
        try:
            txid = int(sock.sync(ref.path, wait=False, timeout=int(SOCKET_TIMEOUT))["txid"])
        except (EdgehostError, KeyError, ValueError, TypeError):
            txid = None
    with closing(connect(ref.path, readonly=True)) as conn:
        conn.execute("BEGIN")
        try:
            present = set(user_tables(conn))  # the snapshot starts with this first read
            at = datetime.now(timezone.utc)
            tails = {t: conn.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{t}"').fetchone()[0]
                     for t in tables.append_only if t in present}
            rows = {t: _dated_rows(conn, t, key, dated) for t, (key, dated) in tables.overwrite.items() if t in present}
        finally:
            conn.execute("ROLLBACK")
    return LivePin(at, txid, tails, rows)


@dataclass
class Staleness:
    rpo_seconds: float | None
    missing: dict[str, int] = field(default_factory=dict)
    oldest_missing_at: str = ""
    newest_restored_at: str = ""
    detail: str = ""  # why the gap cannot be told, when rpo_seconds is None


def _txid_int(text: str) -> int | None:
    try:
        return int(str(text), 16) if text not in ("", None) else None
    except ValueError:
        return None


def _older(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _newer(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def measure_staleness(restored: Path, live: Path, pin: LivePin, reference: datetime, restored_txid: str,
                      tables: Tables = DEFAULT_TABLES) -> Staleness:
    """What the restored copy lacks of the pinned live snapshot, written at or before `reference`.

    Append-only tables: live rows past the restored copy's last rowid, up to the snapshot's (rows
    are never rewritten, so reading them now reads what the snapshot held). Overwrite tables: pinned
    rows the restored copy lacks or holds an older version of. RPO is `reference` minus the oldest
    such row's date: how much a recovery at that instant would have lost (0 when nothing is missing).
    """
    ref_jd = _jd(reference.isoformat())
    missing: dict[str, int] = {}
    oldest = newest = None
    undated = 0
    with closing(connect(restored, readonly=True)) as r, closing(connect(live, readonly=True)) as lv:
        have = set(user_tables(r))
        for table, dated in tables.append_only.items():
            if table not in pin.tails:
                continue
            last = r.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{table}"').fetchone()[0] if table in have else 0
            if last:
                newest = _newer(newest, r.execute(f'SELECT julianday("{dated}") FROM "{table}" WHERE rowid = ?',
                                                  (last,)).fetchone()[0])
            if pin.tails[table] <= last:
                continue
            count, first, nulls = lv.execute(
                f'SELECT count(*), MIN(julianday("{dated}")), count(*) - count(julianday("{dated}")) FROM "{table}" '
                f'WHERE rowid > ? AND rowid <= ? AND (julianday("{dated}") IS NULL OR julianday("{dated}") <= ?)',
                (last, pin.tails[table], ref_jd)).fetchone()
            if count:
                missing[table], undated, oldest = count, undated + nulls, _older(oldest, first)
        for table, (key, dated) in tables.overwrite.items():
            if table not in pin.rows:
                continue
            got = _dated_rows(r, table, key, dated) if table in have else {}
            for jd, _ in got.values():
                newest = _newer(newest, jd)
            lacking = []
            for k, (jd, digest) in pin.rows[table].items():
                mine = got.get(k)
                if mine is not None and (mine[1] == digest or (jd is not None and mine[0] is not None and jd <= mine[0])):
                    continue  # the same row, or live's differs without being newer: a divergence, for `answers`
                if jd is None or jd <= ref_jd:
                    lacking.append(jd)
            if lacking:
                missing[table] = len(lacking)
                undated += lacking.count(None)
                for jd in lacking:
                    oldest = _older(oldest, jd)
    out = Staleness(0.0, missing, newest_restored_at=_iso(newest) if newest is not None else "")
    if not pin.tails and not pin.rows:
        # No table the drill can date: only the txids can tell.
        mine = _txid_int(restored_txid)
        if pin.txid is None or mine is None:
            out.rpo_seconds, out.detail = None, "no dated table, and litestream did not give the live txid"
        elif mine < pin.txid:
            out.rpo_seconds = None
            out.detail = f"no dated table, and the restore is {pin.txid - mine} transaction(s) behind live"
    elif missing:
        if undated or oldest is None:
            out.rpo_seconds = None
            out.detail = f"{undated or sum(missing.values())} missing row(s) carry no readable date"
        else:
            out.rpo_seconds = round(max(0.0, (ref_jd - oldest) * 86400.0), 1)
            out.oldest_missing_at = _iso(oldest)
    return out


def _fresh_check(db: DrillDatabase, st: Staleness, threshold: float, latest: bool) -> str:
    txids = f"restored txid {db.txid or '?'}, live txid {db.live_txid or 'unknown (litestream did not answer)'}"
    lacks = ", ".join(f"{n} row(s) of {t}" for t, n in st.missing.items())
    if st.rpo_seconds is None:
        return f"stale or unknown: {st.detail}" + (f"; the restore lacks {lacks}" if lacks else "") + f"; {txids}"
    if st.rpo_seconds <= threshold:
        return "ok"
    when = "the drill read live" if latest else "the restore point"
    return (f"stale: {st.rpo_seconds:.1f}s of writes missing, over lag_alert_seconds ({threshold:g}s): the restore "
            f"lacks {lacks}, the oldest written {st.oldest_missing_at}, {st.rpo_seconds:.1f}s before {when}; {txids}")


def _rows_by_rowid(conn: sqlite3.Connection, table: str, upto: int) -> Iterator[tuple]:
    return conn.execute(f'SELECT rowid, * FROM "{table}" WHERE rowid <= ? ORDER BY rowid', (upto,))


def compare_content(restored: Path, live: Path, tables: Tables = DEFAULT_TABLES) -> str:
    """The restored copy against the live file, table by table as the app contract declares them.

    Append-only: the restored rows must be exactly live's first rows (same rowids, same values).
    Overwritten per key: a restored row must exist live and match it, unless live rewrote it later
    (its dated column is newer). Rows live has and the restore lacks are staleness ("fresh").
    """
    with closing(connect(restored, readonly=True)) as r, closing(connect(live, readonly=True)) as lv:
        have, live_tables = set(user_tables(r)), set(user_tables(lv))
        for table in tables.append_only:
            if table not in have:
                continue
            if table not in live_tables:
                return f"{table} is in the restored copy but not live"
            last = r.execute(f'SELECT COALESCE(MAX(rowid), 0) FROM "{table}"').fetchone()[0]
            for mine, theirs in zip(_rows_by_rowid(r, table, last), _rows_by_rowid(lv, table, last)):
                if mine != theirs:
                    return f"{table} row {mine[0]} differs from live (an append-only table was rewritten)"
            live_count = lv.execute(f'SELECT count(*) FROM "{table}" WHERE rowid <= ?', (last,)).fetchone()[0]
            mine_count = r.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if live_count != mine_count:
                return f"{table}: live holds {live_count} rows up to rowid {last}, the restored copy {mine_count}"
        for table, (key, dated) in tables.overwrite.items():
            if table not in have:
                continue
            cols = [c[1] for c in r.execute(f'PRAGMA table_info("{table}")')]
            restored_rows = [dict(zip(cols, row)) for row in r.execute(f'SELECT * FROM "{table}"')]
            listed = ", ".join(f'"{c}"' for c in cols)
            live_rows = ([dict(zip(cols, row)) for row in lv.execute(f'SELECT {listed} FROM "{table}"')]
                         if table in live_tables else [])
            verdict = compare_overwrites(restored_rows, live_rows, key, dated=dated)
            if verdict != "ok":
                return f"{table}: {verdict}"
    return "ok"
