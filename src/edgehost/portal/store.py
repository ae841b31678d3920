"""The reference portal's data: per-property compliance events and the global study tables."""

from __future__ import annotations

import json
import sqlite3
import threading
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from edgehost.engine import layout
from edgehost.errors import BadInput
from edgehost.settings import Settings
from edgehost.engine.schema import AlreadyExists, create_property, ensure_data_dir, ensure_global, migrate_all  # noqa: F401
from edgehost.engine.sqlite import connect


class NotFound(BadInput):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(path)
    try:
        yield conn
    finally:
        conn.close()


def _use(conns: Connections | None, path: Path) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    return conns.use(path) if conns is not None else opened(path)


class Connections:
    """One long-lived connection per database, serialized by a lock, reopened when the file is replaced.

    The portal answers from a thread pool; a sqlite3 connection may move between threads
    (check_same_thread=False) but must not be used by two at once, hence the lock. A database
    swapped on disk (`edgehost restore --in-place`, a property removed and created again) has a
    new inode: the next request opens the new file instead of writing to the old one.
    """

    def __init__(self, readonly: bool = False, on_open: Callable[[sqlite3.Connection, Path], None] | None = None) -> None:
        self.readonly = readonly  # a standby's databases are written by `litestream restore -f` only
        self.promoted = False  # a standby's portal taking writes: its copies may still be in rollback mode
        self.on_open = on_open  # run on each writable connection as it is opened (the schema check)
        self._lock = threading.Lock()  # guards the dict only: opening one database never waits for another's
        self._open: dict[Path, _Slot] = {}

    @contextmanager
    def use(self, path: Path) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            # A connection kept open holds its last statement's read snapshot, and `litestream restore -f`
            # waits for every reader before it applies: a standby opens one per request.
            conn = connect(path, readonly=True, any_journal=True)
            try:
                yield conn
            finally:
                conn.close()
            return
        slot = self._open.get(path)
        if slot is None:
            with self._lock:
                slot = self._open.setdefault(path, _Slot())
        with slot.lock:
            try:
                inode = path.stat().st_ino  # under the lock: a swap seen here is the one this request meets
            except FileNotFoundError:
                raise BadInput(f"{path}: database not found") from None
            if slot.conn is None or slot.inode != inode:
                if slot.conn is not None:
                    slot.conn.close()
                    slot.conn = None
                conn = connect(path, readonly=self.readonly, to_wal=self.promoted)
                if self.on_open is not None:
                    try:
                        self.on_open(conn, path)
                    except BaseException:
                        conn.close()  # not kept: the next request tries again
                        raise
                slot.conn, slot.inode = conn, inode
            yield slot.conn

    def close(self) -> None:
        with self._lock:
            for slot in self._open.values():
                with slot.lock:
                    if slot.conn is not None:
                        slot.conn.close()
                        slot.conn = None
            self._open.clear()


class _Slot:
    """One database's connection and the lock that serializes its use (and its opening)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.inode = 0


def property_path(settings: Settings, slug: str) -> Path:
    ref = layout.property_db(settings, slug)
    if not ref.path.exists():
        raise NotFound(f"unknown property {slug!r}")
    return ref.path


# --- compliance events (append-only) --------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: int
    occurred_at: str
    kind: str
    actor: str | None
    payload: Any
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def add_event(settings: Settings, slug: str, kind: str, payload: Any = None, actor: str | None = None,
              occurred_at: str | None = None, conns: Connections | None = None) -> Event:
    if not isinstance(kind, str) or not 0 < len(kind) <= 100:
        raise BadInput("event 'kind' must be a string of 1-100 characters")
    body = json.dumps({} if payload is None else payload, separators=(",", ":"), sort_keys=True)
    when = occurred_at or _now()
    with _use(conns, property_path(settings, slug)) as conn:
        row = conn.execute(
            "INSERT INTO compliance_events(occurred_at, kind, actor, payload) VALUES (?, ?, ?, ?) "
            "RETURNING id, occurred_at, kind, actor, payload, created_at",
            (when, kind, actor, body),
        ).fetchone()
    return Event(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])


def list_events(settings: Settings, slug: str, after: int = 0, limit: int = 1000,
                conns: Connections | None = None) -> list[Event]:
    with _use(conns, property_path(settings, slug)) as conn:
        rows = conn.execute(
            "SELECT id, occurred_at, kind, actor, payload, created_at FROM compliance_events "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
    return [Event(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]


# --- study users and progress (overwrite per user) ------------------------------------------


def put_user(settings: Settings, user_id: str, email: str | None, display_name: str | None,
             conns: Connections | None = None) -> dict[str, Any]:
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 200:
        raise BadInput("user_id must be 1-200 characters")
    with _use(conns, settings.global_db) as conn:
        row = conn.execute(
            "INSERT INTO study_users(user_id, email, display_name) VALUES (?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET email = excluded.email, display_name = excluded.display_name, "
            "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "RETURNING user_id, email, display_name, created_at, updated_at",
            (user_id, email, display_name),
        ).fetchone()
    return dict(zip(("user_id", "email", "display_name", "created_at", "updated_at"), row))


def get_user(settings: Settings, user_id: str, conns: Connections | None = None) -> dict[str, Any]:
    with _use(conns, settings.global_db) as conn:
        row = conn.execute(
            "SELECT user_id, email, display_name, created_at, updated_at FROM study_users WHERE user_id = ?",
            (user_id,),
        ).fetchone()
    if row is None:
        raise NotFound(f"unknown user {user_id!r}")
    return dict(zip(("user_id", "email", "display_name", "created_at", "updated_at"), row))


def list_users(settings: Settings, conns: Connections | None = None) -> list[dict[str, Any]]:
    with _use(conns, settings.global_db) as conn:
        rows = conn.execute(
            "SELECT user_id, email, display_name, created_at, updated_at FROM study_users ORDER BY user_id"
        ).fetchall()
    return [dict(zip(("user_id", "email", "display_name", "created_at", "updated_at"), r)) for r in rows]


def put_progress(settings: Settings, user_id: str, progress: Any, conns: Connections | None = None) -> dict[str, Any]:
    blob = json.dumps(progress, separators=(",", ":"), sort_keys=True).encode()
    with _use(conns, settings.global_db) as conn:
        try:
            row = conn.execute(
                "INSERT INTO study_progress(user_id, progress) VALUES (?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET progress = excluded.progress, "
                "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') RETURNING user_id, updated_at",
                (user_id, blob),
            ).fetchone()
        except sqlite3.IntegrityError:
            raise NotFound(f"unknown user {user_id!r}: create the user first") from None
    return {"user_id": row[0], "progress": progress, "updated_at": row[1]}


def get_progress(settings: Settings, user_id: str, conns: Connections | None = None) -> dict[str, Any]:
    with _use(conns, settings.global_db) as conn:
        row = conn.execute(
            "SELECT user_id, progress, updated_at FROM study_progress WHERE user_id = ?", (user_id,)
        ).fetchone()
    if row is None:
        raise NotFound(f"no progress for user {user_id!r}")
    return {"user_id": row[0], "progress": json.loads(row[1]), "updated_at": row[2]}


def list_progress(settings: Settings, conns: Connections | None = None) -> list[dict[str, Any]]:
    with _use(conns, settings.global_db) as conn:
        rows = conn.execute("SELECT user_id, progress, updated_at FROM study_progress ORDER BY user_id").fetchall()
    return [{"user_id": r[0], "progress": json.loads(r[1]), "updated_at": r[2]} for r in rows]


# --- health ---------------------------------------------------------------------------------


def health(settings: Settings, conns: Connections | None = None) -> dict[str, Any]:
    """Open every database and report whether it answers; ok only when all do."""
    dbs: dict[str, Any] = {}
    for ref in [layout.global_db(settings)] + [layout.property_db(settings, s) for s in layout.local_slugs(settings)]:
        try:
            with _use(conns, ref.path) as conn:
                version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_versions").fetchone()[0]
            dbs[ref.label] = {"ok": True, "schema_version": version}
        except Exception as exc:  # a health check reports, it does not raise
            dbs[ref.label] = {"ok": False, "error": str(exc).splitlines()[0]}
    return {"ok": all(d["ok"] for d in dbs.values()), "databases": dbs}
