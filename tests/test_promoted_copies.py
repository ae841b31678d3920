"""A standby's copies becoming the primary's: `restore -f` leaves each in rollback-journal mode with a
`-txid` file beside it; after a promotion they must end in WAL mode with no `-txid`, whoever gets there
first (litestream, the portal, or a restart of the promoted machine)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgehost.engine import layout
from edgehost.engine.sqlite import journal_mode
from edgehost.errors import BadInput
from edgehost.ops.follow import finish_promoted_copies
from edgehost.portal import store


def _follower_copy(path: Path, txid: int = 7) -> None:
    """A database as `litestream restore -f` leaves it: rollback journal, its applied txid beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    Path(f"{path}-txid").write_text(f"{txid:016x}\n")


def test_a_restart_after_the_promotion_finishes_the_copies_litestream_had_not_opened(kit_home):
    settings = kit_home.settings()
    left = layout.property_db(settings, "acme").path
    opened = layout.property_db(settings, "beta").path
    _follower_copy(left)
    _follower_copy(opened)
    conn = sqlite3.connect(opened)
    conn.execute("PRAGMA journal_mode=WAL")  # litestream got to this one
    conn.close()
    Path(f"{opened}-txid").unlink()

    assert finish_promoted_copies(settings) == 1
    assert journal_mode(left) == "wal" and not Path(f"{left}-txid").exists()
    assert journal_mode(opened) == "wal"
    assert sqlite3.connect(left).execute("SELECT x FROM t").fetchall() == [(1,)]
    assert finish_promoted_copies(settings) == 0


def test_the_promoted_portal_takes_writes_on_a_copy_still_in_rollback_mode(kit_home):
    settings = kit_home.settings()
    path = layout.property_db(settings, "acme").path
    _follower_copy(path)
    conns = store.Connections(readonly=False)
    with pytest.raises(BadInput, match="journal mode"):  # a primary's portal refuses a rollback database
        with conns.use(path):
            pass
    conns.promoted = True
    with conns.use(path) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    conns.close()
    assert journal_mode(path) == "wal"
