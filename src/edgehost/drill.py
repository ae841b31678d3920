"""`edgehost drill`: the whole disaster rehearsal.

Restore every database the replica holds into an empty scratch data dir (as on a new machine), check
each one, boot the portal on the restored data on a scratch port, compare its answers with the live
data, and measure RTO (restore start -> portal healthy on restored data) and RPO per database.
"""

from __future__ import annotations

import json
import os
from contextlib import closing
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

from . import layout, litestream, state
from .errors import EdgehostError, EnvironmentProblem
from .layout import GLOBAL
from .portal import store
from .replica import replica_keys
from .restore import execute_plan, latest_by_key, restore_db, restore_plan, restore_window
from .settings import SECRET_NAMES, Settings
from .sqlite import connect, content_hash, schema_sql

Progress = Callable[[str], None]


@dataclass
class DrillDatabase:
    name: str
    restored: bool = False
    txid: str = ""
    restore_seconds: float = 0.0
    rpo_seconds: float | None = None  # how far the replica was behind the live DB at the drill's start
    newest_replicated_at: str = ""
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
    point: str = "latest"
    status: str = "error"  # pass | fail | error
    rto_seconds: float | None = None
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


# --- reading the portal, live and restored ---------------------------------------------------


class PortalReader:
    """The portal's read endpoints over HTTP."""

    def __init__(self, base_url: str):
        self.client = httpx.Client(base_url=base_url, timeout=30)

    def events(self, slug: str) -> list[dict]:
        out: list[dict] = []
        after = 0
        while True:
            resp = self.client.get(f"/properties/{slug}/events", params={"after": after, "limit": 10000})
            resp.raise_for_status()
            page = resp.json()["events"]
            out += page
            if len(page) < 10000:
                return out
            after = page[-1]["id"]

    def users(self) -> list[dict]:
        resp = self.client.get("/study/users")
        resp.raise_for_status()
        return resp.json()["users"]

    def progress(self) -> list[dict]:
        resp = self.client.get("/study/progress")
        resp.raise_for_status()
        return resp.json()["progress"]

    def close(self) -> None:
        self.client.close()


class FileReader:
    """The same answers read from the live files, when the live portal cannot be asked (Access, down)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def events(self, slug: str) -> list[dict]:
        out: list[dict] = []
        after = 0
        while True:
            page = [e.as_dict() for e in store.list_events(self.settings, slug, after, 10000)]
            out += page
            if len(page) < 10000:
                return out
            after = page[-1]["id"]

    def users(self) -> list[dict]:
        return store.list_users(self.settings)

    def progress(self) -> list[dict]:
        return store.list_progress(self.settings)

    def close(self) -> None:
        pass


def live_reader(settings: Settings) -> tuple[Any, str]:
    reader = PortalReader(settings.portal_url)
    try:
        if reader.client.get("/study/users").status_code == 200:
            return reader, f"live portal {settings.portal_url}"
    except httpx.HTTPError:
        pass
    reader.close()
    return FileReader(settings), f"live files in {settings.data_dir}"


def compare_property(restored: list[dict], live: list[dict]) -> str:
    """Append-only: the restored events must be an exact prefix of the live ones."""
    if len(restored) > len(live):
        return f"restored has {len(restored)} events, live only {len(live)}"
    for i, (a, b) in enumerate(zip(restored, live)):
        if a != b:
            return f"event #{i + 1} (id {a.get('id')}) differs from live"
    return "ok"


def compare_overwrites(restored: list[dict], live: list[dict], key: str, since: str) -> str:
    """Last-write-wins rows match live unless live changed them after the restore point."""
    live_by = {r[key]: r for r in live}
    for row in restored:
        other = live_by.get(row[key])
        if other is None:
            return f"{key} {row[key]!r} is in the restored copy but not live"
        if other != row and other.get("updated_at", "") <= since:
            return f"{key} {row[key]!r} differs from live and live has not changed it since {since}"
    return "ok"


# --- the drill ------------------------------------------------------------------------------


def _check_restored(path: Path, live: Path | None, compare_schema: bool) -> tuple[dict[str, str], dict[str, int]]:
    checks: dict[str, str] = {}
    conn = connect(path, readonly=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        checks["integrity"] = "ok" if integrity == [("ok",)] else "; ".join(r[0] for r in integrity[:3])
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


def _rpo(settings: Settings, repl: litestream.Replication, binary: Path, env: dict, keys: list[str]) -> dict[str, tuple[float | None, str]]:
    """How far each replica is behind, before the drill forces anything."""
    from . import status

    out: dict[str, tuple[float | None, str]] = {}
    lags: dict[str, float | None] = {}
    try:
        lags = {d.name: d.lag_seconds for d in status.replication_status(settings)}
    except EdgehostError:
        pass  # litestream not running: fall back to the replica's own timestamps
    def one(key: str) -> tuple[str, tuple[float | None, str]]:
        ref = layout.ref_for(settings, key)
        window = restore_window(binary, env, repl.restore_url(ref), ref.label)
        rpo = lags.get(ref.label)
        if rpo is None and window.latest_time:
            newest = datetime.fromisoformat(window.latest_time.replace("Z", "+00:00"))
            rpo = round((datetime.now(timezone.utc) - newest).total_seconds(), 1)
        return key, (rpo, window.latest_time)

    with ThreadPoolExecutor(max_workers=8) as pool:
        out.update(pool.map(one, keys))
    return out


def _portal_env(settings: Settings, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in settings.environ.items()
           if k not in SECRET_NAMES and not k.startswith("EDGEHOST_ACCESS_")}
    env.update({"EDGEHOST_HOME": str(settings.home), "EDGEHOST_DATA_DIR": str(data_dir),
                "EDGEHOST_PORTAL_HOST": "127.0.0.1", "EDGEHOST_PORTAL_PORT": str(port),
                "EDGEHOST_STATE_DIR": str(data_dir.parent / "state")})
    return env


def boot_portal(settings: Settings, data_dir: Path, log: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start the configured portal command on a scratch data dir and port; wait for /healthz."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(settings.portal_argv(), env=_portal_env(settings, data_dir, port), cwd=settings.home,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EnvironmentProblem(f"the portal exited ({proc.returncode}) on the restored data; see {log}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_portal(proc)
    raise EnvironmentProblem(f"the portal did not become healthy on the restored data in {timeout:.0f}s; see {log}")


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
    report = DrillReport("full", _now(), point=at.isoformat() if at else "latest")
    work = Path(tempfile.mkdtemp(prefix="drill-", dir=_drill_root(settings)))
    report.scratch_dir = str(work)
    portal = None
    try:
        repl = litestream.replication(settings)
        binary, _ = litestream.check_binary(settings.environ)
        env, _ = litestream.child_environ(settings)
        keys = replica_keys(settings, repl.tenants_root, repl.global_entry.replica_url)
        if not keys:
            raise EnvironmentProblem(f"the replica at {settings.replica_url} holds no databases")
        local = {ref.key for ref in layout.local_databases(settings)}
        for missing in sorted(local - set(keys)):
            report.failures.append(f"{layout.ref_for(settings, missing).label}: on disk but not in the replica")
        progress(f"measuring replication lag of {len(keys)} database(s)")
        rpo = _rpo(settings, repl, binary, env, keys)

        progress(f"restoring {len(keys)} database(s) into {work / 'data'}")
        t_restore = time.monotonic()
        plan = restore_plan(settings, repl, keys, to=work / "data", at=at, parallel=8)
        restored = execute_plan(plan, binary, env, latest=None if at else latest_by_key(settings, repl, keys))
        report.restore_seconds = round(time.monotonic() - t_restore, 3)
        for key, result in zip(keys, restored.results):
            ref = layout.ref_for(settings, key)
            db = DrillDatabase(ref.label, result.ok, result.txid, result.seconds, *rpo[key])
            if result.ok:
                db.checks, db.rows = _check_restored(work / "data" / ref.relpath, ref.path, compare_schema=at is None)
            else:
                db.checks["restore"] = result.error
            report.databases.append(db)

        progress("booting the portal on the restored data")
        t_boot = time.monotonic()
        portal, url = boot_portal(settings, work / "data", work / "portal.log")
        report.portal_boot_seconds = round(time.monotonic() - t_boot, 3)
        report.rto_seconds = round(time.monotonic() - t_restore, 3)

        progress("comparing the restored portal's answers with the live data")
        _compare_answers(settings, report, keys, PortalReader(url), at)
        for db in report.databases:
            report.failures += [f"{db.name}: {check}: {detail}" for check, detail in db.checks.items() if detail != "ok"]
        report.status = "fail" if report.failures else "pass"
    except EdgehostError as exc:
        report.status = "error"
        report.failures.append(str(exc))
    finally:
        if portal is not None:
            stop_portal(portal)
        report.finished_at = _now()
        if not keep:
            shutil.rmtree(work / "data", ignore_errors=True)
    return report


def _compare_answers(settings: Settings, report: DrillReport, keys: list[str], restored: PortalReader,
                     at: datetime | None) -> None:
    live, source = live_reader(settings)
    report.notes.append(f"answers compared with the {source}")
    since = (at or datetime.now(timezone.utc)).isoformat()
    by_name = {db.name: db for db in report.databases}
    try:
        for key in keys:
            db = by_name[layout.ref_for(settings, key).label]
            if not db.restored:
                continue
            try:
                if key == GLOBAL:
                    users = compare_overwrites(restored.users(), live.users(), "user_id", since)
                    prog = compare_overwrites(restored.progress(), live.progress(), "user_id", since)
                    db.checks["answers"] = users if users != "ok" else prog
                else:
                    db.checks["answers"] = compare_property(restored.events(key), live.events(key))
            except (httpx.HTTPError, EdgehostError, sqlite3.Error) as exc:
                db.checks["answers"] = f"could not read: {exc}"
    finally:
        live.close()
        restored.close()


def _drill_root(settings: Settings) -> Path:
    root = settings.state_dir / "drills"
    root.mkdir(parents=True, exist_ok=True)
    return root


# --- the accidental-delete scenario -----------------------------------------------------------


def accidental_delete(settings: Settings, slug: str | None = None, progress: Progress = lambda _m: None) -> DrillReport:
    """On a scratch copy replicated to a scratch replica: delete rows, restore to just before, prove they are back."""
    report = DrillReport("accidental-delete", _now())
    work = Path(tempfile.mkdtemp(prefix="drill-delete-", dir=_drill_root(settings)))
    sock_dir = Path(tempfile.mkdtemp(prefix="eh-"))  # unix socket paths must stay short
    report.scratch_dir = str(work)
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
        binary, _ = litestream.check_binary(settings.environ)
        env, _ = litestream.child_environ(settings)
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
                raise EnvironmentProblem(f"scratch litestream did not start; see {work / 'litestream.log'}")
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
        shutil.rmtree(work / "data", ignore_errors=True)
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
        f"- started {report.started_at}, finished {report.finished_at}",
        f"- restore point: {report.point}",
        "- RTO (restore start to portal healthy on restored data): "
        + (f"{report.rto_seconds:.2f} s" if report.rto_seconds is not None else "n/a"),
    ]
    if report.restore_seconds is not None:
        lines.append(f"- restore of every database: {report.restore_seconds:.2f} s; portal boot: "
                     + (f"{report.portal_boot_seconds:.2f} s" if report.portal_boot_seconds is not None else "n/a"))
    lines += [f"- {note}" for note in report.notes]
    lines += ["", "| database | verdict | txid | rows | RPO (s) | restore (s) | failed checks |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for db in report.databases:
        bad = "; ".join(f"{c}: {d}" for c, d in db.checks.items() if d != "ok") or "-"
        rpo = "-" if db.rpo_seconds is None else f"{db.rpo_seconds:.1f}"
        lines.append(f"| {db.name} | {'ok' if db.ok else 'FAIL'} | {db.txid or '-'} | {sum(db.rows.values())} | "
                     f"{rpo} | {db.restore_seconds:.2f} | {bad} |")
    if report.failures:
        lines += ["", "## What failed", ""] + [f"- {f}" for f in report.failures]
        lines += ["", "See docs/dr-drill.md, 'When a drill fails'."]
    return "\n".join(lines) + "\n"


def save(settings: Settings, report: DrillReport, path: Path | None) -> tuple[Path, Path]:
    """Write the Markdown and JSON reports and add the drill to the kit's history."""
    data = report.as_dict()
    state.record_drill(settings, data)
    md = Path(path) if path else _drill_root(settings) / f"drill-{report.started_at.replace(':', '')}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(render_markdown(report))
    js = md.with_suffix(".json")
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return md, js
