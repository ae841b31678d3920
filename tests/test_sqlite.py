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



def test_a_replaced_or_behind_database_is_migrated_even_when_the_last_start_found_it_current(kit_home, tmp_path):
    """migrate_all skips a database whose file is the one the last run found current: a file
    swapped in (a restore, a copy) or a new migration must still be applied."""
    import os
    import shutil
    import sqlite3

    from edgehost.engine import layout
    from edgehost.engine.schema import create_property, ensure_global, migrate_all
    from edgehost.engine.sqlite import schema_version

    settings = kit_home.settings()
    ensure_global(settings)
    for slug in ("a1", "b2"):
        create_property(settings, slug)
    assert all(applied == [] for _, applied in migrate_all(settings))  # current, and now stamped
    a1 = layout.property_db(settings, "a1").path
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    os.replace(old, a1)  # an empty database moved into place: a new inode
    applied = dict(migrate_all(settings))
    assert applied["a1"] and applied["b2"] == []
    # A new migration: every database gets it, stamps or not.
    folder = tmp_path / "migrations"
    shutil.copytree(settings.app.migrations_dir, folder)
    (folder / "property" / "0099_extra.sql").write_text("CREATE TABLE extra(x);")
    settings = settings.with_changes(app__migrations_dir=folder)
    assert dict(migrate_all(settings))["b2"] == ["0099_extra.sql"]
    with sqlite3.connect(layout.property_db(settings, "b2").path) as conn:
        assert schema_version(conn) == 99
