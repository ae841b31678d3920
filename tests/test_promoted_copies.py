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
from edgehost.ops.follow import set_role
from edgehost.portal import store
from edgehost.supervisor.run import preflight


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


def test_a_restart_after_the_promotion_finishes_the_copies_left_as_restore_f_left_them(kit_home):
    """`up` on a promoted machine (state/role: primary) stopped before every copy was made the primary's:
    its preflight finishes them instead of refusing a rollback-journal database."""
    settings = kit_home.settings()
    left = layout.property_db(settings, "acme").path
    opened = layout.property_db(settings, "beta").path
    no_txid = layout.property_db(settings, "gamma").path
    for path in (left, opened, no_txid):
        _follower_copy(path)
    conn = sqlite3.connect(opened)
    conn.execute("PRAGMA journal_mode=WAL")  # litestream got to this one
    conn.close()
    Path(f"{opened}-txid").unlink()
    Path(f"{no_txid}-txid").unlink()  # rollback mode, its -txid gone: still not the primary's

    with pytest.raises(BadInput, match="journal mode"):
        preflight(settings)  # a machine that was never promoted refuses, as before
    set_role(settings, "primary")
    preflight(settings)
    for path in (left, opened, no_txid):
        assert journal_mode(path) == "wal" and not Path(f"{path}-txid").exists(), path
    assert sqlite3.connect(left).execute("SELECT x FROM t").fetchall() == [(1,)]
    preflight(settings)  # nothing left to finish: a second start passes as well


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
