import sqlite3

import pytest

from edgehost.errors import BadInput
from edgehost.settings import AppContract
from edgehost.engine.sqlite import Migration, connect, content_hash, load_migrations, migrate, schema_version


def test_connections_use_wal_and_the_kit_pragmas(tmp_path):
    conn = connect(tmp_path / "a.db", create=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


def test_a_rollback_journal_database_is_refused(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.execute("create table t(x)")
    raw.commit()
    raw.close()
    with pytest.raises(BadInput, match="'delete' journal mode, edgehost needs WAL"):
        connect(path)


def test_missing_database_is_refused_without_creating_it(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        connect(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_migrations_apply_in_order_once(tmp_path):
    conn = connect(tmp_path / "p.db", create=True)
    migs = load_migrations(AppContract().migrations("property"))
    first = migrate(conn, migs)
    assert first.applied and schema_version(conn) == migs[-1].version
    again = migrate(conn, migs)
    assert again.applied == [] and again.after == first.after


def test_a_failing_migration_leaves_the_previous_version_and_names_the_file(tmp_path):
    conn = connect(tmp_path / "p.db", create=True)
    good = Migration(1, "0001_good.sql", "CREATE TABLE a(x);")
    bad = Migration(2, "0002_bad.sql", "CREATE TABLE b(x); INSERT INTO nowhere VALUES (1);")
    with pytest.raises(BadInput, match="0002_bad.sql failed"):
        migrate(conn, [good, bad])
    assert schema_version(conn) == 1
    # the half of 0002 that ran was rolled back
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='b'").fetchone()[0] == 0


def test_content_hash_sees_any_change_and_ignores_row_storage_order(tmp_path):
    a = connect(tmp_path / "a.db", create=True)
    b = connect(tmp_path / "b.db", create=True)
    for conn, order in ((a, [1, 2, 3]), (b, [3, 1, 2])):
        conn.execute("CREATE TABLE t(k TEXT PRIMARY KEY, v)")
        for i in order:
            conn.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", i))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a).rows == {"t": 3}
    b.execute("UPDATE t SET v = '1' WHERE k = 'k1'")  # same text, other type
    assert content_hash(a).digest != content_hash(b).digest

