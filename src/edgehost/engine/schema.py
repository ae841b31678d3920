"""The app's databases created and migrated from the folders its contract names (settings.app).

A new database is built under a temporary name and moved into place in one rename, so a crash never
leaves a half-migrated file where the portal or Litestream would pick it up. Whether a database may be
created at all (the replica may hold it) is ops/provision.py's question, asked before these run.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import closing
from pathlib import Path

from edgehost.engine import layout
from edgehost.engine.sqlite import connect, load_migrations, migrate, schema_version
from edgehost.errors import BadInput, EdgehostError
from edgehost.files import write_atomic
from edgehost.settings import Settings


class AlreadyExists(BadInput):
    """A database (a property) that exists already."""


def ensure_data_dir(settings: Settings) -> None:
    """Create the data dir if missing and make sure the kit can write to it."""
    d = settings.data_dir
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{d}: cannot create data dir: {exc.strerror}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise BadInput(f"{d}: data dir is not writable")


def _create_db(settings: Settings, final: Path, kind: str) -> None:
    """Build a migrated DB under a temporary name, then move it into place in one rename."""
    tmp = settings.data_dir / f".new-{secrets.token_hex(6)}.db"
    try:
        with closing(connect(tmp, create=True)) as conn:
            migrate(conn, load_migrations(settings.app.migrations(kind)), final)
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        os.rename(tmp, final)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def ensure_global(settings: Settings) -> Path:
    """Create the global DB if missing; bring an existing one to the latest schema."""
    ensure_data_dir(settings)
    path = settings.global_db
    if not path.exists():
        _create_db(settings, path, "global")
    else:
        with closing(connect(path)) as conn:
            migrate(conn, load_migrations(settings.app.migrations("global")), path)
    return path


def create_property(settings: Settings, slug: str) -> Path:
    """Create a property's directory and migrated DB; refuse one that exists."""
    ref = layout.property_db(settings, slug)
    ensure_data_dir(settings)
    if ref.path.exists():
        raise AlreadyExists(f"property {slug!r} already exists at {ref.path}")
    ref.path.parent.mkdir(exist_ok=True)
    _create_db(settings, ref.path, "property")
    return ref.path


def _version_read_only(path) -> int:
    """The newest migration applied to a database, read without opening it for writing (0: unknown)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return conn.execute("SELECT max(version) FROM schema_versions").fetchone()[0] or 0
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def _identity(path: Path) -> list[int] | None:
    """What changes when a database file is written or replaced: inode, size, mtime (ns)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _latest(settings: Settings) -> tuple[dict[str, list], dict[str, int]]:
    folders = {kind: load_migrations(settings.app.migrations(kind)) for kind in ("global", "property")}  # read once
    return folders, {kind: max((m.version for m in migs), default=0) for kind, migs in folders.items()}


def migrate_all(settings: Settings) -> list[tuple[str, list[str]]]:
    """Bring every database on disk to the latest schema; returns (label, applied) pairs.

    A database already current costs one read-only query, or nothing when the file is the one the
    last run found current (same inode, size and mtime, in state/schema-stamps.json; a write or a
    restore that replaces the file changes them): a thousand tenants start in a fraction of a second.
    """
    done = []
    folders, latest = _latest(settings)
    stamps_path = settings.state_dir / "schema-stamps.json"
    try:
        stamps = json.loads(stamps_path.read_text())
    except (OSError, ValueError):
        stamps = {}
    if not isinstance(stamps, dict):
        stamps = {}
    current: dict[str, list] = {}
    for ref in layout.local_databases(settings):
        kind = "global" if ref.is_global else "property"
        key, ident = str(ref.path), _identity(ref.path)
        stamp = stamps.get(key)
        if ident is not None and isinstance(stamp, list) and stamp[:3] == ident and stamp[3:] and stamp[3] >= latest[kind]:
            current[key] = stamp
            done.append((ref.label, []))
            continue
        if _version_read_only(ref.path) < latest[kind]:
            with closing(connect(ref.path)) as conn:
                report = migrate(conn, folders[kind], ref.path)
            done.append((ref.label, report.applied))
        else:
            done.append((ref.label, []))
        ident = _identity(ref.path)
        if ident is not None:
            current[key] = [*ident, latest[kind]]
    try:
        write_atomic(stamps_path, json.dumps(current))
    except OSError:
        pass  # only a cache: the next start reads each database again
    return done


class SchemaGate:
    """Brings each database to the latest schema the first time a process opens it (the portal's
    connections): the check is one query on a connection it opens anyway, so a portal over a
    thousand tenants starts without a pass over every file, and one tenant's failed migration fails
    that tenant's requests (and /healthz), not the whole portal."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._known: tuple[dict[str, list], dict[str, int]] | None = None  # the folders, read on first use

    def __call__(self, conn, path: Path) -> None:
        if self._known is None:
            self._known = _latest(self.settings)
        folders, latest = self._known
        kind = "global" if Path(path) == self.settings.global_db else "property"
        if schema_version(conn) < latest[kind]:
            try:
                migrate(conn, folders[kind], path)
            except BadInput as exc:  # the request was fine: this database is not
                raise MigrationFailed(str(exc)) from None


class MigrationFailed(EdgehostError):
    """A database the portal opened could not be brought to the latest schema (it stays as it was)."""
