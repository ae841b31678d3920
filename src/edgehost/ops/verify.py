"""`edgehost verify`: prove a database restores whole and fresh.

Per database: write a sentinel into a kit-owned table, pause writers just long enough for Litestream
to turn the WAL into LTX txid N and for a reader to pin that same snapshot, force the upload, restore
exactly txid N with the real litestream binary, and compare: integrity, foreign keys, schema,
sentinel, and a content hash of the restored copy against the pinned live snapshot; and list the
replica to check it holds one history of the database (history.py).

Every check says what it found, pass or fail; txids are 16 hex digits, as Litestream prints them.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from edgehost.engine import layout, litestream
from edgehost.errors import EdgehostError
from edgehost.engine.history import Span, history, ltx_range
from edgehost.engine.layout import DatabaseRef
from edgehost.engine.bucket import local_l0_files
from edgehost.ops.restore import litestream_meta_dir, restore_window
from edgehost.settings import Settings
from edgehost.checks import Check, Level
from edgehost.engine.sqlite import connect, content_hash, schema_sql

SENTINEL_TABLE = "_edgehost_verify"
SENTINEL_DDL = (f"CREATE TABLE IF NOT EXISTS {SENTINEL_TABLE} ("
                " id INTEGER PRIMARY KEY, token TEXT NOT NULL, written_at TEXT NOT NULL)")


@dataclass
class VerifyResult:
    """The verdict on one database."""

    name: str
    path: str
    ok: bool = False
    failed_check: str = ""
    detail: str = ""
    txid: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    hash: str = ""
    rpo_seconds: float | None = None  # sentinel commit -> replicated
    restore_seconds: float = 0.0
    writer_wait_ms: float = 0.0  # how long writers were paused
    checks: list[Check] = field(default_factory=list)  # checks.py: the model doctor and tunnel lint share

    def record(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, Level.OK if ok else Level.FAIL, detail, where=self.name))
        if not ok and not self.failed_check:
            self.failed_check, self.detail = name, detail
        return ok


def _write_sentinel(conn: sqlite3.Connection) -> str:
    token = secrets.token_hex(8)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(SENTINEL_DDL)
        conn.execute(f"INSERT INTO {SENTINEL_TABLE}(token, written_at) VALUES (?, ?)",
                     (token, datetime.now(timezone.utc).isoformat()))
        # Keep the table small: the last 100 sentinels are plenty of history.
        conn.execute(f"DELETE FROM {SENTINEL_TABLE} WHERE id <= (SELECT MAX(id) - 100 FROM {SENTINEL_TABLE})")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return token


@dataclass
class Pinned:
    reader: sqlite3.Connection  # inside a read transaction at `txid`
    token: str
    txid: int
    committed: float  # monotonic time of the sentinel's commit
    writer_wait_ms: float


PAUSE_LIMIT = 0.5  # seconds writers may be paused (their busy_timeout is 5 s); a slower local sync is retried
PAUSE_TRIES = 6


def pin_after_sentinel(db: Path, sock: litestream.ControlSocket) -> Pinned:
    """Commit a sentinel, pause writers, let Litestream cut txid N, pin a read snapshot at N, resume.

    Writers wait (on their busy_timeout, holding nothing) only for one local Litestream sync, WAL
    to LTX without upload; the reader keeps the snapshot while hashing with writers running again.
    A sync slower than PAUSE_LIMIT releases the writers and tries again, so no writer waits long
    enough to hit its busy_timeout.
    """
    writer = connect(db)
    reader = connect(db, readonly=True)
    try:
        token = _write_sentinel(writer)
        committed = time.monotonic()
        longest = 0.0
        for attempt in range(PAUSE_TRIES):
            writer.execute("BEGIN IMMEDIATE")  # right after a commit, so the WAL is never empty here
            paused = time.monotonic()
            try:
                # The shared client (a new one per database loads the CA bundle, ~20 ms of CPU), with
                # an answer expected within PAUSE_LIMIT.
                txid = int(sock.sync(db, wait=False, timeout=1, http_timeout=PAUSE_LIMIT)["txid"])
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot is taken here
                break
            except EdgehostError as exc:
                if reader.in_transaction:
                    reader.execute("ROLLBACK")
                if attempt == PAUSE_TRIES - 1:
                    raise EdgehostError(f"litestream did not cut a txid within {PAUSE_LIMIT:g}s "
                                        f"in {PAUSE_TRIES} tries; writers were released each time "
                                        f"(last answer: {exc})") from None
            finally:
                writer.execute("ROLLBACK")
                longest = max(longest, time.monotonic() - paused)
            time.sleep(0.2)
    except BaseException:
        reader.close()
        raise
    finally:
        writer.close()
    return Pinned(reader, token, txid, committed, round(longest * 1000, 1))


def _foreign_key_problems(conn: sqlite3.Connection) -> list[tuple]:
    return conn.execute("PRAGMA foreign_key_check").fetchall()


@dataclass
class _Live:
    """What verify read of a live database at its pinned txid, for the restore to be judged against."""

    txid: int
    token: str
    content: str
    schema: list


def verify_live(settings: Settings, ref: DatabaseRef, repl: litestream.Replication, binary: Path,
                env: Mapping[str, str], sock: litestream.ControlSocket | None,
                sync_timeout: int = 30) -> tuple[VerifyResult, _Live | None]:
    """The first half: write the sentinel, pin that txid, make litestream upload it, and read the
    live content there. Returns the result so far and, when the replica holds the txid, what the
    restore must show (None: the result is complete)."""
    res = VerifyResult(ref.label, str(ref.path))
    if not ref.path.exists():
        res.record("exists", False, f"{ref.path} not on disk")
        return _done(res), None
    res.record("exists", True, f"{ref.path} on disk ({ref.path.stat().st_size} bytes)")
    reader = None
    try:
        if sock is None or not sock.alive():
            _verify_stale(res, ref, repl.restore_url(ref), binary, env)
            _check_history(res, ref, repl, env)
            return _done(res), None
        pinned = pin_after_sentinel(ref.path, sock)
        reader, txid, token = pinned.reader, pinned.txid, pinned.token
        res.writer_wait_ms = pinned.writer_wait_ms
        res.txid = f"{txid:016x}"
        try:
            synced = sock.sync(ref.path, wait=True, timeout=sync_timeout)
        except EdgehostError as exc:
            res.record("fresh", False, f"stale: could not replicate txid {res.txid} within {sync_timeout}s ({exc})")
            return _done(res), None
        replicated = int(synced["replicated_txid"])
        if replicated < txid:
            res.record("fresh", False, f"stale: replica at txid {replicated:016x}, behind live txid {res.txid}")
            return _done(res), None
        res.record("fresh", True, f"replica at txid {replicated:016x}"
                   + (" = live txid" if replicated == txid else f", past live txid {res.txid}"))
        res.rpo_seconds = round(time.monotonic() - pinned.committed, 3)
        live = _Live(txid, token, content_hash(reader), schema_sql(reader))
        reader.rollback()
        return res, live
    except EdgehostError as exc:
        res.record("run", False, str(exc))
    except sqlite3.DatabaseError as exc:
        res.record("run", False, f"sqlite: {exc}")
    finally:
        if reader is not None:
            reader.close()
    return _done(res), None


def verify_restore(res: VerifyResult, live: _Live, ref: DatabaseRef, repl: litestream.Replication,
                   env: Mapping[str, str], engine, scratch: Path, listed: Future | None = None) -> VerifyResult:
    """The second half: from the engine's listing (`listed`: it may still be running), check the
    replica holds one history, restore exactly the pinned txid and compare it with what was read live.

    The listing may predate this database's sentinel upload. The files past it are the L0 files
    litestream keeps locally and has just uploaded: they are added by name and fetched from the
    bucket like any other, so the restore still proves the replica holds them. A database the
    listing does not hold yet, or whose files then do not chain up to the pinned txid, is listed
    again on its own."""
    out = scratch / ref.relpath
    try:
        if listed is not None:
            listed.result()
        listed_files = engine.files(ref.key)
        if listed_files and not engine.reaches(ref.key, live.txid):
            after = max(f.max_txid for f in listed_files)
            engine.extend(ref.key, local_l0_files(litestream_meta_dir(ref.path), engine.scheme(ref.key), after, live.txid))
        if not listed_files or not engine.reaches(ref.key, live.txid):
            engine.relist(ref.key)  # first uploaded after the listing, or the local files do not chain up
            listed_files = engine.files(ref.key)
        try:
            _check_history(res, ref, repl, env, files=listed_files)
        except EdgehostError as exc:
            res.record("history", False, f"could not list the replica: {exc}")
        restored = engine.restore(ref.key, out, txid=live.txid)
        res.restore_seconds = restored.seconds
        if not restored.ok:
            res.record("restore", False, restored.error)
            return _done(res)
        res.record("restore", True, f"restored txid {restored.txid or res.txid} in {restored.seconds:.2f}s")
        _compare(res, out, live.token, live.content, live.schema)
    except EdgehostError as exc:
        res.record("run", False, str(exc))
    except sqlite3.DatabaseError as exc:
        res.record("run", False, f"sqlite: {exc}")
    return _done(res)


def _done(res: VerifyResult) -> VerifyResult:
    res.ok = not res.failed_check
    return res


def _compare(res: VerifyResult, restored: Path, token: str, live_hash, live_schema) -> None:
    conn = sqlite3.connect(f"{restored.resolve().as_uri()}?mode=ro", uri=True)
    try:
        # The restore ran PRAGMA integrity_check on this very file before putting it in place (a
        # failure there fails the restore check): not run twice.
        res.record("integrity", True, "integrity_check: ok")
        fk = _foreign_key_problems(conn)
        res.record("foreign_keys", not fk, f"{len(fk)} rows break a foreign key, e.g. {fk[:1]}" if fk
                   else "foreign_key_check: no rows break a foreign key")
        schema = schema_sql(conn)
        res.record("schema", schema == live_schema, _schema_detail(schema, live_schema))
        found = conn.execute(f"SELECT count(*) FROM {SENTINEL_TABLE} WHERE token = ?", (token,)).fetchone()[0]
        res.record("sentinel", found == 1, f"sentinel {token} in the restored copy" if found == 1
                   else f"sentinel {token} not in the restored copy")
        got = content_hash(conn)
        res.rows, res.hash = got.rows, got.digest
        if got == live_hash:
            res.record("content", True, f"content hash {got.digest[:12]} equals live at txid {res.txid} "
                                        f"({sum(got.rows.values())} rows)")
        else:
            res.record("content", False, f"content hash {got.digest[:12]} differs from live "
                                         f"{live_hash.digest[:12]} at txid {res.txid}")
    except sqlite3.DatabaseError as exc:
        res.record("integrity", False, f"sqlite: {exc}")
    finally:
        conn.close()
    res.ok = not res.failed_check


def _schema_detail(restored: list[tuple[str, str, str]], live: list[tuple[str, str, str]]) -> str:
    if restored == live:
        return f"schema equals live ({len(live)} objects)"
    names = lambda rows: {(t, n): sql for t, n, sql in rows}  # noqa: E731
    got, want = names(restored), names(live)
    missing = sorted(n for (_, n) in want.keys() - got.keys())
    extra = sorted(n for (_, n) in got.keys() - want.keys())
    changed = sorted(n for (t, n) in want.keys() & got.keys() if want[(t, n)] != got[(t, n)])
    parts = [f"{label}: {', '.join(items)}" for label, items in
             (("missing", missing), ("not in live", extra), ("different", changed)) if items]
    return "restored schema differs from live (" + "; ".join(parts) + ")"


def _replica_listing(ref: DatabaseRef, repl: litestream.Replication, env: Mapping[str, str]) -> list:
    """The database's LTX files, from one listing of its replica root (one paginated LIST on S3)."""
    from edgehost.engine.replica import ReplicaStore

    cfg = repl.config
    store = ReplicaStore(repl.replica_url(ref), cfg.endpoint, cfg.region, dict(env))
    return list(store.walk())


def _check_history(res: VerifyResult, ref: DatabaseRef, repl: litestream.Replication, env: Mapping[str, str],
                   files: list | None = None) -> None:
    """The replica must hold one history of the database: see history.py. `files`: its LTX files
    when already listed."""
    try:
        listed = files if files is not None else _replica_listing(ref, repl, env)
        ranges = [r for r in (ltx_range(o) for o in listed) if r is not None]
    except (EdgehostError, OSError, ValueError) as exc:
        res.record("history", False, f"could not list the replica: {exc}")
        return
    if not ranges:
        res.record("history", False, f"{ref.label}: the replica holds no LTX files for this database")
        return
    splits = history(ranges)
    if not splits:
        res.record("history", True, f"one history: {Span.of(ranges).text()}")
        return
    more = f" (and {len(splits) - 1} more)" if len(splits) > 1 else ""
    res.record("history", False,
               f"{ref.label}: the replica holds more than one history: {splits[0].detail}{more}; the latest "
               "restore may come from the older one or mix both (see docs/litestream-tuning.md, "
               "\"When the replica changes\")")


def _verify_stale(res: VerifyResult, ref: DatabaseRef, url: str, binary: Path, env: Mapping[str, str]) -> VerifyResult:
    """Litestream is not running: the sentinel cannot reach the replica, so say how stale it is."""
    try:
        window = restore_window(binary, env, url, ref.label)
    except EdgehostError as exc:
        res.record("restore", False, str(exc))
        return res
    if window.latest_time:
        newest = datetime.fromisoformat(window.latest_time.replace("Z", "+00:00"))
        res.rpo_seconds = round((datetime.now(timezone.utc) - newest).total_seconds(), 1)
        res.txid = window.latest_txid
        detail = (f"stale: litestream is not running; newest replicated data is {res.rpo_seconds:.0f}s old "
                  f"(txid {window.latest_txid})")
    else:
        detail = "litestream is not running and the replica holds nothing for this database"
    res.record("fresh", False, detail)
    return res


def verify_all(settings: Settings, refs: list[DatabaseRef], *, parallel: int = 8,
               on_result: Callable[[VerifyResult], None] | None = None) -> tuple[list[VerifyResult], float]:
    """Verify several databases; returns the results (in the given order) and the wall time."""
    ls = litestream.Litestream.from_settings(settings)
    repl, binary, env = ls.replication, ls.binary, ls.env
    sock = ls.socket(timeout=10)
    if not settings.litestream_socket.exists():
        sock = None
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="verify-", dir=settings.state_dir))
    started = time.monotonic()
    from edgehost.ops.recovery import RestoreEngine

    engine = RestoreEngine(settings, ls)
    lister = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-listing")
    try:
        # One listing of the replica for every restore (a LIST per database would cost as much as
        # the restores themselves), taken beside the pins; each database is restored as soon as
        # its own sentinel is in the bucket and the listing is there.
        listed = lister.submit(engine.keys) if sock is not None else None

        def one(ref: DatabaseRef) -> VerifyResult:
            res, lv = verify_live(settings, ref, repl, binary, env, sock)
            result = res if lv is None else verify_restore(res, lv, ref, repl, env, engine, scratch, listed)
            if on_result:
                on_result(result)
            return result

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            results = list(pool.map(one, refs))
    finally:
        lister.shutdown(wait=True)
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return results, round(time.monotonic() - started, 3)


def targets(settings: Settings, slugs: list[str], global_db: bool, all_dbs: bool) -> list[DatabaseRef]:
    """What verify checks: named databases, or (default) every database on disk."""
    if slugs or global_db:
        refs = [layout.global_db(settings)] if global_db else []
        return refs + [layout.property_db(settings, s) for s in dict.fromkeys(slugs)]
    return layout.local_databases(settings)
