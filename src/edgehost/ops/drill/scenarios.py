"""The two rehearsals: `full` (restore everything, check, boot, compare) and `accidental-delete` (on a scratch copy)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

from edgehost.engine import layout, litestream
from edgehost.engine.replica import replica_keys
from edgehost.engine.sqlite import connect, content_hash, integrity, schema_sql
from edgehost.errors import EdgehostError, EnvironmentProblem
from edgehost.ops.drill.compare import LivePin, SOCKET_TIMEOUT, Tables, _fresh_check, compare_content, measure_staleness, pin_live
from edgehost.ops.drill.portal import _log_tail, _smoke, boot_portal, stop_portal
from edgehost.ops.drill.report import DrillDatabase, DrillReport, KEPT_MARKER, Progress, STALE_SCRATCH_SECONDS, _drill_root, _now
from edgehost.ops.recovery import RestoreEngine
from edgehost.ops.restore import execute_plan, restore_db, restore_plan
from edgehost.settings import Settings


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


def run_drill(settings: Settings, at: datetime | None = None, keep: bool = False,
              progress: Progress = lambda _m: None) -> DrillReport:
    """Rehearse a disaster recovery end to end; never raises for a failed check, only records it."""
    report = DrillReport("full", _now(), point=at.isoformat() if at else "latest",
                         lag_alert_seconds=settings.lag_alert_seconds)
    work = _scratch(settings, "drill-", keep)
    report.scratch_dir = str(work) if keep else ""
    portal = engine = None
    try:
        ls = litestream.Litestream.from_settings(settings)
        repl = ls.replication
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
        engine = RestoreEngine(settings, ls)
        engine.keys()  # the one listing of the replica: it fixes each database's latest point
        pins = _pin_all(settings, keys, sock)
        read_at = [p.at for p in pins.values() if isinstance(p, LivePin)]
        if read_at:
            report.notes.append(f"live databases read at {min(read_at).isoformat(timespec='milliseconds')}, "
                                "right after the listing that fixed the restore point")

        progress(f"restoring {len(keys)} database(s) into {work / 'data'}")
        t_restore = time.monotonic()
        plan = restore_plan(settings, repl, keys, to=work / "data", at=at, parallel=8)
        restored = execute_plan(plan, engine)
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
        if engine is not None:
            engine.close()
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
