"""`edgehost drill`: the whole disaster rehearsal.

Restore every database the replica holds into an empty scratch data dir (as on a new machine), check
each one, boot the portal on the restored data on a scratch port, compare its answers with the live
data, and measure RTO (restore start -> portal healthy on restored data) and RPO per database.

RPO comes from what the restore actually held: the live databases are read at the instant the
restore point is decided (right after the one listing of the replica that fixes each database's
txid), and the rows the restored copy lacks from that snapshot date how much a real recovery would
have lost. A gap beyond `lag_alert_seconds` fails the drill, whatever else passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from edgehost.engine import layout, litestream

from edgehost.ops import state
from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem
from edgehost.engine.layout import GLOBAL, DatabaseRef
from edgehost.engine.replica import replica_keys
from edgehost.ops.restore import execute_plan, latest_by_key, restore_db, restore_plan
from edgehost.settings import SECRET_NAMES, AppContract, Settings
from edgehost.engine.sqlite import connect, content_hash, integrity, schema_sql, user_tables

Progress = Callable[[str], None]

# A scratch dir a drill left behind (killed mid-run) is removed by the next drill after this long.
STALE_SCRATCH_SECONDS = 24 * 3600
KEPT_MARKER = ".kept"  # `--keep` scratch dirs carry it and are never pruned

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


@dataclass
class DrillDatabase:
    name: str
    restored: bool = False
    txid: str = ""  # the replicated txid the restore reached
    restore_seconds: float = 0.0
    # The age of the oldest write the restore lacks, against the live DB read when the restore point
    # was decided (or against --at): 0 when nothing is missing, None when it cannot be told.
    rpo_seconds: float | None = None
    live_txid: str = ""  # litestream's local txid at that instant ("" when litestream did not answer)
    newest_replicated_at: str = ""  # the newest dated row the restore held
    oldest_missing_at: str = ""  # the oldest dated live row it lacked
    missing_rows: dict[str, int] = field(default_factory=dict)  # table -> live rows the restore lacked
    rows: dict[str, int] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)  # check -> "ok" or what failed

    @property
    def ok(self) -> bool:
        return self.restored and all(v == "ok" for v in self.checks.values())


@dataclass
class DrillReport:
    scenario: str
    started_at: str
    finished_at: str = ""
    host: str = field(default_factory=socket.gethostname)
    point: str = "latest"
    status: str = "error"  # pass | fail | error
    rto_seconds: float | None = None
    rpo_seconds: float | None = None  # the worst database's
    rpo_database: str = ""  # that database ("" when no restore lacked anything)
    lag_alert_seconds: float | None = None
    restore_seconds: float | None = None
    portal_boot_seconds: float | None = None
    scratch_dir: str = ""
    databases: list[DrillDatabase] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for db, src in zip(data["databases"], self.databases):
            db["ok"] = src.ok
        return data


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keep_reports(settings: Settings) -> int:
    """How many drill reports to keep: drill_keep_reports (EDGEHOST_DRILL_KEEP_REPORTS), default 12."""
    return settings.drill_keep_reports


# --- comparing the restored copy with live ------------------------------------------------


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


# --- the live side, read when the restore point is decided ----------------------------------


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


# --- the drill ------------------------------------------------------------------------------


def _check_restored(path: Path, live: Path | None, compare_schema: bool) -> tuple[dict[str, str], dict[str, int]]:
    checks: dict[str, str] = {}
    conn = connect(path, readonly=True)
    try:
        checks["integrity"] = integrity(conn)
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        checks["foreign_keys"] = "ok" if not fk else f"{len(fk)} rows break a foreign key"
        if compare_schema and live is not None and live.exists():
            with closing(connect(live, readonly=True)) as live_conn:
                same = schema_sql(live_conn) == schema_sql(conn)
            checks["schema"] = "ok" if same else "schema differs from live"
        rows = content_hash(conn).rows
    finally:
        conn.close()
    return checks, rows


def _litestream_socket(settings: Settings) -> litestream.ControlSocket | None:
    """The control socket when litestream answers it promptly; None when it is stopped or stalled."""
    sock = litestream.ControlSocket(settings.litestream_socket, timeout=SOCKET_TIMEOUT)
    return sock if settings.litestream_socket.exists() and sock.alive() else None


def _pin_all(settings: Settings, keys: list[str], sock: litestream.ControlSocket | None) -> dict[str, LivePin | str]:
    """Pin every live database (or say why it could not be read), 8 at a time."""
    def one(key: str) -> tuple[str, LivePin | str]:
        ref = layout.ref_for(settings, key)
        if not ref.path.exists():
            return key, "not on disk"
        try:
            return key, pin_live(ref, sock, Tables.of(settings.app))
        except (EdgehostError, sqlite3.Error) as exc:
            return key, f"could not read the live database: {exc}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(one, keys))


def _portal_env(settings: Settings, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in settings.environ.items()
           if k not in SECRET_NAMES and not k.startswith("EDGEHOST_ACCESS_")}
    env.update({"EDGEHOST_HOME": str(settings.home), "EDGEHOST_DATA_DIR": str(data_dir),
                "EDGEHOST_PORTAL_HOST": "127.0.0.1", "EDGEHOST_PORTAL_PORT": str(port),
                "EDGEHOST_STATE_DIR": str(data_dir.parent / "state")})
    return env


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-lines:]
    except OSError:
        return ""
    return (" | last lines of its log: " + " / ".join(tail)) if tail else ""


def boot_portal(settings: Settings, data_dir: Path, log: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start the configured portal command on a scratch data dir and port; wait for its health path."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(settings.portal_argv(), env=_portal_env(settings, data_dir, port), cwd=settings.home,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    unhealthy = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EnvironmentProblem(f"the portal exited ({proc.returncode}) on the restored data{_log_tail(log)}")
        try:
            resp = httpx.get(f"{url}{settings.app.health_path}", timeout=1)
            if resp.status_code == 200:
                return proc, url
            unhealthy = _unhealthy(resp)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_portal(proc)
    raise EnvironmentProblem(f"the portal did not become healthy on the restored data in {timeout:.0f}s"
                             + (f": {unhealthy}" if unhealthy else _log_tail(log)))


def _unhealthy(resp: httpx.Response) -> str:
    """Which databases the health path says failed (the reference portal names them)."""
    try:
        dbs = resp.json().get("databases", {})
        return "; ".join(f"{name}: {d.get('error', 'not ok')}" for name, d in dbs.items() if not d.get("ok"))
    except (ValueError, AttributeError):
        return f"the health path answered {resp.status_code}"


def stop_portal(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(5)


def run_drill(settings: Settings, at: datetime | None = None, keep: bool = False,
              progress: Progress = lambda _m: None) -> DrillReport:
    """Rehearse a disaster recovery end to end; never raises for a failed check, only records it."""
    report = DrillReport("full", _now(), point=at.isoformat() if at else "latest",
                         lag_alert_seconds=settings.lag_alert_seconds)
    work = _scratch(settings, "drill-", keep)
    report.scratch_dir = str(work) if keep else ""
    portal = None
    try:
        ls = litestream.Litestream.from_settings(settings)
        repl, binary, env = ls.replication, ls.binary, ls.env
        keys = replica_keys(settings, repl.tenants_root, repl.global_entry.replica_url)
        if not keys:
            raise EnvironmentProblem(f"the replica at {settings.replica_url} holds no databases")
        local = {ref.key for ref in layout.local_databases(settings)}
        for missing in sorted(local - set(keys)):
            report.failures.append(f"{layout.ref_for(settings, missing).label}: on disk but not in the replica")

        sock = _litestream_socket(settings)  # asked before the listing, so a stalled one costs no gap
        if sock is None:
            report.notes.append(f"litestream did not answer its control socket within {SOCKET_TIMEOUT:g}s: "
                                "live txids unknown; staleness measured from the rows")
        progress(f"deciding the restore point of {len(keys)} database(s) and reading live at that instant")
        latest = None if at else latest_by_key(settings, repl, keys)  # the one listing that fixes each txid
        pins = _pin_all(settings, keys, sock)
        read_at = [p.at for p in pins.values() if isinstance(p, LivePin)]
        if read_at:
            report.notes.append(f"live databases read at {min(read_at).isoformat(timespec='milliseconds')}, "
                                "right after the listing that fixed the restore point")

        progress(f"restoring {len(keys)} database(s) into {work / 'data'}")
        t_restore = time.monotonic()
        plan = restore_plan(settings, repl, keys, to=work / "data", at=at, parallel=8)
        restored = execute_plan(plan, binary, env, latest=latest)
        report.restore_seconds = round(time.monotonic() - t_restore, 3)
        for key, result in zip(keys, restored.results):
            ref = layout.ref_for(settings, key)
            db = DrillDatabase(ref.label, result.ok, result.txid, result.seconds)
            pin = pins.get(key)
            if isinstance(pin, LivePin) and pin.txid is not None:
                db.live_txid = f"{pin.txid:016x}"
            if result.ok:
                try:
                    db.checks, db.rows = _check_restored(work / "data" / ref.relpath, ref.path, compare_schema=at is None)
                except (EdgehostError, sqlite3.Error) as exc:
                    db.checks["integrity"] = f"could not read the restored copy: {exc}"
                if ref.path.exists():
                    try:
                        db.checks["content"] = compare_content(work / "data" / ref.relpath, ref.path,
                                                               Tables.of(settings.app))
                    except (EdgehostError, sqlite3.Error) as exc:
                        db.checks["content"] = f"could not compare with live: {exc}"
                if isinstance(pin, LivePin):
                    _judge_freshness(db, work / "data" / ref.relpath, ref.path, pin, at, settings)
                elif pin != "not on disk":
                    db.checks["fresh"] = pin
            else:
                db.checks["restore"] = result.error
            report.databases.append(db)
        _worst_rpo(report)

        progress("booting the portal on the restored data")
        t_boot = time.monotonic()
        portal, url = boot_portal(settings, work / "data", work / "portal.log")
        report.portal_boot_seconds = round(time.monotonic() - t_boot, 3)
        report.rto_seconds = round(time.monotonic() - t_restore, 3)

        progress("asking the restored portal the app contract's smoke requests")
        _smoke(settings, report, keys, url, portal, work / "portal.log")
        report.status = "pass"
    except EdgehostError as exc:
        report.status = "error"
        report.failures.append(str(exc))
    finally:
        if portal is not None:
            stop_portal(portal)
        report.finished_at = _now()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    # What each database failed is its own line, whether or not the drill could run to the end.
    for db in report.databases:
        report.failures += [f"{db.name}: {check}: {detail}" for check, detail in db.checks.items() if detail != "ok"]
    if report.status == "pass" and report.failures:
        report.status = "fail"
    return report


def _judge_freshness(db: DrillDatabase, restored: Path, live: Path, pin: LivePin, at: datetime | None,
                     settings: Settings) -> None:
    threshold = settings.lag_alert_seconds
    try:
        st = measure_staleness(restored, live, pin, at or pin.at, db.txid, Tables.of(settings.app))
    except (EdgehostError, sqlite3.Error) as exc:
        db.checks["fresh"] = f"could not compare with live: {exc}"
        return
    db.rpo_seconds, db.missing_rows = st.rpo_seconds, st.missing
    db.newest_replicated_at, db.oldest_missing_at = st.newest_restored_at, st.oldest_missing_at
    db.checks["fresh"] = _fresh_check(db, st, threshold, latest=at is None)


def _worst_rpo(report: DrillReport) -> None:
    measured = [db for db in report.databases if db.rpo_seconds is not None]
    if measured:
        worst = max(measured, key=lambda db: (db.rpo_seconds, sum(db.missing_rows.values())))
        report.rpo_seconds = worst.rpo_seconds
        report.rpo_database = worst.name if worst.rpo_seconds or worst.missing_rows else ""


def _smoke(settings: Settings, report: DrillReport, keys: list[str], url: str,
           portal: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Each smoke path of the app contract must answer 200 with JSON on the restored portal. A path
    with {slug} is asked per property and charged to it; the others to the global database."""
    by_name = {db.name: db for db in report.databases}
    asks: list[tuple[DrillDatabase, str]] = []
    for path in settings.app.smoke:
        for key in keys:
            db = by_name[layout.ref_for(settings, key).label]
            if db.restored and ("{slug}" in path) == (key != GLOBAL):
                asks.append((db, path.replace("{slug}", key)))
    report.notes.append(f"smoke requests on the restored portal: {', '.join(settings.app.smoke) or 'none'}")
    for db in {id(d): d for d, _ in asks}.values():
        db.checks["answers"] = "ok"
    for db, path in asks:
        # A connection of its own per request: a portal that drops a connection after failing one
        # database's request must not make the next database's request fail.
        with httpx.Client(base_url=url, timeout=30) as client:
            try:
                resp = client.get(path)
                problem = "" if resp.status_code == 200 else f"GET {path} answered {resp.status_code}"
                if not problem:
                    resp.json()
            except ValueError:
                problem = f"GET {path} answered 200 but not JSON"
            except httpx.TransportError as exc:
                if portal is not None and portal.poll() is not None:
                    raise EnvironmentProblem(f"the restored portal exited ({portal.returncode}) while answering "
                                             f"GET {path}{_log_tail(log) if log else ''}") from None
                problem = f"GET {path}: the restored portal did not answer: {exc}"
            if problem and db.checks["answers"] == "ok":
                db.checks["answers"] = problem


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


def _drill_root(settings: Settings) -> Path:
    root = settings.state_dir / "drills"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _scratch(settings: Settings, prefix: str, keep: bool) -> Path:
    """A new scratch dir under state/drills (after removing ones old drills left behind)."""
    root = _drill_root(settings)
    prune_scratch(root)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    if keep:
        (work / KEPT_MARKER).touch()
    return work


def prune_scratch(root: Path, older_than: float = STALE_SCRATCH_SECONDS) -> list[Path]:
    """Remove scratch dirs a killed drill left (not `--keep` ones), once they are `older_than` seconds old."""
    removed = []
    now = time.time()
    for d in root.glob("drill-*"):
        try:
            if d.is_dir() and not (d / KEPT_MARKER).exists() and now - d.stat().st_mtime > older_than:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        except OSError:
            continue
    return removed


# --- the accidental-delete scenario -----------------------------------------------------------


def accidental_delete(settings: Settings, slug: str | None = None, keep: bool = False,
                      progress: Progress = lambda _m: None) -> DrillReport:
    """On a scratch copy replicated to a scratch replica: delete rows, restore to just before, prove they are back."""
    report = DrillReport("accidental-delete", _now(), lag_alert_seconds=settings.lag_alert_seconds)
    work = _scratch(settings, "drill-delete-", keep)
    sock_dir = Path(tempfile.mkdtemp(prefix="eh-"))  # unix socket paths must stay short
    report.scratch_dir = str(work) if keep else ""
    proc = None
    t0 = time.monotonic()
    try:
        slugs = layout.local_slugs(settings)
        slug = slug or (max(slugs, key=lambda s: layout.property_db(settings, s).path.stat().st_size) if slugs else None)
        if slug is None:
            raise EnvironmentProblem("no property on disk to rehearse with")
        source = layout.property_db(settings, slug).path
        copy = work / "data" / slug / settings.property_db_name
        copy.parent.mkdir(parents=True)
        with closing(connect(source, readonly=True)) as src, closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)  # a consistent copy; the live DB is never written
        with closing(connect(copy)) as conn:
            total = conn.execute("SELECT count(*) FROM compliance_events").fetchone()[0]
        if total < 2:
            with closing(connect(copy)) as conn:
                for i in range(10 - total):
                    conn.execute("INSERT INTO compliance_events(occurred_at, kind) VALUES (datetime('now'), 'drill')")
        ls = litestream.Litestream.from_settings(settings)
        binary, env = ls.binary, ls.env
        cfg = work / "litestream.yml"
        sock_path = sock_dir / "ls.sock"
        cfg.write_text(json.dumps({  # JSON is YAML; the scratch replica is a local directory
            "socket": {"enabled": True, "path": str(sock_path)},
            "dbs": [{"path": str(copy), "replica": {"url": (work / "replica").as_uri()}}],
        }))
        progress(f"replicating a scratch copy of {slug} to a scratch replica")
        with open(work / "litestream.log", "ab") as log:
            proc = subprocess.Popen([str(binary), "replicate", "-config", str(cfg)], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        sock = litestream.ControlSocket(sock_path)
        deadline = time.monotonic() + 30
        while not sock.alive():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise EnvironmentProblem(f"scratch litestream did not start{_log_tail(work / 'litestream.log')}")
            time.sleep(0.1)
        with closing(connect(copy)) as conn:
            before = _events_of(conn)
        good_txid = int(sock.sync(copy, wait=True)["txid"])
        time.sleep(1.2)
        point = datetime.now(timezone.utc)
        time.sleep(1.2)
        with closing(connect(copy)) as conn:
            deleted = conn.execute(
                "DELETE FROM compliance_events WHERE id > (SELECT MAX(id) FROM compliance_events) / 2").rowcount
        sock.sync(copy, wait=True)
        progress(f"deleted {deleted} rows; restoring to {point.isoformat(timespec='seconds')}")
        report.point = point.isoformat()
        db = DrillDatabase(slug)
        by_time = restore_db(binary, env, (work / "replica").as_uri(), work / "by-time.db", name=slug, timestamp=point)
        by_txid = restore_db(binary, env, (work / "replica").as_uri(), work / "by-txid.db", name=slug, txid=good_txid)
        db.restored = by_time.ok and by_txid.ok
        db.txid, db.restore_seconds = by_time.txid, by_time.seconds
        for label, result, path in (("restore_by_time", by_time, work / "by-time.db"),
                                    ("restore_by_txid", by_txid, work / "by-txid.db")):
            if not result.ok:
                db.checks[label] = result.error
                continue
            with closing(connect(path, readonly=True)) as conn:
                got = _events_of(conn)
            db.rows = {"compliance_events": len(got)}
            db.checks[label] = "ok" if got == before else f"{len(before) - len(got)} of {deleted} deleted rows missing"
        report.databases.append(db)
        report.notes.append(f"deleted {deleted} of {len(before)} events from a copy of {slug}")
        report.rto_seconds = round(time.monotonic() - t0, 3)
        report.failures = [f"{slug}: {c}: {d}" for c, d in db.checks.items() if d != "ok"]
        report.status = "fail" if report.failures else "pass"
    except EdgehostError as exc:
        report.status = "error"
        report.failures.append(str(exc))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(sock_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)  # the copy of the events and the scratch replica
        report.finished_at = _now()
    return report


def _events_of(conn: sqlite3.Connection) -> list[tuple]:
    return conn.execute("SELECT * FROM compliance_events ORDER BY id").fetchall()


# --- reports --------------------------------------------------------------------------------


def render_markdown(report: DrillReport) -> str:
    verdict = {"pass": "PASS", "fail": "FAIL", "error": "COULD NOT RUN"}[report.status]
    lines = [
        f"# edgehost drill ({report.scenario}): {verdict}",
        "",
        f"- started {report.started_at}, finished {report.finished_at}, on {report.host}",
        f"- restore point: {report.point}",
        "- RTO (restore start to portal healthy on restored data): "
        + (f"{report.rto_seconds:.2f} s" if report.rto_seconds is not None else "n/a"),
    ]
    if report.scenario == "full":
        lines.append("- RPO (worst database; the age of the oldest write the restore lacked): "
                     + (f"{report.rpo_seconds:.1f} s" if report.rpo_seconds is not None else "n/a")
                     + (f" ({report.rpo_database})" if report.rpo_database else "")
                     + (f"; fails beyond lag_alert_seconds = {report.lag_alert_seconds:g} s"
                        if report.lag_alert_seconds is not None else ""))
    if report.restore_seconds is not None:
        lines.append(f"- restore of every database: {report.restore_seconds:.2f} s; portal boot: "
                     + (f"{report.portal_boot_seconds:.2f} s" if report.portal_boot_seconds is not None else "n/a"))
    if report.scratch_dir:
        lines.append(f"- scratch data kept in {report.scratch_dir}")
    lines += [f"- {note}" for note in report.notes]
    lines += ["", "| database | verdict | txid | live txid | rows | missing | RPO (s) | restore (s) | failed checks |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for db in report.databases:
        bad = "; ".join(f"{c}: {d}" for c, d in db.checks.items() if d != "ok") or "-"
        rpo = "-" if db.rpo_seconds is None else f"{db.rpo_seconds:.1f}"
        lines.append(f"| {db.name} | {'ok' if db.ok else 'FAIL'} | {db.txid or '-'} | {db.live_txid or '-'} | "
                     f"{sum(db.rows.values())} | {sum(db.missing_rows.values())} | {rpo} | {db.restore_seconds:.2f} | {bad} |")
    if report.failures:
        lines += ["", "## What failed", ""] + [f"- {f}" for f in report.failures]
        lines += ["", "See docs/dr-drill.md, 'When a drill fails'."]
    return "\n".join(lines) + "\n"


def _report_stem(report: DrillReport) -> str:
    return f"drill-{report.started_at.replace(':', '')}"


def save(settings: Settings, report: DrillReport, path: Path | None) -> tuple[Path, Path]:
    """Keep the report: in the replica (so the history outlives this machine), in the kit's state DB,
    and as Markdown and JSON in state/drills (and at `path`); only the last N of each are kept."""
    keep = keep_reports(settings)
    try:
        key = state.store_drill_in_replica(settings, report.as_dict(), keep)
        report.notes.append(f"report stored in the replica as {key}")
    except (EdgehostError, OSError) as exc:
        report.notes.append(f"report not stored in the replica: {exc}")
    data = report.as_dict()
    state.record_drill(settings, data, keep=keep)
    root = _drill_root(settings)
    dated = root / f"{_report_stem(report)}.md"
    markdown, js = render_markdown(report), json.dumps(data, indent=2, default=str) + "\n"
    dated.write_text(markdown)
    dated.with_suffix(".json").write_text(js)
    prune_reports(root, keep)
    if path is None:
        return dated, dated.with_suffix(".json")
    md = Path(path)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown)
    md.with_suffix(".json").write_text(js)
    return md, md.with_suffix(".json")


def prune_reports(root: Path, keep: int) -> list[str]:
    """Delete the dated reports (drill-<time>.md and .json) in `root` beyond the newest `keep`."""
    stems = sorted({p.stem for p in root.glob("drill-*") if p.is_file() and p.suffix in (".md", ".json")})
    old = stems[:-keep] if keep > 0 else stems
    for stem in old:
        for suffix in (".md", ".json"):
            (root / f"{stem}{suffix}").unlink(missing_ok=True)
    return old
