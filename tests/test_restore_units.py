"""restore.py pieces that need no replica."""

import pytest


def test_a_restore_onto_a_filesystem_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    import os as _os

    from edgehost.ops.restore import _place

    def no_links(*_a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_os, "link", no_links)
    src = tmp_path / "restored.tmp"
    src.write_bytes(b"restored")
    _place(src, tmp_path / "out.db")
    assert (tmp_path / "out.db").read_bytes() == b"restored"
    src.write_bytes(b"other")
    with pytest.raises(FileExistsError):
        _place(src, tmp_path / "out.db")
    assert (tmp_path / "out.db").read_bytes() == b"restored"


def _newest(listing) -> dict[str, int]:
    return {db: max(f.max_txid for f in files) for db, files in listing.dbs.items()}


def test_one_listing_reads_every_database_in_the_s3_layout(tmp_path):
    from edgehost.engine.bucket import Listing, parse_key

    listing = Listing("s3://b/x")
    for rel in ("acme/honestcam.db/0000/0000000000000003-0000000000000003.ltx",
                "acme/honestcam.db/0001/0000000000000001-0000000000000002.ltx",
                "acme/honestcam.db/0009/0000000000000001-0000000000000001.ltx",
                "honestcam-study.db/0000/000000000000000a-000000000000000b.ltx",
                "_edgehost/doctor/probe", "beta/honestcam.db/0000/garbage.ltx"):
        parsed = parse_key(rel, "s3")
        if parsed is not None:
            listing.dbs.setdefault(parsed[0], []).append(parsed[1])
    assert _newest(listing) == {"acme/honestcam.db": 3, "honestcam-study.db": 11}
    assert {f.level for f in listing.files("acme/honestcam.db")} == {0, 1, 9}


def test_one_listing_reads_a_file_replicas_layout_too(tmp_path):
    from edgehost.engine.bucket import list_root
    from edgehost.engine.replica import ReplicaStore

    for rel in ("acme/honestcam.db/ltx/0/0000000000000005-0000000000000007.ltx",
                "acme/honestcam.db/ltx/1/0000000000000001-0000000000000004.ltx",
                "honestcam-study.db/ltx/0/0000000000000001-0000000000000002.ltx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert _newest(list_root(ReplicaStore(tmp_path.as_uri()))) == {"acme/honestcam.db": 7, "honestcam-study.db": 2}


def test_a_file_replica_walk_skips_a_file_removed_while_it_walks(tmp_path):
    """Litestream renames its `.tmp` files and compaction deletes old ones while a restore lists a file
    replica: a file gone between the directory listing and its stat is gone, not a crash (S3's
    listing would not have held it either). Forced: the second file goes after the first is walked."""
    from edgehost.engine.replica import ReplicaStore

    level = tmp_path / "acme" / "honestcam.db" / "ltx" / "9"
    level.mkdir(parents=True)
    names = ["0000000000000001-0000000000000001.ltx", "0000000000000001-0000000000000001.ltx.tmp",
             "0000000000000001-0000000000000002.ltx"]
    for name in names:
        (level / name).write_bytes(b"x")
    walk = ReplicaStore(tmp_path.as_uri()).walk()
    first = next(walk)
    for name in names:
        if not first.key.endswith(name):
            (level / name).unlink()
            break
    rest = list(walk)
    assert len(rest) == 1 and {first.key, rest[0].key} < {f"acme/honestcam.db/ltx/9/{n}" for n in names}


def test_the_walk_hands_over_each_database_as_soon_as_its_files_are_listed(tmp_path):
    """mirror and follow fetch a database's new files while the walk lists the next ones."""
    from edgehost.engine.bucket import Listing, list_root
    from edgehost.engine.replica import ReplicaStore

    for slug in ("acme", "beta", "gamma"):
        for rel in ("ltx/0/0000000000000005-0000000000000007.ltx", "ltx/1/0000000000000001-0000000000000004.ltx",
                    "ltx/9/0000000000000001-0000000000000004.ltx"):
            (tmp_path / slug / "honestcam.db" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / slug / "honestcam.db" / rel).write_bytes(b"x")
    listing = Listing(tmp_path.as_uri())
    handed = []
    walked = list_root(ReplicaStore(tmp_path.as_uri()), on_db=lambda db, files: handed.append(
        (db, [(f.level, f.max_txid) for f in files], listing.objects)), into=listing)
    assert walked is listing and listing.objects == 9
    assert sorted(db for db, _, _ in handed) == ["acme/honestcam.db", "beta/honestcam.db", "gamma/honestcam.db"]
    for _, files, _ in handed:
        assert files == [(0, 7), (1, 4), (9, 4)]  # whole and in plan order when handed over
    assert [seen for _, _, seen in handed][:2] == [3, 6]  # the first two before the walk had seen the rest
