"""SQLite connections the way Litestream needs them, the migrations runner, and a content hash."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path

from edgehost.errors import BadInput, EdgehostError, EnvironmentProblem

BUSY_TIMEOUT_MS = 5000
MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _pragmas(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Litestream owns checkpoints: the app never runs one on its own.
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def connect(path: Path, *, create: bool = False, readonly: bool = False, any_journal: bool = False,
            to_wal: bool = False) -> sqlite3.Connection:
    """Open a database in WAL mode with the kit's pragmas.

    ``create`` makes a new file (and turns on WAL); otherwise the file must exist and already be
    in WAL mode, since Litestream streams the WAL and a rollback-journal DB would not replicate.
    ``any_journal`` (read-only use of a standby's copy, which `litestream restore -f` keeps in
    rollback mode) skips that check. ``to_wal`` (a promoted standby's copy, taking writes now) turns
    a rollback-journal database into WAL mode, as ``create`` does a new one.
    """
    path = Path(path)
    if not create and not path.is_file():
        raise BadInput(f"{path}: database not found")
    if create:
        if not path.parent.is_dir():
            raise BadInput(f"{path.parent}: directory does not exist")
        uri = f"{path.resolve().as_uri()}?mode=rwc"
    else:
        uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rw'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        raise EnvironmentProblem(f"{path}: cannot open database: {exc}") from None
    try:
        _pragmas(conn)
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal" and not any_journal:
            if (create or to_wal) and not readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise BadInput(
                    f"{path}: database is in '{mode}' journal mode, edgehost needs WAL; "
                    f"stop its writers and run: sqlite3 {path} 'PRAGMA journal_mode=WAL'"
                )
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise BadInput(f"{path}: not a usable SQLite database: {exc}") from None
    except EdgehostError:
        conn.close()
        raise
    return conn


def integrity(conn: sqlite3.Connection) -> str:
    """"ok", or the first problems PRAGMA integrity_check finds (the one check restore, verify and drill run)."""
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:3])


def journal_mode(path: Path) -> str:
    """The journal mode recorded in a database file, without changing it.

    A WAL database says so in its header (bytes 18-19, the file format versions, are 2): read those
    100 bytes instead of opening it, which matters with a thousand databases at every start.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        if len(header) == 100 and header.startswith(b"SQLite format 3\x00") and header[18] == header[19] == 2:
            return "wal"
    except OSError:
        pass
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


# --- migrations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass
class MigrationReport:
    path: Path
    before: int
    after: int
    applied: list[str] = field(default_factory=list)


def load_migrations(folder: Path) -> list[Migration]:
    """The numbered SQL files (0001_name.sql, ...) in a folder, in order."""
    if not Path(folder).is_dir():
        raise BadInput(f"{folder}: migrations folder not found (app.migrations_dir)")
    found: list[Migration] = []
    for entry in Path(folder).iterdir():
        m = MIGRATION_RE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise EdgehostError(f"{folder}: two migrations share a version number")
    return found


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_versions'"
    ).fetchone()
    if row is None:
        return 0
    return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_versions").fetchone()[0]


def migrate(conn: sqlite3.Connection, migrations: list[Migration], path: Path | None = None) -> MigrationReport:
    """Apply pending migrations, each in its own transaction; running it twice does nothing."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
    )
    before = schema_version(conn)
    report = MigrationReport(Path(path or ""), before, before)
    for mig in migrations:
        if mig.version <= report.after:
            continue
        # executescript commits any open transaction first, so the BEGIN lives inside the script;
        # on error the transaction stays open and is rolled back, leaving the previous version.
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{mig.sql}\n;\n"
            f"INSERT INTO schema_versions(version, name) VALUES ({mig.version}, '{mig.name}');\n"
            "COMMIT;"
        )
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            where = f"{path}: " if path else ""
            raise BadInput(f"{where}migration {mig.name} failed: {exc}; database left at version {report.after}") from None
        report.after = mig.version
        report.applied.append(mig.name)
    return report


# --- content hash ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentHash:
    """A deterministic digest of schema and rows, in the spirit of SQLite's dbhash."""

    digest: str
    rows: dict[str, int]


def _encode(value: object) -> bytes:
    # Type-tagged so that 1, 1.0, '1' and b'1' never collide.
    if value is None:
        return b"N"
    if isinstance(value, int):
        return b"I" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"F" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        return b"T" + struct.pack(">I", len(data)) + data
    data = bytes(value)  # blob
    return b"B" + struct.pack(">I", len(data)) + data


def user_tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def schema_sql(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT type, name, COALESCE(sql, '') FROM sqlite_master "
            "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
        )
    ]


def _order_by(conn: sqlite3.Connection, table: str) -> str:
    """Primary-key order; rowid for tables without a declared key."""
    pk = [r[1] for r in sorted(conn.execute(f'PRAGMA table_info("{table}")'), key=lambda r: r[5]) if r[5]]
    return ", ".join(f'"{c}"' for c in pk) if pk else "rowid"


def content_hash(conn: sqlite3.Connection, exclude: frozenset[str] = frozenset()) -> ContentHash:
    """Hash the schema and every row of every table, in primary-key order, with typed values.

    Run it inside one read transaction so the result describes a single snapshot.
    """
    h = hashlib.sha256()
    for entry in schema_sql(conn):
        if entry[1] in exclude:
            continue
        h.update(_encode("\x1f".join(entry)))
    rows: dict[str, int] = {}
    for table in user_tables(conn):
        if table in exclude:
            continue
        h.update(_encode(f"table:{table}"))
        count = 0
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY {_order_by(conn, table)}'):
            for value in row:
                h.update(_encode(value))
            h.update(b"\n")
            count += 1
        rows[table] = count
    return ContentHash(h.hexdigest(), rows)
